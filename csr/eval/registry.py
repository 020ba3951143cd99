"""Evaluators run on each iteration's model; each returns a flat dict of metrics.

An evaluator is a module with one function of one signature (keyword arguments: model, processor,
scorer, eval_cfg, prompt_file, image_root, out_dir, trainer_kwargs, on_error; see
csr/eval/generate.py evaluate_generate) and a SUMMARY: the (column, metric key) pairs the run's
summary table shows of it. Adding one: write both, list it here.
"""

from csr.eval import benchmarks, generate, shapesworld

EVALUATORS = {
    "shapesworld": shapesworld.evaluate_shapesworld,
    "generate": generate.evaluate_generate,
    "coco_chair": benchmarks.evaluate_coco_chair,
    "pope": benchmarks.evaluate_pope,
}
SUMMARY = {"shapesworld": shapesworld.SUMMARY, "generate": generate.SUMMARY,
           "coco_chair": benchmarks.COCO_CHAIR_SUMMARY, "pope": benchmarks.POPE_SUMMARY}


def summary_columns(names) -> list[tuple[str, str]]:
    """(column, "<evaluator>/<key>") of the given evaluators, in the registry's order."""
    return [(column, f"{name}/{key}") for name in EVALUATORS if name in names for column, key in SUMMARY[name]]
