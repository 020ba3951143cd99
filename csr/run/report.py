"""The per-iteration table of a run (printed, Markdown, JSON) and its plot (PNG).

With a selection (csr/run/selection.py) the table gains the selection score of each iteration (`val
CHAIR_S`) and a `selected` column, and a note under it says which iteration was selected, on what,
and that every other column is that iteration's evaluation on the reported split."""

from __future__ import annotations

import logging
from pathlib import Path

from csr.core.io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

# (column, stage, key in that stage's stats) after the evaluators' own columns (each evaluator
# declares its SUMMARY, csr/eval/registry.py); a column whose every value is missing is left out,
# so a run shows the columns of the evaluators it used.
COLUMNS = [
    ("pairs", "pairs", "pairs"),
    ("skipped", "pairs", "skipped"),
    ("gap", "pairs", "margin"),
    ("chosen CHAIR_S", "pairs", "chosen/chair_s"),
    ("rejected CHAIR_S", "pairs", "rejected/chair_s"),
    ("chosen R_I", "pairs", "chosen/r_i"),
    ("rejected R_I", "pairs", "rejected/r_i"),
    ("dpo acc", "dpo", "rewards/accuracies"),
]
PLOTTED = ["CHAIR_S", "recall", "POPE F1", "answer R_I", "generated R_I", "gap"]


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def selection_column(selection: dict, eval_columns: list[tuple[str, str]] = ()) -> str:
    """"val CHAIR_S": the selection split and the metric's column (its key when no column shows it)."""
    label = next((column for column, key in eval_columns if key == selection["metric"]), selection["metric"])
    return f"{selection['split']} {label}"


def table_rows(metrics_by_iteration: dict[int, dict], eval_columns: list[tuple[str, str]] = (),
               selection: dict | None = None) -> list[dict]:
    """eval_columns: (column, "<evaluator>/<key>") the evaluators declare, shown first."""
    columns = [(column, "eval", key) for column, key in eval_columns] + COLUMNS
    if selection is not None:
        columns.append((selection_column(selection, eval_columns), "select", selection["metric"]))
    rows = []
    for k, metrics in sorted(metrics_by_iteration.items()):
        row = {"iteration": k}
        for column, stage, key in columns:
            row[column] = (metrics.get(stage) or {}).get(key)
        rows.append(row)
    if selection is not None:
        columns.append(("selected", None, None))
        for row in rows:
            row["selected"] = "yes" if row["iteration"] == selection["iteration"] else None
    used = [c for c, _, _ in columns if any(r[c] is not None for r in rows)]
    return [{"iteration": r["iteration"], **{c: r[c] for c in used}} for r in rows]


def markdown(rows: list[dict]) -> str:
    header = list(rows[0]) if rows else ["iteration"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(row[h]) for h in header) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, title: str = "csr run") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = [c for c in PLOTTED if rows and c in rows[0]]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), squeeze=False)
    for ax, column in zip(axes[0], panels, strict=True):
        points = [(r["iteration"], r[column]) for r in rows if r[column] is not None]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o")
        ax.set_title(column)
        ax.set_xlabel("iteration")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # iterations are whole: no 0.5 ticks
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title}: metrics by iteration (0 = the starting model)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def selection_note(selection: dict, eval_columns: list[tuple[str, str]] = ()) -> str:
    """The lines under the table: the choice, its checkpoint, and what each column was measured on."""
    best = "lowest" if selection["mode"] == "min" else "highest"
    considered = ", ".join(selection["values"])
    where = "" if selection["checkpoint"].startswith("iter_") else " (the base model: no iteration beat it)"
    stop = "; stopped early (eval.select.patience)" if selection["stopped_early"] else ""
    return (f"\nselected: iteration {selection['iteration']}, the {best} {selection_column(selection, eval_columns)} "
            f"({selection['value']:.3f}) of iterations {considered}{stop}; checkpoint {selection['checkpoint']}{where}.\n"
            f"Every other column is each iteration's own evaluation on {selection['reported_split']}; the "
            f"selected iteration's row is the reported result (the choice read {selection['split']} only).\n")


def write_report(metrics_by_iteration: dict[int, dict], run_dir: Path,
                 eval_columns: list[tuple[str, str]] = (), selection: dict | None = None) -> dict:
    rows = table_rows(metrics_by_iteration, eval_columns, selection)
    text = markdown(rows) + (selection_note(selection, eval_columns) if selection else "")
    atomic_write_text(run_dir / "summary.md", text)
    atomic_write_json(run_dir / "summary.json", rows)
    plot(rows, run_dir / "summary.png", title=run_dir.name)
    print(text)  # the table is the run's result: show it even when logging is quiet
    return {"rows": rows, "selection": selection}
