"""Plot the pair-rule comparison (README, "Pair rule"): CHAIR_S and recall per seed and iteration
for pairs.rule=mean and pairs.rule=reference at lambda 0.9.

    python experiments/shapesworld_csr/pair_rule.py multirun/shapesworld_pair_rule
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RULES = {"mean": "tab:blue", "reference": "tab:red"}
SEEDS = (0, 1, 2)


def base_metrics(root: Path) -> dict:
    """Iteration 0 (the base model), the same for every job: the `base` run's evaluation."""
    metrics = json.loads((root / "base" / "iter_0" / "metrics.json").read_text())["eval"]
    return {"CHAIR_S": metrics["shapesworld/chair_s"], "recall": metrics["shapesworld/recall"]}


def main(root: Path) -> None:
    base = base_metrics(root)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for rule, colour in RULES.items():
        for seed in SEEDS:
            rows = json.loads((root / rule / str(seed) / "summary.json").read_text())
            iterations = [0] + [r["iteration"] for r in rows]
            for ax, metric in zip(axes, ("CHAIR_S", "recall"), strict=True):
                ax.plot(iterations, [base[metric]] + [r[metric] for r in rows], color=colour, alpha=0.8,
                        marker="o", label=rule if seed == SEEDS[0] else None)
    for ax, title in zip(axes, ("CHAIR_S (lower is better)", "recall"), strict=True):
        ax.set_xticks([0, 1, 2, 3])
        ax.set_xlabel("iteration")
        ax.set_title(title)
        ax.legend()
    fig.suptitle("ShapesWorld, lambda 0.9: pairs.rule mean vs reference (3 seeds each, test split)")
    fig.tight_layout()
    fig.savefig(Path(__file__).with_name("pair_rule.png"), dpi=90)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "multirun/shapesworld_pair_rule"))
