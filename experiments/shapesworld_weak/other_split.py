"""The main table and the claims on another split: every sweep run's last merged model evaluated on
`--split` (default `fresh`: a world seed range no model, study or tuning had used), beside the base
model on that split.

    python experiments/shapesworld_weak/other_split.py multirun/shapesworld_weak --out experiments/shapesworld_weak

Each evaluation is its own run directory under `<sweep>_<split>/` (`csr stage=eval iteration=0` with
`model.path` the run's last `merged/` and the run's own overrides, so the same reward scores the
answers); one that finished is not run again. `--set KEY=VALUE` (repeatable) changes every
evaluation, the base's too, e.g. `--set eval.temperature=1.0 --tag sampled` for sampled answers.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shapesworld_csr"))
from aggregate import base_row, load_runs, table  # noqa: E402
from claims import by_seed, claims  # noqa: E402

# Overrides of a sweep run that say where and what it ran, not which model and reward: replaced here.
NOT_CARRIED = ("stage", "iteration", "run_dir", "eval.", "hydra", "logger.", "report.", "data.")


def evaluate(run_dir: Path, overrides: list[str], split: str, changes: list[str]) -> None:
    if (run_dir / "iter_0" / "eval.done.json").exists():
        return
    subprocess.run(["csr", "stage=eval", "iteration=0", f"run_dir={run_dir}", f"eval.shapesworld.split={split}",
                    "logger.tracking_uri=null", "report.inspect=false", *overrides, *changes], check=True)


def carried(run: Path) -> list[str]:
    overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
    return [o for o in overrides if not o.lstrip("+~").startswith(NOT_CARRIED)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--split", default="fresh")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an override of every evaluation (repeatable)")
    parser.add_argument("--tag", default="", help="names the evaluations and outputs made with --set")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()
    name = f"{args.split}_{args.tag}" if args.tag else args.split
    evals = args.sweep.with_name(f"{args.sweep.name}_{name}")
    evaluate(evals / "base", [], args.split, args.set)
    base = base_row(evals / "base")
    runs = load_runs(args.sweep, None)
    for run in runs:
        last = max(row["iteration"] for row in run["rows"])
        here = evals / run["dir"].name
        evaluate(here, [*carried(run["dir"]), f"model.path={run['dir'] / f'iter_{last}' / 'merged'}"], args.split,
                 args.set)
        run["rows"] = [base, {**base_row(here), "iteration": last}]
    text, _ = table(runs)
    text += "\n" + by_seed(runs, last)
    (args.out / f"results_{name}.md").write_text(text)
    # the claims compare lambdas: only for a lambda sweep
    verdicts = claims(runs, last) if {0.0, 0.9, 1.0} <= {run["lam"] for run in runs} else ""
    if verdicts:
        (args.out / f"claims_{name}.md").write_text(verdicts)
    print(text + "\n" + verdicts)


if __name__ == "__main__":
    main()
