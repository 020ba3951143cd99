"""Evaluators run on each iteration's model; each returns a flat dict of metrics.

An evaluator is one function of one signature (`EvaluateFn`), its settings in a block of its own
under `eval` (eval.shapesworld, eval.coco, eval.pope, ...), and its summary: the (column, metric key)
pairs the run's summary table shows of it. The benchmarks' evaluators are listed here; a world brings its own (csr/worlds/), and
`csr.worlds.evaluators()` is every one a run can name in `eval.evaluators`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from csr.eval import benchmarks, generate


class EvaluateFn(Protocol):
    def __call__(self, *, model: Any, processor: Any, scorer: Any, eval_cfg: Any, prompt_file: str, image_root: str,
                 out_dir: Path, trainer_kwargs: dict, on_error: str = "raise") -> dict:
        """Score `model` (with its `processor`; `scorer` the run's CLIP) into out_dir; its metrics, with
        the `settings` it ran with. prompt_file and image_root: eval's, else the training data's."""


@dataclass(frozen=True)
class Evaluator:
    run: EvaluateFn
    summary: tuple[tuple[str, str], ...]  # (column, metric key) of the run's summary table


BENCHMARKS = {
    "generate": Evaluator(generate.evaluate_generate, generate.SUMMARY),
    "coco_chair": Evaluator(benchmarks.evaluate_coco_chair, benchmarks.COCO_CHAIR_SUMMARY),
    "pope": Evaluator(benchmarks.evaluate_pope, benchmarks.POPE_SUMMARY),
}


def summary_columns(evaluators: Mapping[str, Evaluator], names: Iterable[str]) -> list[tuple[str, str]]:
    """(column, "<evaluator>/<key>") of the named evaluators, in the order of `evaluators`."""
    names = set(names)
    return [(column, f"{name}/{key}") for name, e in evaluators.items() if name in names for column, key in e.summary]
