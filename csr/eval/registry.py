"""Evaluators run on each iteration's model; each returns a flat dict of metrics.

An evaluator is one function of one signature (`EvaluateFn`), its settings in a block of its own
under `eval` (eval.shapesworld, eval.coco, eval.pope, ...), and its summary: the (column, metric key)
pairs the run's summary table shows of it. The benchmarks' evaluators are listed here; a world brings its own (csr/worlds/), and
`csr.worlds.evaluators()` is every one a run can name in `eval.evaluators`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from csr.eval import benchmarks, generate, harness


class EvaluateFn(Protocol):
    def __call__(self, *, model: Any, processor: Any, family: Any, scorer: Any, eval_cfg: Any, prompt_file: str,
                 image_root: str, out_dir: Path, trainer_kwargs: dict, on_error: str = "raise") -> dict:
        """Score `model` (with its `processor`; `family` the run's, csr/models/families/; `scorer` the run's
        CLIP) into out_dir; its metrics, with the `settings` it ran with. prompt_file and image_root: eval's,
        else the training data's."""


@dataclass(frozen=True)
class Evaluator:
    run: EvaluateFn
    summary: tuple[tuple[str, str], ...]  # (column, metric key) of the run's summary table
    # more (column, metric key) chosen by the run's eval config: a harness's metrics depend on its tasks
    config_summary: Callable[[Any], tuple[tuple[str, str], ...]] | None = None


BENCHMARKS = {
    "generate": Evaluator(generate.evaluate_generate, generate.SUMMARY),
    "coco_chair": Evaluator(benchmarks.evaluate_coco_chair, benchmarks.COCO_CHAIR_SUMMARY),
    "pope": Evaluator(benchmarks.evaluate_pope, benchmarks.POPE_SUMMARY),
    # external harnesses (lmms-eval, VLMEvalKit) run on the evaluated checkpoint: csr/eval/harness.py
    **{name: Evaluator(partial(harness.evaluate_harness, name), (), partial(harness.summary, name)) for name in harness.HARNESSES},
}


def summary_columns(evaluators: Mapping[str, Evaluator], names: Iterable[str],
                    eval_cfg: Any = None) -> list[tuple[str, str]]:
    """(column, "<evaluator>/<key>") of the named evaluators, in the order of `evaluators`; with the run's
    eval config also the columns it chooses (a harness's eval.<name>.summary)."""
    names, columns = set(names), []
    for name, e in evaluators.items():
        if name in names:
            chosen = e.config_summary(eval_cfg) if e.config_summary and eval_cfg is not None else ()
            columns += [(column, f"{name}/{key}") for column, key in (*e.summary, *chosen)]
    return columns
