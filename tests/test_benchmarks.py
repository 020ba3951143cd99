"""Every benchmark under experiments/ runs in its `--tiny` mode (the csr-make-tiny model, a step or a
search of each kind it times): a benchmark that no longer runs against today's csr fails here, not on the
day someone wants its figures. The tiny runs check that the scripts work, not their figures, and write
only under a temporary directory, never over a study's committed results."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from csr.inspect.browser import chromium

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = ROOT / "experiments"
# Not benchmarks: the ShapesWorld studies (their scripts aggregate hours of runs: csr's own stages are what
# they run, and the suite runs those); gpu_check has its own test (a --cpu-dry-run).
NOT_BENCHMARKS = ("gpu_check", "shapesworld_csr", "shapesworld_default", "shapesworld_weak")
# Scripts another benchmark runs in its tiny mode.
RUN_BY = {"plan/stage_peak.py": "plan/run.py"}


def _benchmark(script: str, *extra: str, **kw) -> pytest.param:
    return pytest.param(script, list(extra), id=script, **kw)


BENCHMARKS = [
    _benchmark("bench_dpo/bench.py"),
    _benchmark("bench_dpo/memory.py"),
    _benchmark("bench_dpo/same_process.py"),
    _benchmark("bench_inspect/bench.py",
               marks=pytest.mark.skipif(chromium() is None, reason="chromium is not installed (.ci/run installs it)")),
    _benchmark("bench_io/bench.py"),
    _benchmark("bench_search/bench.py", "--threads", "1"),
    _benchmark("bench_search/batch_sweep.py"),
    _benchmark("bench_search/host_costs.py"),
    _benchmark("plan/run.py"),
    # Whole `csr` runs of the smoke experiment: a minute or more each.
    _benchmark("fault_matrix/soak.py", marks=pytest.mark.slow),
    _benchmark("fault_matrix/matrix.py", marks=pytest.mark.slow),
]


def _scripts() -> set[str]:
    """experiments/*/*.py that run as a program (modules they import, like workloads.py, do not)."""
    return {str(p.relative_to(EXPERIMENTS)) for p in EXPERIMENTS.glob("*/*.py")
            if p.parent.name not in NOT_BENCHMARKS and re.search(r'^if __name__ == "__main__":', p.read_text(), re.M)}


def _committed(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


def test_every_benchmark_script_has_a_tiny_run():
    listed = {p.values[0] for p in BENCHMARKS}
    assert _scripts() - listed - set(RUN_BY) == set(), "a benchmark script without a tiny run in BENCHMARKS"
    assert listed <= _scripts()


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory) -> Path:
    """Where the benchmarks build their models and data (CSR_BENCH_DIR), shared: the tiny model is built once."""
    return tmp_path_factory.mktemp("bench")


@pytest.mark.parametrize(("script", "extra"), BENCHMARKS)
def test_benchmark_runs_tiny(script, extra, bench_dir, tmp_path_factory):
    out = tmp_path_factory.getbasetemp() / "fault_matrix" if script == "fault_matrix/matrix.py" else \
        tmp_path_factory.mktemp("out")  # the matrix shares its reference run with tests/test_fault_matrix.py
    folder = (EXPERIMENTS / script).parent
    before = _committed(folder)
    env = {**os.environ, "CSR_BENCH_DIR": str(bench_dir), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1"}
    args = [sys.executable, str(EXPERIMENTS / script), "--tiny", *extra]
    if script != "bench_search/host_costs.py":  # it writes nothing, it prints
        args += ["--out", str(out)]
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{script} --tiny failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    assert _committed(folder) == before, f"{script} --tiny wrote over the study's committed files"
    check_outputs(script, out, done.stdout)


def check_outputs(script: str, out: Path, stdout: str) -> None:
    """What each tiny run must have produced: its results, with the figures it reports present and sane."""
    if script == "bench_dpo/bench.py":
        (row,) = json.loads((out / "results.json").read_text())["rows"]
        for trainer in ("csr_adapter_disabled", "trl", "csr_precomputed"):
            assert row[trainer]["step_s"] > 0 and row[trainer]["steps"] == 1
        assert row["ratio"] > 0 and (out / "step_time.png").stat().st_size > 0
    elif script == "bench_dpo/same_process.py":
        result = json.loads((out / "same_process.json").read_text())["tiny"]
        assert len(result["times"]["csr"]) == len(result["times"]["trl"]) == 2 and result["ratio"] > 0
    elif script == "bench_dpo/memory.py":
        rows = json.loads((out / "memory.json").read_text())["rows"]
        losses = [rows[v]["losses"] for v in ("before", "after", "after_checkpointing")]
        assert losses[0] == pytest.approx(losses[1], abs=1e-6) and losses[0] == pytest.approx(losses[2], abs=1e-6)
    elif script == "bench_inspect/bench.py":
        pages = json.loads(stdout[stdout.index("{"):])["pages"]
        assert len(pages) == 5 and all(p["painted_ms_max"] >= 0 for p in pages.values())
    elif script == "bench_io/bench.py":
        results = json.loads((out / "results.json").read_text())
        assert results["after"]["records"] == results["before"]["records"] == 8
    elif script == "bench_search/bench.py":
        results = json.loads((out / "results.json").read_text())
        (row,) = results["workloads"]
        assert row["nodes"] > 0 and row["generate_s"] > 0  # both engines agreed (asserted inside), the loop ran
        assert set(results["scaling"]) == {"beam_width", "candidates_per_step", "max_sentences", "prompts"}
    elif script == "bench_search/batch_sweep.py":
        points = json.loads((out / "batch_sweep.json").read_text())["points"]
        assert len(points) == 2 and all(p["tok_s"] > 0 for p in points)
    elif script == "bench_search/host_costs.py":
        result = json.loads(stdout.strip().splitlines()[-1])
        assert result["attention_small_12_runs"]["ops"] > 0 and result["decode_step"]["ms_per_step"] > 0
    elif script == "plan/run.py":
        rows = json.loads((out / "results.json").read_text())
        assert [r["stage"] for r in rows] == ["search", "reference", "dpo", "eval"]
        assert all(r["measured"] > 0 and r["plan"] > 0 for r in rows)
    elif script == "fault_matrix/soak.py":
        rows = json.loads((out / "soak.json").read_text())
        assert rows[-1]["iteration"] == 1 and rows[-1]["iteration_outputs_mib"] > 0
    elif script == "fault_matrix/matrix.py":
        (outcome,) = json.loads((out / "matrix.json").read_text())
        assert outcome["killed"] and outcome["resumed"] and outcome["identical"], outcome
    else:
        raise AssertionError(f"no output check for {script}")
