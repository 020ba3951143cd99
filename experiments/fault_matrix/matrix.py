"""The crash-resume fault matrix: kill `csr` at many points, rerun it, compare with a clean run.

    python experiments/fault_matrix/matrix.py [--out DIR] [--random N] [--seed S] [--signals-only]
    python experiments/fault_matrix/matrix.py --tiny --out /tmp/fault_matrix   # checks it runs: one fault

One uninterrupted reference run (tiny models, 2 iterations, deterministic) is made first. Then
for each fault a fresh run is started under `inject.py`, which SIGKILLs it at the planted point;
the same `csr` command is rerun to completion, and its run directory is compared with the
reference's: every JSONL / JSON output byte for byte (stage markers and metrics without their
timings), every safetensors file tensor for tensor, and the ids of every JSONL file for lost or
duplicated records. Faults: each stage boundary (before / after the `.done` marker), points
inside each stage (a record append, a torn half-record, a whole-file write cut before its rename,
a DPO step, a model directory swap), between iterations, kills at a random point of a random
stage, and SIGTERM / SIGINT at some of these points (the run must stop with exit status 143 / 130,
one line saying how to resume, and no MLflow run left RUNNING).
Writes DIR/matrix.json and DIR/matrix.md. `--tiny` builds every fault list but runs only one fault
(a SIGKILL between the iterations): the reference run and one faulted run plus its rerun.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import asdict
from pathlib import Path

# The harness is the tests' (one home: tests/fault_harness.py); the matrix is a longer run of it.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from fault_harness import STAGES, Outcome, run_matrix, setup  # noqa: E402


def boundary_faults() -> list[tuple[str, str]]:
    """Every stage boundary of iteration 1, the ones a resume must get right by construction."""
    faults = []
    for stage in STAGES:
        faults += [(stage, f"before_done:iter_1/{stage}:1"), (stage, f"after_done:iter_1/{stage}:1")]
    faults += [("between iterations", "iteration:iter_1:1"), ("eval", "before_done:iter_0/eval:1")]
    return faults


# Stages that append records through JsonlWriter, and the file (under iter_k/) they append to.
APPENDING = {"search": "search.jsonl", "reward": "rewards.jsonl", "eval": "eval/generate/answers.jsonl"}


def inside_faults(reference: Path, rng: random.Random) -> list[tuple[str, str]]:
    """Points inside each stage, the iteration, record and step chosen at random from the reference."""
    faults = []
    for stage, file in APPENDING.items():
        k = rng.choice((1, 2))
        n = len((reference / f"iter_{k}" / file).read_text().splitlines())
        faults += [(stage, f"record:iter_{k}/{file}.part0:{rng.randint(2, n)}"),
                   (stage, f"torn:iter_{k}/{file}.part0:{rng.randint(1, n)}"),
                   (stage, f"replace:iter_{k}/{file}:1")]  # the merge of the part files into place
    steps = json.loads((reference / "iter_1" / "dpo.done.json").read_text())["stats"]["steps"]
    faults += [
        ("pairs", "replace:iter_2/pairs.jsonl:1"),
        ("pairs", "replace:iter_1/pairs_trl.jsonl:1"),
        ("dpo", "replace:iter_1/ref_logps.json:1"),
        ("dpo", f"dpo_step:iter_1:{rng.randint(2, steps)}"),
        ("dpo", f"dpo_step:iter_2:{rng.randint(2, steps)}"),
        ("dpo", "save_dir:iter_2/adapter:1"),
        ("merge", "save_dir:iter_1/merged:1"),
        ("merge", "replace:iter_2/merged:1"),
        ("between iterations", "iteration:iter_2:1"),
    ]
    return faults


def signal_faults() -> list[tuple[str, str]]:
    """SIGTERM and SIGINT inside the batch loops (search, reward, eval, DPO: the stop waits for the
    batch's end) and outside them (a model swap, a stage marker, between iterations: it stops there)."""
    return [
        ("search", "SIGTERM@record:iter_1/search.jsonl.part0:3"),
        ("search", "SIGINT@record:iter_2/search.jsonl.part0:5"),
        ("reward", "SIGTERM@record:iter_1/rewards.jsonl.part0:2"),
        ("eval", "SIGINT@record:iter_0/eval/generate/answers.jsonl.part0:1"),
        ("dpo", "SIGTERM@dpo_step:iter_1:2"),
        ("dpo", "SIGINT@dpo_step:iter_2:3"),
        ("pairs", "SIGINT@before_done:iter_1/pairs:1"),
        ("merge", "SIGTERM@save_dir:iter_1/merged:1"),
        ("between iterations", "SIGTERM@iteration:iter_1:1"),
    ]


def to_markdown(outcomes: list[Outcome]) -> str:
    lines = ["| stage | fault | killed | resumed | identical output | records lost | records duplicated |",
             "|---|---|---|---|---|---|---|"]
    for o in outcomes:
        killed = ("yes" if o.killed else f"NO: exit {o.exit_code} {'; '.join(o.stop_problems)}") + (
            f" (exit {o.exit_code})" if o.killed and o.exit_code > 0 else "")
        lines.append(f"| {o.stage} | `{o.fault}` | {killed} | {'yes' if o.resumed else 'NO'} | "
                     f"{'yes' if o.identical else 'NO: ' + '; '.join(o.differences[:3])} | {o.lost} | {o.duplicated} |")
    ok = sum(o.killed and o.resumed and o.identical and not o.lost and not o.duplicated for o in outcomes)
    lines.append(f"\n{ok} of {len(outcomes)} kills and signals resumed to output identical to the uninterrupted run.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="multirun/fault_matrix")
    parser.add_argument("--random", type=int, default=6, help="kills at a random point of a random stage")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--signals-only", action="store_true", help="only the SIGTERM / SIGINT faults")
    parser.add_argument("--tiny", action="store_true", help="one fault only (checks that the matrix runs)")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env, reference = setup(out)
    rng = random.Random(args.seed)
    faults = boundary_faults() + inside_faults(reference, rng) + signal_faults()
    faults += [("random", f"time:iter_{rng.choice((1, 2))}/{rng.choice(STAGES)}:{rng.random():.2f}")
               for _ in range(args.random)]
    if args.signals_only:
        faults = signal_faults()
    if args.tiny:
        faults = [("between iterations", "iteration:iter_2:1")]
    outcomes = run_matrix(out, faults, env, reference)
    (out / "matrix.json").write_text(json.dumps([asdict(o) for o in outcomes], indent=2) + "\n")
    (out / "matrix.md").write_text(to_markdown(outcomes))
    print(to_markdown(outcomes))


if __name__ == "__main__":
    main()
