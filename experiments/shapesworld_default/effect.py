"""The default run's effect, seed by seed: CHAIR_S's relative fall by the last iteration and recall's
change, for one or more seed sweeps of the same split (each a setting under test), and the frontier plot.

    python experiments/shapesworld_default/effect.py --base multirun/val_base \\
        "limit 400=multirun/val_limit400" "limit 600, 1 epoch=multirun/val_limit600_e1" --out experiments/shapesworld_default/val

A seed meets the target when CHAIR_S falls by at least `--fall` (relative) with recall at most
`--recall-drop` below the base's (issue 19: 40%, 2 points).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shapesworld_csr"))
from aggregate import base_row, load_runs, mean_ci  # noqa: E402


def per_seed(runs: list[dict], base: dict) -> list[dict]:
    out = []
    for run in sorted(runs, key=lambda r: r["seed"]):
        rows = sorted((r for r in run["rows"] if r["iteration"] > 0), key=lambda r: r["iteration"])
        last = rows[-1]
        out.append({"seed": run["seed"], "chair_s": [r["CHAIR_S"] for r in rows],
                    "fall": 1 - last["CHAIR_S"] / base["CHAIR_S"], "recall": last["recall"] - base["recall"],
                    "well_formed": last["well-formed"] - base["well-formed"]})
    return out


def report(settings: dict[str, list[dict]], base: dict, fall: float, drop: float) -> str:
    lines = [f"Base: CHAIR_S {base['CHAIR_S']:.3f}, recall {base['recall']:.3f}, well-formed {base['well-formed']:.3f}. "
             f"A seed meets the target when CHAIR_S falls by >= {fall:.0%} with recall >= base - {drop}.", "",
             "| setting | seed | CHAIR_S by iteration | relative fall | recall change | well-formed change | met |",
             "|---|---|---|---|---|---|---|"]
    summary = ["", "| setting | seeds met | relative fall (mean ± 95% CI) | worst seed | recall change (mean ± 95% CI) |",
               "|---|---|---|---|---|"]
    for name, seeds in settings.items():
        for s in seeds:
            met = s["fall"] >= fall and s["recall"] >= -drop
            lines.append(f"| {name} | {s['seed']} | {' / '.join(f'{c:.3f}' for c in s['chair_s'])} | {s['fall']:.1%} | "
                         f"{s['recall']:+.3f} | {s['well_formed']:+.3f} | {'yes' if met else 'no'} |")
        falls, recalls = [s["fall"] for s in seeds], [s["recall"] for s in seeds]
        met = sum(s["fall"] >= fall and s["recall"] >= -drop for s in seeds)
        (fm, fc), (rm, rc) = mean_ci(falls), mean_ci(recalls)
        summary.append(f"| {name} | {met} / {len(seeds)} | {fm:.1%} ± {fc:.1%} | {min(falls):.1%} | {rm:+.3f} ± {rc:.3f} |")
    return "\n".join(lines + summary) + "\n"


def plot(settings: dict[str, list[dict]], fall: float, drop: float, path: Path) -> None:
    """Each seed of each setting at (recall change, relative fall): the target is the upper-right box."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, seeds in settings.items():
        ax.scatter([100 * s["recall"] for s in seeds], [100 * s["fall"] for s in seeds], label=name, s=30)
    ax.axhline(100 * fall, color="grey", ls="--", lw=1)
    ax.axvline(-100 * drop, color="grey", ls="--", lw=1)
    ax.set_xlabel("recall change at the last iteration (points)")
    ax.set_ylabel("CHAIR_S relative fall (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("settings", nargs="+", help="NAME=SWEEP_DIR")
    parser.add_argument("--base", type=Path, required=True, help="run dir holding iter_0 (the base model on that split)")
    parser.add_argument("--fall", type=float, default=0.40)
    parser.add_argument("--recall-drop", type=float, default=0.02)
    parser.add_argument("--out", type=Path, required=True, help="writes <out>.md and <out>.png")
    args = parser.parse_args()
    base = base_row(args.base)
    settings = {}
    for item in args.settings:
        name, sweep = item.split("=", 1)
        settings[name] = per_seed(load_runs(Path(sweep), None), base)
    text = report(settings, base, args.fall, args.recall_drop)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text)
    plot(settings, args.fall, args.recall_drop, args.out.with_suffix(".png"))
    print(text)


if __name__ == "__main__":
    main()
