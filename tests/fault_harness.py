"""The fault harness: run `csr` (tiny models) under a planted fault, rerun it, compare the run directory
with an uninterrupted reference run's.

Used by the tests (tests/test_fault_matrix.py, test_signals.py, test_write_failures.py) and by the full
matrix (experiments/fault_matrix/matrix.py), whose README says what is compared and why. The faults
are planted by fault_inject.py, from outside the package, so `csr` carries no test code.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from safetensors.torch import load_file

BIN = Path(sys.executable).parent
INJECT = Path(__file__).resolve().parent / "fault_inject.py"
STOP_SIGNALS = {"SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT}
SETTINGS = [  # the smoke experiment, two iterations, two prompts per search batch, deterministic DPO
    "experiment=smoke", "search.prompts_per_batch=2", "dpo.batch_size=2", "eval.batch_size=2", "iterations=2",
    "trainer.deterministic=true", "logger.tracking_uri=null",
]
# Written anew by every start (run_info: the commit and versions of this start; a start on other code
# adds run_info.<n>.json), or holding wall-clock times / MLflow run ids: not outputs to compare.
# cli.log: Hydra's log, now kept in run_dir by a stage run or run_dir=; it holds times and paths.
VOLATILE = {".lock", "mlflow.db", "mlflow.db.lock", "mlflow_runs.json", "cli.log", "summary.png", "summary.md", "summary.json"}

TIMING_KEYS = {"seconds", "finished_at"}
BINARY = {".png", ".jpg", ".bin", ".pt"}
JSONL_OUTPUTS = ("search.jsonl", "rewards.jsonl", "pairs.jsonl", "answers.jsonl")
STAGES = ("search", "reward", "pairs", "dpo", "merge", "eval")


def is_volatile(path: Path) -> bool:
    # inspect/: the report site the end of a run writes from the outputs (with summary.png), like summary.*;
    # .hydra/: what Hydra records of each start (its overrides), rewritten by every start into run_dir.
    return (path.name in VOLATILE or path.name.startswith("run_info.")
            or bool({"mlartifacts", "inspect", ".hydra"} & set(path.parts)))


@dataclass
class Outcome:
    stage: str
    fault: str
    killed: bool = False
    resumed: bool = False
    identical: bool = False
    lost: int = 0
    duplicated: int = 0
    exit_code: int = 0  # of the run the fault hit: -9 for SIGKILL, 143 / 130 for SIGTERM / SIGINT
    stop_problems: list[str] = field(default_factory=list)  # a signal's stop: message, MLflow status
    differences: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _strip_timings(value):
    if isinstance(value, dict):
        return {k: _strip_timings(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [_strip_timings(v) for v in value]
    return value


def _ids(path: Path) -> list[str]:
    return [str(json.loads(line)["id"]) for line in path.read_text().splitlines()]


def _stale_marker(root: Path, name: str, made_from: dict | None) -> str | None:
    """What the stage marker `name` (iter_<k>/<stage>.done.json) was made from that has changed since, if anything."""
    from csr.run.inputs import stale_input

    parts = Path(name).parts
    stage = parts[-1].removesuffix(".done.json")
    if len(parts) != 2 or not parts[0].startswith("iter_") or stage not in STAGES:
        return None
    return stale_input(root, int(parts[0].removeprefix("iter_")), stage, made_from)


def compare(reference: Path, run: Path) -> tuple[list[str], int, int]:
    """Differences between two run directories, and records lost / duplicated in the JSONL outputs."""
    def files(root: Path) -> set[str]:
        return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not is_volatile(p)}

    ref_files, run_files = files(reference), files(run)
    differences = [f"missing {f}" for f in sorted(ref_files - run_files)]
    differences += [f"extra {f}" for f in sorted(run_files - ref_files)]
    lost = duplicated = 0
    for name in sorted(ref_files & run_files):
        a, b = reference / name, run / name
        if name.endswith(".safetensors"):
            ta, tb = load_file(a), load_file(b)
            if ta.keys() != tb.keys() or any(not ta[k].equal(tb[k]) for k in ta):
                differences.append(f"tensors differ in {name}")
            continue
        if a.suffix in BINARY:
            if a.read_bytes() != b.read_bytes():
                differences.append(f"content differs in {name}")
            continue
        # Configs, adapter configs and stage stats name paths inside their own run directory.
        text_a, text_b = a.read_text().replace(str(reference), "RUN"), b.read_text().replace(str(run), "RUN")
        if name.endswith(".done.json") or Path(name).name == "metrics.json":
            parsed = [json.loads(t) for t in (text_a, text_b)]
            # A marker's made_from holds content identities, and an adapter's config names its own run
            # directory: checked within each run (every marker matches what it was made from), not across.
            for root, content in ((reference, parsed[0]), (run, parsed[1])):
                stale = _stale_marker(root, name, content.pop("made_from", None)) if isinstance(content, dict) else None
                if stale is not None:
                    differences.append(f"{root.name}/{name} was made from {stale} as it no longer is")
            text_a, text_b = (json.dumps(_strip_timings(c)) for c in parsed)
        if text_a != text_b:
            differences.append(f"content differs in {name}")
        if Path(name).name in JSONL_OUTPUTS:
            want, got = _ids(a), _ids(b)
            lost += len(set(want) - set(got))
            duplicated += len(got) - len(set(got))
    return differences, lost, duplicated


def csr_command(run_dir: Path, fault: str | None) -> list[str]:
    head = [sys.executable, str(INJECT), fault] if fault else [str(BIN / "csr")]
    return [*head, f"run_dir={run_dir}", *SETTINGS]


def kill_during(proc: subprocess.Popen, run_dir: Path, reference: Path, fault: str) -> None:
    """`time:iter_k/<stage>:<fraction>`: SIGKILL once that stage has run for `fraction` of the time
    it took in the reference run. Stage-relative, so the kill lands where asked however busy the
    machine is (a stage that finishes sooner lets it land in the next one)."""
    _, where, fraction = fault.split(":")
    iteration, stage = where.split("/")
    k = int(iteration.removeprefix("iter_"))
    before = STAGES[STAGES.index(stage) - 1] if stage != STAGES[0] else "eval"
    started = run_dir / f"iter_{k if stage != STAGES[0] else k - 1}" / f"{before}.done.json"
    took = json.loads((reference / where).with_suffix(".done.json").read_text())["stats"]["seconds"]
    while not started.exists() and proc.poll() is None:
        time.sleep(0.02)
    try:
        proc.wait(timeout=float(fraction) * took)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def expected_exit(fault: str) -> int:
    """SIGKILL (the default, and every `time:` kill): the process dies; SIGTERM / SIGINT: csr stops
    itself with 128 + the signal's number."""
    name = fault.rpartition("@")[0]
    return 128 + STOP_SIGNALS[name] if name in STOP_SIGNALS else -signal.SIGKILL


