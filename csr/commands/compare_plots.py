"""The plots of `csr-compare` (PNG, matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

from csr.commands.compare_runs import Run
from csr.core.io import read_jsonl


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, tight: bool = True) -> None:
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    _pyplot().close(fig)


def _iteration_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("iteration")
    ax.grid(alpha=0.3)


def _series(run: Run, metric: str) -> list[tuple[int, float]]:
    return [(k, m[metric]) for k, m in sorted(run.metrics.items()) if metric in m]


def plot_metrics(runs: list[Run], labels: dict[str, str], metrics: list[str], path: Path) -> None:
    """One panel per evaluation metric, one line per run (labelled by its swept values)."""
    plt = _pyplot()
    metrics = metrics or ["pairs/margin"]
    cols = min(3, len(metrics))
    rows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(metrics):]:
        ax.set_visible(False)
    for ax, metric in zip(axes.flat, metrics, strict=False):
        for run in runs:
            points = _series(run, metric)
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=labels[run.name])
        ax.set_title(metric.removeprefix("eval/"), fontsize=9)
        _iteration_axis(ax)
    fig.tight_layout(rect=(0, 0.06, 1, 1))  # room for the legend below the panels
    handles, names = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="lower center", ncol=min(4, len(names)), fontsize=8)
    _save(fig, path, tight=False)


def plot_score_gap(runs: list[Run], labels: dict[str, str], path: Path) -> None:
    """Mean calibrated score of the chosen (solid) and rejected (dashed) answers, and their gap."""
    plt = _pyplot()
    fig, (scores, gap) = plt.subplots(1, 2, figsize=(9, 3.4))
    for i, run in enumerate(runs):
        color = f"C{i % 10}"
        for metric, style in (("pairs/chosen/score", "-"), ("pairs/rejected/score", "--")):
            points = _series(run, metric)
            if points:
                scores.plot(*zip(*points, strict=True), style, marker="o", color=color)
        points = _series(run, "pairs/margin")
        if points:
            gap.plot(*zip(*points, strict=True), marker="o", color=color, label=labels[run.name])
    scores.set_title("chosen (solid) vs rejected (dashed) score", fontsize=9)
    gap.set_title("gap: chosen - rejected", fontsize=9)
    for ax in (scores, gap):
        _iteration_axis(ax)
    if gap.get_legend_handles_labels()[0]:
        gap.legend(fontsize=7)
    _save(fig, path)


def answer_r_i(run_dir: Path, k: int) -> list[float]:
    """The per-answer R_I of the first evaluator of iteration k that scores its answers."""
    for path in sorted((run_dir / f"iter_{k}" / "eval").glob("*/answers.jsonl")):
        values = [r["r_i"] for r in read_jsonl(path) if "r_i" in r]
        if values:
            return values
    return []


def plot_r_i_before_after(runs: list[Run], labels: dict[str, str], path: Path) -> None:
    """Distribution of the eval answers' R_I: the starting model (iteration 0) against the last
    iteration, per run; needs the run directories (the per-answer files are not in MLflow)."""
    plt = _pyplot()
    data, names = [], []
    for run in runs:
        if run.run_dir is None or not run.metrics:
            continue
        before, after = answer_r_i(run.run_dir, 0), answer_r_i(run.run_dir, max(run.metrics))
        if before and after:
            data += [before, after]
            names += [f"{labels[run.name]}\nbefore", "after"]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(data)), 3.8))
    if data:
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(data) + 1), names, fontsize=7)
    else:
        ax.text(0.5, 0.5, "no per-answer R_I found\n(run directories with iter_0 eval needed)",
                ha="center", va="center", transform=ax.transAxes)
    ax.set_title("R_I of eval answers: base model vs after CSR", fontsize=9)
    ax.set_ylabel("R_I")
    ax.grid(alpha=0.3, axis="y")
    _save(fig, path)
