"""Every command's --help prints its usage and exits 0 (csr-plan's help once ended in argparse's
traceback: a '%' in a help string). The commands' bad arguments are rows of docs/troubleshooting.md
(tests/bad_input_commands.py)."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

SCRIPTS = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("name", sorted(n for n in SCRIPTS if n != "csr"))  # csr's --help is Hydra's
def test_help_prints_usage_and_exits_0(name, capsys):
    module, function = SCRIPTS[name].split(":")
    with pytest.raises(SystemExit) as exit_:
        getattr(importlib.import_module(module), function)(["--help"])
    assert exit_.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_csr_inspect_on_a_read_only_run_directory_is_one_line(tmp_path):
    """The run directory mounted read-only (a private mount namespace: nothing on the host changes)."""
    from compose_config import compose_config

    from csr.config.schema import validate
    from csr.loop import Loop

    if not shutil.which("unshare") or subprocess.run(["unshare", "-Urm", "true"], capture_output=True).returncode:
        pytest.skip("needs `unshare` (mount namespaces) to mount the run read-only")
    run = tmp_path / "run"
    with Loop(validate(compose_config(f"run_dir={run}"))).open_run_dir():
        pass
    (run / "iter_0").mkdir()
    inspect = shutil.which("csr-inspect", path=str(Path(sys.executable).parent))
    script = f"mount --bind {run} {run} && mount -o remount,bind,ro {run} && {inspect} {run}"
    proc = subprocess.run(["unshare", "-Urm", "sh", "-c", script], capture_output=True, text=True)
    assert proc.returncode != 0
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("csr-inspect: cannot write the site into <run_dir>/inspect: Read-only file system (")
    assert line.endswith("nothing was written: pass a writable --out")  # no earlier site to keep
    assert sorted(p.name for p in run.iterdir()) == [".lock", "config.yaml", "iter_0", "run_info.json"]
