"""Worlds: prompt sources whose ground truth is known, reaching the loop through three hooks.

A world writes its data before a run reads it (`prepare`), brings evaluators of its own
(`evaluators`, run by the eval stage like any benchmark's) and says how right each iteration's pairs
are against its ground truth (`diagnose_pairs`, merged into the pairs stage's stats). ShapesWorld
(csr/worlds/shapesworld/) is the one shipped, in use when `data.shapesworld.split` is set; COCO-style
prompt files have no world. Adding one: a package here with a hooks class, and a line in `_worlds`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Mapping

    from csr.eval.registry import Evaluator


class World(Protocol):
    evaluators: Mapping[str, Evaluator]

    def prepare(self, data_cfg) -> None: ...

    def diagnose_pairs(self, data_cfg, pairs_path: Path) -> dict: ...


def _worlds() -> dict[str, World]:
    # Imported when asked: a world's evaluators load the model libraries, `csr` checks its config first.
    from csr.worlds.shapesworld.hooks import ShapesWorld

    return {"shapesworld": ShapesWorld()}


def world_of(data_cfg) -> World | None:
    return _worlds()["shapesworld"] if data_cfg.shapesworld.split is not None else None


def evaluators() -> dict[str, Evaluator]:
    """Every evaluator `eval.evaluators` may name: the worlds' first, then the benchmarks' (the order of
    the summary table's columns)."""
    from csr.eval.registry import BENCHMARKS

    found: dict[str, Evaluator] = {}
    for world in _worlds().values():
        found.update(world.evaluators)
    return {**found, **BENCHMARKS}
