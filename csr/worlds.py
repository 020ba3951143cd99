"""Worlds: prompt sources whose ground truth is known, reaching the loop through two hooks.

A world writes its data before a run reads it (`prepare`), and says how right each iteration's
pairs are against its ground truth (`diagnose_pairs`, merged into the pairs stage's stats); its
evaluator is an entry of csr/eval/registry.py like any benchmark's. ShapesWorld is the one shipped
(`data.shapesworld_split` set); COCO-style prompt files have no world.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from csr.io import read_jsonl


class World(Protocol):
    def prepare(self, data_cfg) -> None: ...

    def diagnose_pairs(self, data_cfg, pairs_path: Path) -> dict: ...


class ShapesWorld:
    def prepare(self, data_cfg) -> None:
        """Write the prompt split on first use (deterministic: the same files everywhere)."""
        from csr.data.shapesworld.splits import ensure_split

        ensure_split(data_cfg.shapesworld_root, data_cfg.shapesworld_split, data_cfg.shapesworld_size)

    def diagnose_pairs(self, data_cfg, pairs_path: Path) -> dict:
        """CHAIR of the chosen and rejected answers: is the reward right?"""
        from csr.data.shapesworld.splits import ground_truth
        from csr.eval.shapesworld import pair_hallucination

        truth = ground_truth(Path(data_cfg.shapesworld_root) / data_cfg.shapesworld_split)
        return pair_hallucination(read_jsonl(pairs_path), truth)


def world_of(data_cfg) -> World | None:
    return ShapesWorld() if data_cfg.shapesworld_split is not None else None
