"""Evaluators run on each iteration's model; each returns a flat dict of metrics."""

from csr.eval.benchmarks import evaluate_coco_chair, evaluate_pope
from csr.eval.generate import evaluate_generate
from csr.eval.shapesworld import evaluate_shapesworld

EVALUATORS = {
    "generate": evaluate_generate,
    "shapesworld": evaluate_shapesworld,
    "coco_chair": evaluate_coco_chair,
    "pope": evaluate_pope,
}
