"""Calibrated sentence reward: R = lam * R_I + (1 - lam) * R_T after putting both on one scale.

Pure functions on plain lists; nothing here imports a model library.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from csr.config.choices import CALIBRATIONS


def rank_normalise(values: Sequence[float]) -> list[float]:
    """Rank within a sibling set, scaled to (0, 1]: the best gets 1, the worst 1/n (csr's `mean` rule).

    This is NOT the authors' rank read the other way round. Theirs (`csr.reward.rules.reference.reference_ranks`,
    used by `pairs.rule=reference`) is (i+1)/n with best = 1/n, lower is better: without ties it
    equals (n+1)/n minus this one, an offset that depends on the sibling set's size, so once ranks
    from sets of different sizes are summed or averaged along a path the two orders can disagree.
    Ties here share their average rank, so the result does not depend on the order candidates were
    generated in; the authors' stable sort gives the earlier candidate the better rank.
    """
    n = len(values)
    order = sorted(range(n), key=lambda i: values[i])  # ascending: worst first
    ranks = [0.0] * n
    i = 0
    while i < n:
        j = i
        while j + 1 < n and values[order[j + 1]] == values[order[i]]:
            j += 1
        average = (i + j) / 2 + 1  # 1-based average position of the tie group
        for k in range(i, j + 1):
            ranks[order[k]] = average / n
        i = j + 1
    return ranks


def zscore_normalise(values: Sequence[float]) -> list[float]:
    """(x - mean) / std over the sibling set; a set with no spread carries no signal (all 0)."""
    n = len(values)
    if n == 0:
        return []
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / n)
    if std == 0.0:
        return [0.0] * n
    return [(v - mean) / std for v in values]


def raw_normalise(values: Sequence[float]) -> list[float]:
    """The values as they are: R_T and R_I added on their own scales."""
    return list(values)


# One function per reward.calibration choice, named <choice>_normalise: the names are written once, in
# csr/config/choices.py CALIBRATIONS (a choice without its function fails here, at import).
_NORMALISERS = {name: globals()[f"{name}_normalise"] for name in CALIBRATIONS}


def calibrate(r_t: Sequence[float], r_i: Sequence[float], lam: float, method: str) -> list[float]:
    """Calibrated rewards of one sibling set (the candidates proposed from the same parent)."""
    if len(r_t) != len(r_i):
        raise ValueError(f"r_t has {len(r_t)} values but r_i has {len(r_i)}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    if method not in _NORMALISERS:
        raise ValueError(f"unknown calibration {method!r}; expected one of {CALIBRATIONS}")
    normalise = _NORMALISERS[method]
    t, i = normalise(r_t), normalise(r_i)
    return [lam * ri + (1.0 - lam) * rt for rt, ri in zip(t, i, strict=True)]
