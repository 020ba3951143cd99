"""Evaluators: pure metrics (chair, pope) and the evaluators that generate and score (see registry)."""
