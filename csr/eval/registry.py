"""Evaluators run on each iteration's model; each returns a flat dict of metrics."""

from csr.eval.generate import evaluate_generate
from csr.eval.shapesworld import evaluate_shapesworld

EVALUATORS = {"generate": evaluate_generate, "shapesworld": evaluate_shapesworld}
