"""The fast search engine against the reference algorithm (experiments/bench_search/reference.py)."""

from __future__ import annotations

import torch

from csr.search.decode import _diverse_greedy


def test_a_peeking_row_costs_its_siblings_nothing():
    # Row 0 wrote its delimiter and only peeks; rows 1 and 2 are groups 0 and 1 of the same node.
    scores = torch.tensor([[0.0, 3.0, 2.9, 0.0], [0.0, 3.0, 2.9, 0.0], [0.0, 3.0, 2.9, 0.0]])
    picks = _diverse_greedy(scores, groups=[-1, 0, 1], nodes=[0, 0, 0], penalty=3.0, exempt=[3])
    assert picks.tolist() == [1, 1, 2]  # group 0 is not pushed off token 1 by the peek; group 1 is, by group 0
