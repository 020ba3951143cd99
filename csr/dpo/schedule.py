"""The learning-rate factor of DPO's optimizer step `step` (0-based): linear warmup, then constant or
cosine decay.

transformers' `get_*_schedule_with_warmup` give step 0 the factor 0/warmup = 0: with the paper's
warmup_ratio 0.03 of a few hundred steps, the first optimizer step moves nothing (the authors' HF
Trainer does the same). Here warmup step s gets (s + 1) / (warmup + 1): every step trains, the rise
is as linear, and the full rate is reached at step `warmup`, where transformers' reaches it too.
After warmup the cosine is transformers' (half a period over the remaining steps, never 0 at the
last step).
"""

from __future__ import annotations

import math


def lr_factor(step: int, warmup: int, total: int, scheduler: str) -> float:
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if scheduler == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))
