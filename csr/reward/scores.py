"""R_T, the raw text score of a sentence from the policy's own token log-probs (R_I: csr/models/clip.py)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from csr.config.choices import TEXT_SCORES


def text_score(token_logprobs: Sequence[float], form: str = "mean_logprob") -> float:
    """R_T of one sentence from the log-probs of its tokens (temperature 1, before any penalty).

    `mean_logprob` (default, the reference code): length-normalised, so long sentences are not
    punished for being long. `sum_logprob`: the log of the paper's product. `prob`: the product.
    """
    if not token_logprobs:
        raise ValueError("a sentence needs at least one token to be scored")
    total = float(sum(token_logprobs))
    if form == "mean_logprob":
        return total / len(token_logprobs)
    if form == "sum_logprob":
        return total
    if form == "prob":
        return math.exp(total)
    raise ValueError(f"unknown text score {form!r}; expected one of {TEXT_SCORES}")
