"""`csr-compare`: runs side by side, from run directories, a sweep directory or the MLflow store.

    csr-compare multirun/2026-11-26/10-00-00                       # a sweep directory (or run dirs)
    csr-compare --tracking-uri sqlite:///$PWD/mlflow.db --experiment csr
    csr-compare --tracking-uri sqlite:///$PWD/mlflow.db --runs <run id> <run id>

Prints one row per run and iteration (the swept config keys, then the metrics), writes it as
comparison.csv / comparison.md, and the plots of csr.commands.compare_plots, into --out. MLflow is read
through its client straight from the store: no server needed.
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import sys
from pathlib import Path

from csr.commands.compare_runs import Run, runs_from_dirs, runs_from_mlflow
from csr.core.errors import CSRError
from csr.core.io import atomic_write_text

# Metrics shown unless --metrics says otherwise; every eval/* metric a run has is added.
DEFAULT_METRICS = ["pairs/pairs", "pairs/margin", "pairs/chosen/score", "pairs/rejected/score",
                   "pairs/chosen/r_i", "pairs/rejected/r_i", "dpo/loss", "dpo/rewards/accuracies"]
# Counts and bookkeeping that an evaluator also records (how many answers or images, skips, seconds,
# its settings and hashes): not results; shown only when --metrics names them.
COUNTERS = re.compile(r"(^|/)(settings/.*|n_[^/]*|answers|questions|skipped(/.*)?|seconds|[^/]*_sha256)$")
# Config keys that differ between any two runs without being an experimental choice.
NOT_SWEPT = re.compile(r"^(run_dir|logger\..*|run\..*|iteration|stage)$")


# -- the table --------------------------------------------------------------------------------------


def swept_keys(runs: list[Run]) -> list[str]:
    keys = sorted({k for r in runs for k in r.params if not NOT_SWEPT.match(k)})
    return [k for k in keys if len({r.params.get(k) for r in runs}) > 1]


def metric_columns(runs: list[Run], wanted: list[str] | None) -> list[str]:
    if wanted:
        return wanted
    present = {k for r in runs for m in r.metrics.values() for k in m}
    evals = sorted(k for k in present if k.startswith("eval/") and not COUNTERS.search(k))
    return [k for k in DEFAULT_METRICS if k in present] + evals


def table(runs: list[Run], swept: list[str], metrics: list[str]) -> list[dict]:
    rows = []
    for run in runs:
        for k in sorted(run.metrics):
            row = {"run": run.name, **{key: run.params.get(key) for key in swept}, "iteration": k}
            row.update({m: run.metrics[k].get(m) for m in metrics})
            rows.append(row)
    return rows


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def to_markdown(rows: list[dict]) -> str:
    if not rows:
        return "(no runs)\n"
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(row[h]) for h in header) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()


def compare(runs: list[Run], out_dir: Path, metrics: list[str] | None = None) -> list[dict]:
    from csr.commands.compare_plots import plot_metrics, plot_r_i_before_after, plot_score_gap

    if not runs:
        raise CSRError("nothing to compare: no runs found")
    swept = swept_keys(runs)
    columns = metric_columns(runs, metrics)
    rows = table(runs, swept, columns)
    try:  # read-only storage, a full disk, a file where the directory should be: one line, not a traceback
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "comparison.md", to_markdown(rows))
        atomic_write_text(out_dir / "comparison.csv", to_csv(rows))
        labels = {r.name: ", ".join(f"{k}={r.params.get(k)}" for k in swept) or r.name for r in runs}
        plot_metrics(runs, labels, [c for c in columns if c.startswith("eval/")], out_dir / "metric_vs_iteration.png")
        plot_score_gap(runs, labels, out_dir / "score_gap.png")
        plot_r_i_before_after(runs, labels, out_dir / "r_i_before_after.png")
    except OSError as err:
        raise CSRError(f"--out {out_dir}: cannot write {err.filename or out_dir}: {err.strerror or err}; "
                       "pass a writable --out") from None
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="csr-compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="*", type=Path, help="run directories or sweep directories")
    parser.add_argument("--tracking-uri", help="MLflow store, e.g. sqlite:///$PWD/mlflow.db")
    parser.add_argument("--experiment", help="MLflow experiment name (default csr)")
    parser.add_argument("--runs", nargs="+", default=[], help="MLflow run ids (parent or iteration runs)")
    parser.add_argument("--metrics", nargs="+", help="metric columns (default: pairs, DPO and every eval metric)")
    parser.add_argument("--out", type=Path, default=Path("compare"), help="output directory (default ./compare)")
    args = parser.parse_args(argv)
    try:
        if bool(args.dirs) == bool(args.tracking_uri):
            raise CSRError("give run/sweep directories, or --tracking-uri with --experiment or --runs")
        if args.tracking_uri:
            runs = runs_from_mlflow(args.tracking_uri, args.experiment, args.runs)
        else:
            runs = runs_from_dirs(args.dirs)
        rows = compare(runs, args.out, args.metrics)
    except CSRError as err:
        print(f"csr-compare: {err}", file=sys.stderr)
        sys.exit(2)
    print(to_markdown(rows), end="")
    print(f"wrote {args.out}/comparison.csv, comparison.md and the plots metric_vs_iteration.png, "
          "score_gap.png, r_i_before_after.png")
