"""Disk full and a read-only output directory: a clear error, earlier results intact, then resume.

The small disk is a real tmpfs mounted in a private mount namespace (`unshare`), so nothing on
the host is touched; inside it the run directory of a finished first iteration is copied onto a
file system too small (or read-only) for the second.
"""

from __future__ import annotations

import hashlib
import shlex
import shutil
import subprocess
from pathlib import Path

import fault_harness
import pytest

pytestmark = pytest.mark.slow


def _namespace_prefix() -> list[str]:
    for prefix in (["unshare", "-Urm"], ["unshare", "-m"]):
        if shutil.which(prefix[0]) and subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
            return prefix
    pytest.fail("this test needs `unshare` (mount namespaces) to mount a small tmpfs without touching the host")


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not fault_harness.is_volatile(p)}


@pytest.fixture(scope="module")
def first_iteration(tmp_path_factory):
    """A run directory whose iteration 1 is finished (iterations=1 of the fault-matrix settings)."""
    out = tmp_path_factory.mktemp("write_failures")
    env, _ = fault_harness.setup(out, reference=False)
    run = out / "iter1_run"
    command = fault_harness.csr_command(run, None)
    subprocess.run([*command, "iterations=1"], env=env, check=True, capture_output=True)
    return env, run


def _run_on_small_fs(tmp_path: Path, env: dict, run: Path, mount_options: str, remount_ro: bool) -> tuple[int, str]:
    """Copy `run` onto a fresh tmpfs, run iteration 2 there, copy the result to tmp_path/after."""
    mnt, log = tmp_path / "mnt", tmp_path / "csr.log"
    mnt.mkdir()
    inside = mnt / "run"
    csr = shlex.join(fault_harness.csr_command(inside, None))
    script = "\n".join([
        "set -e",
        f"mount -t tmpfs -o {mount_options} tmpfs {mnt}",
        f"cp -a {run} {inside}",
        f"mount -o remount,ro {mnt}" if remount_ro else "true",
        "set +e",
        f"{csr} > {log} 2>&1",
        "rc=$?",
        f"cp -a {inside} {tmp_path / 'after'}",
        "exit $rc",
    ])
    proc = subprocess.run([*_namespace_prefix(), "sh", "-c", script], env=env, capture_output=True, text=True)
    return proc.returncode, log.read_text() + proc.stderr


def test_disk_full_is_a_clear_error_and_resumes(first_iteration, tmp_path):
    env, run = first_iteration
    before = _digests(run)
    # What the copy takes on tmpfs: whole pages per file (st_blocks), not the sum of the file sizes.
    used_kib = sum(p.stat().st_blocks * 512 for p in run.rglob("*") if p.is_file() or p.is_dir()) // 1024
    # Room for iteration 2's search, reward, pairs and adapter (~320 KiB in iteration 1, with MLflow's and
    # the log's growth), but not for its merged model (~650 KiB).
    rc, out = _run_on_small_fs(tmp_path, env, run, f"size={used_kib + 480}k", remount_ro=False)
    assert rc == 2, out
    assert "No space left on device" in out and "iter_2/merged.tmp" in out and "rerun the same command" in out
    assert "Traceback" not in out
    after = tmp_path / "after"
    assert {k: v for k, v in _digests(after).items() if k in before} == before  # iteration 1 untouched
    assert (after / "iter_2" / "dpo.done.json").exists()  # what finished before the disk filled is kept
    assert not (after / "iter_2" / "merge.done.json").exists()
    # Space again (the copy on the host disk): the same command finishes the run.
    subprocess.run(fault_harness.csr_command(after, None), env=env, check=True, capture_output=True)
    assert (after / "iter_2" / "eval.done.json").exists() and not (after / "iter_2" / "merged.tmp").exists()


def test_read_only_run_dir_is_a_clear_error(first_iteration, tmp_path):
    env, run = first_iteration
    before = _digests(run)
    rc, out = _run_on_small_fs(tmp_path, env, run, "size=64m", remount_ro=True)
    assert rc == 2, out
    assert "Read-only file system" in out and "Traceback" not in out
    assert _digests(tmp_path / "after") == before


@pytest.mark.parametrize("size, tracking", [("8k", True), ("24k", False), ("100k", True)])
def test_a_full_disk_at_start_is_one_line(tmp_path, size, tracking):
    """A new run on a disk with no room (8k: not even for Hydra's .hydra/; 24k: for those, then not for
    the first stage, whose error the log file on that disk cannot take; 100k: not for MLflow's store)."""
    env, _ = fault_harness.setup(tmp_path, reference=False)
    mnt, log = tmp_path / "mnt", tmp_path / "csr.log"
    mnt.mkdir()
    csr = shlex.join([*fault_harness.csr_command(mnt / "run", None), f"logger.enabled={str(tracking).lower()}"])
    script = f"mount -t tmpfs -o size={size} tmpfs {mnt} && {{ {csr} > {log} 2>&1; }}"
    proc = subprocess.run([*_namespace_prefix(), "sh", "-c", script], env=env, capture_output=True, text=True)
    out = log.read_text() + proc.stderr
    assert proc.returncode == 2, out
    assert "No space left on device" in out and "Traceback" not in out and "Logging error" not in out, out
    assert len([line for line in out.splitlines() if "error" in line.lower()]) == 1, out
