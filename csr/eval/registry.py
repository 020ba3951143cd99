"""Evaluators run on each iteration's model; each returns a flat dict of metrics.

An evaluator is one function of one signature (keyword arguments: model, processor, scorer, eval_cfg,
prompt_file, image_root, out_dir, trainer_kwargs, on_error; see csr/eval/generate.py
evaluate_generate) and its SUMMARY: the (column, metric key) pairs the run's summary table shows of
it. The benchmarks' evaluators are listed here; a world brings its own (csr/worlds/), and
`csr.worlds.evaluators()` is every one a run can name in `eval.evaluators`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from csr.eval import benchmarks, generate


@dataclass(frozen=True)
class Evaluator:
    run: Callable[..., dict]
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
