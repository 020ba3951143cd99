"""Evaluators run on each iteration's model; each returns a flat dict of metrics."""

from csr.eval.generate import evaluate_generate

EVALUATORS = {"generate": evaluate_generate}