def mlflow_statuses(run_dir: Path) -> dict[str, str]:
    """Run id -> status in the run's own store (logger.tracking_uri=null), read without MLflow."""
    db = run_dir / "mlflow.db"
    if not db.exists():
        return {}
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        return dict(con.execute("SELECT run_uuid, status FROM runs").fetchall())


def stop_problems(run_dir: Path, log_text: str) -> list[str]:
    """What is wrong with how a signalled run stopped: the resume line, a traceback, MLflow statuses."""
    problems = []
    if f"rerun the same command with run_dir={run_dir}" not in log_text:
        problems.append("no resume line")
    if "Traceback" in log_text:
        problems.append("a traceback")
    statuses = mlflow_statuses(run_dir)
    if "RUNNING" in statuses.values():
        problems.append("an MLflow run left RUNNING")
    ids = run_dir / "mlflow_runs.json"
    parent = json.loads(ids.read_text())["parent"] if ids.exists() else None
    if parent is not None and statuses.get(parent) != "KILLED":
        problems.append(f"MLflow parent run {statuses.get(parent)}, not KILLED")
    return problems


def run_fault(reference: Path, run_dir: Path, stage: str, fault: str, env: dict, log_dir: Path) -> Outcome:
    """Start a run that dies at `fault` (a hook spec, or `time:iter_k/<stage>:<fraction>`), rerun it,
    compare."""
    outcome = Outcome(stage, fault)
    start = time.time()
    shutil.rmtree(run_dir, ignore_errors=True)
    log_path = log_dir / f"{run_dir.name}.log"
    with log_path.open("w") as log:
        if fault.startswith("time:"):
            proc = subprocess.Popen(csr_command(run_dir, None), env=env, stdout=log, stderr=log)
            kill_during(proc, run_dir, reference, fault)
            outcome.stage = f"random: {landed_in(run_dir)}"
        else:
            proc = subprocess.run(csr_command(run_dir, fault), env=env, stdout=log, stderr=log)
        outcome.exit_code = proc.returncode
        if expected_exit(fault) != -signal.SIGKILL:
            log.flush()
            outcome.stop_problems = stop_problems(run_dir, log_path.read_text())
        outcome.killed = proc.returncode == expected_exit(fault) and not outcome.stop_problems
        resumed = subprocess.run(csr_command(run_dir, None), env=env, stdout=log, stderr=log)
    outcome.resumed = resumed.returncode == 0
    if outcome.resumed:
        outcome.differences, outcome.lost, outcome.duplicated = compare(reference, run_dir)
        outcome.identical = not outcome.differences
    outcome.seconds = round(time.time() - start, 1)
    return outcome


def landed_in(run_dir: Path) -> str:
    """Where a wall-clock kill fell: the first stage without its marker."""
    for k in range(0, 3):
        for stage in ("eval",) if k == 0 else STAGES:
            if not (run_dir / f"iter_{k}" / f"{stage}.done.json").exists():
                return f"{stage} (iteration {k})"
    return "after the last stage"


def setup(out: Path, reference: bool = True) -> tuple[dict, Path]:
    """Tiny models and prompts, and (with `reference`) the uninterrupted reference run."""
    from csr.data.tiny import write_tiny_prompts
    from csr.models.tiny import build_tiny

    tiny = out / "tiny"
    if not (tiny / "llava").exists():
        build_tiny(str(tiny))
        write_tiny_prompts(tiny / "data", n=8)
    env = {**os.environ, "CSR_TINY_DIR": str(tiny), "HF_HUB_OFFLINE": "1"}
    run = out / "reference"
    if reference and not (run / "iter_2" / "metrics.json").exists():
        shutil.rmtree(run, ignore_errors=True)
        subprocess.run(csr_command(run, None), env=env, check=True, capture_output=True)
    return env, run


def run_matrix(out: Path, faults: list[tuple[str, str]], env: dict, reference: Path) -> list[Outcome]:
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    outcomes = []
    for i, (stage, fault) in enumerate(faults):
        outcome = run_fault(reference, out / "runs" / f"{i:02d}", stage, fault, env, logs)
        print(f"[{i + 1}/{len(faults)}] {stage:18s} {fault:45s} killed={outcome.killed} resumed={outcome.resumed} "
              f"identical={outcome.identical} lost={outcome.lost} dup={outcome.duplicated} ({outcome.seconds}s)",
              flush=True)
        outcomes.append(outcome)
        shutil.rmtree(out / "runs" / f"{i:02d}")  # keep the disk flat; the log stays
    return outcomes
