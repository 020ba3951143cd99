"""Aggregate a ShapesWorld lambda x seed sweep: results table (mean +- 95% CI) and plots.

    python experiments/shapesworld_csr/aggregate.py multirun/shapesworld_csr --base multirun/shapesworld_csr/base

The sweep runs with eval.at_base=false: the base model's greedy evaluation is the same for every
lambda and seed, so it is computed once (`--base`, a run of `csr stage=eval iteration=0`).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402

METRICS = ["CHAIR_S", "CHAIR_I", "recall", "POPE F1", "partner halluc.", "answer R_I", "well-formed", "binding errors",
           "gap", "pairs"]
# two-sided 95% t quantiles by degrees of freedom (n - 1)
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def mean_ci(values: list[float]) -> tuple[float, float]:
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, float("nan")
    return m, T95.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))


def base_row(base: Path | None) -> dict | None:
    """Iteration 0 from a base-only run, in the summary's column names."""
    if base is None:
        return None
    from csr.eval.registry import summary_columns
    from csr.run.report import table_rows
    from csr.worlds import evaluators

    metrics = json.loads((base / "iter_0" / "metrics.json").read_text())
    return table_rows({0: metrics}, summary_columns(evaluators(), ["shapesworld", "generate"]))[0]


def load_runs(sweep: Path, base: Path | None) -> list[dict]:
    runs, row0 = [], base_row(base)
    for summary in sorted(sweep.glob("*/summary.json")):
        cfg = yaml.safe_load((summary.parent / "config.yaml").read_text())
        rows = json.loads(summary.read_text())
        if row0 and all(r["iteration"] != 0 for r in rows):
            rows = [row0, *rows]
        runs.append({"dir": summary.parent, "lam": cfg["reward"]["lam"], "seed": cfg["seed"], "rows": rows,
                     "base_dir": base})
    return runs


def table(runs: list[dict]) -> tuple[str, dict]:
    cells: dict[tuple[float, int], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        for row in run["rows"]:
            for m in METRICS:
                if row.get(m) is not None:
                    cells[(run["lam"], row["iteration"])][m].append(row[m])
    lines = ["| lambda | iteration | seeds | " + " | ".join(METRICS) + " |", "|" + "---|" * (len(METRICS) + 3)]
    for (lam, k), values in sorted(cells.items()):
        n = max(len(v) for v in values.values())
        parts = []
        for m in METRICS:
            if values.get(m):
                mean, ci = mean_ci(values[m])
                parts.append(f"{mean:.3f} ± {ci:.3f}" if ci == ci else f"{mean:.3f}")
            else:
                parts.append("-")
        lines.append(f"| {lam} | {k} | {n} | " + " | ".join(parts) + " |")
    return "\n".join(lines) + "\n", cells


def plot_metric(cells: dict, metric: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for lam in sorted({lam for lam, _ in cells}):
        pts = sorted((k, *mean_ci(v[metric])) for (lm, k), v in cells.items() if lm == lam and v.get(metric))
        if pts:
            ks, means, cis = zip(*pts, strict=True)
            ax.errorbar(ks, means, yerr=[0 if c != c else c for c in cis], marker="o", capsize=3, label=f"λ={lam}")
    ax.set_xlabel("iteration")
    ax.set_ylabel(metric)
    ax.set_xticks(sorted({k for _, k in cells}))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def answer_r_i(run_dir: Path, k: int) -> list[float]:
    path = run_dir / f"iter_{k}" / "eval" / "shapesworld" / "answers.jsonl"
    return [json.loads(line)["r_i"] for line in path.read_text().splitlines()] if path.exists() else []


def plot_r_i(runs: list[dict], lam: float, path: Path) -> None:
    """The paper's right-hand figure: R_I of the model's answers before and after CSR."""
    last = max(r["iteration"] for run in runs for r in run["rows"])
    before = [x for run in runs if run["lam"] == lam for x in answer_r_i(run["base_dir"] or run["dir"], 0)]
    after = [x for run in runs if run["lam"] == lam for x in answer_r_i(run["dir"], last)]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    bins = 30
    ax.hist(before, bins=bins, alpha=0.55, label=f"base (mean {statistics.fmean(before):.1f})" if before else "base")
    ax.hist(after, bins=bins, alpha=0.55, label=f"CSR iter {last} (mean {statistics.fmean(after):.1f})" if after else "")
    ax.set_xlabel("R_I of the answer (100 x CLIP cosine)")
    ax.set_ylabel("answers")
    ax.set_title(f"λ = {lam}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--base", type=Path, default=None, help="run dir holding iter_0 (base model eval)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()
    runs = load_runs(args.sweep, args.base)
    text, cells = table(runs)
    (args.out / "results.md").write_text(text)
    plot_metric(cells, "CHAIR_S", args.out / "chair_s_by_iteration.png")
    plot_metric(cells, "recall", args.out / "recall_by_iteration.png")
    plot_r_i(runs, 0.9, args.out / "r_i_before_after.png")
    print(text)


if __name__ == "__main__":
    main()
