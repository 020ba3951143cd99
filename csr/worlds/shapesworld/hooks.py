"""ShapesWorld's hooks into the loop (csr/worlds/__init__.py World): its prompt split, its evaluator and
the pairs' CHAIR against its exact ground truth."""

from __future__ import annotations

from pathlib import Path

from csr.core.io import read_jsonl
from csr.eval.registry import Evaluator
from csr.worlds.shapesworld.evaluate import SUMMARY, evaluate_shapesworld, pair_hallucination
from csr.worlds.shapesworld.splits import ensure_split, ground_truth


class ShapesWorld:
    evaluators = {"shapesworld": Evaluator(evaluate_shapesworld, SUMMARY)}

    def prepare(self, data_cfg) -> None:
        """Write the prompt split on first use (deterministic: the same files everywhere)."""
        ensure_split(data_cfg.shapesworld.root, data_cfg.shapesworld.split, data_cfg.shapesworld.size)

    def diagnose_pairs(self, data_cfg, pairs_path: Path) -> dict:
        """CHAIR of the chosen and rejected answers: is the reward right?"""
        truth = ground_truth(Path(data_cfg.shapesworld.root) / data_cfg.shapesworld.split)
        return pair_hallucination(read_jsonl(pairs_path), truth)
