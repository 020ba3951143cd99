"""What gating the iterations on val (csr/run/selection.py) would have kept in the runs already measured, with
no new run: the same seeds were trained once with evaluation on val (val.md, explore.md) and once on
test (test.md), and evaluation never touches training (tests/test_select.py), so a seed's models are
the same in both and val can choose what test then reports.

    python experiments/shapesworld_default/selection.py --out experiments/shapesworld_default/selection.md
"""

from __future__ import annotations

import argparse
import re
import statistics
from pathlib import Path

from csr.run.selection import best_iteration, patience_spent

HERE = Path(__file__).resolve().parent


def read_table(path: Path, setting: str) -> tuple[float, dict[int, list[float]]]:
    """(the base's CHAIR_S, seed -> CHAIR_S by iteration) of one setting of an effect.py table."""
    text = path.read_text()
    base = float(re.search(r"Base: CHAIR_S ([0-9.]+)", text).group(1))
    seeds = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) > 2 and cells[0] == setting and cells[1].isdigit():
            seeds[int(cells[1])] = [float(v) for v in cells[2].split(" / ")]
    return base, seeds


def gate(base: float, chair: list[float], patience: int | None) -> tuple[int, int]:
    """(the selected iteration, the last iteration run) under min CHAIR_S with `patience`."""
    values = {0: base}
    for k, v in enumerate(chair, start=1):
        values[k] = v
        if patience_spent(values, "min", patience):
            break
    return best_iteration(values, "min"), max(values)


def report(patience: int) -> str:
    val_base, val = read_table(HERE / "val.md", "400 prompts")
    test_base, test = read_table(HERE / "test.md", "default (400 prompts)")
    lines = [f"Selection on val CHAIR_S (min, patience {patience}, at most 3 iterations), reported on test. "
             f"Base: val {val_base:.3f}, test {test_base:.3f}.", "",
             "| seed | val CHAIR_S by iteration | selected | test CHAIR_S by iteration | test: selected | test: iteration 3 "
             "| test: best (hindsight) |", "|---|---|---|---|---|---|---|"]
    chosen, third, oracle = [], [], []
    for seed in sorted(val):
        k, _ = gate(val_base, val[seed], patience)
        t = [test_base, *test[seed]]
        chosen.append(t[k])
        third.append(t[3])
        oracle.append(min(t))
        lines.append(f"| {seed} | {' / '.join(f'{v:.3f}' for v in val[seed])} | {k} | "
                     f"{' / '.join(f'{v:.3f}' for v in test[seed])} | {t[k]:.3f} | {t[3]:.3f} | {min(t):.3f} |")
    lines += ["", "| rule | test CHAIR_S, mean over seeds 0-4 | worst seed |", "|---|---|---|"]
    for name, values in (("selected on val", chosen), ("iteration 3 (fixed)", third), ("best on test (hindsight)", oracle)):
        lines.append(f"| {name} | {statistics.mean(values):.4f} | {max(values):.3f} |")
    _, five = read_table(HERE / "explore.md", "5 iterations")
    lines += ["", f"Five iterations on val (explore.md) under patience {patience}:", "",
              "| seed | val CHAIR_S by iteration | selected | last iteration run |", "|---|---|---|---|"]
    for seed in sorted(five):
        k, last = gate(val_base, five[seed], patience)
        lines.append(f"| {seed} | {' / '.join(f'{v:.3f}' for v in five[seed])} | {k} | {last} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patience", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    text = report(args.patience)
    print(text, end="")
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
