"""Everything that touches the transformers KV-cache API lives here (it is being renamed in v5)."""

from __future__ import annotations

import torch
from transformers import DynamicCache


def select_rows(cache: DynamicCache, rows: torch.Tensor) -> DynamicCache:
    """A new cache holding `rows` of `cache` (repeats allowed); the original is left untouched."""
    return DynamicCache(ddp_cache_data=[(k.index_select(0, rows), v.index_select(0, rows)) for k, v, *_ in cache])


def forward(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    cache: DynamicCache | None = None,
    pixel_values: torch.Tensor | None = None,
) -> tuple[torch.Tensor, DynamicCache]:
    """One cached forward; returns float32 logits of every input position and the grown cache.

    Positions are passed explicitly because rows carry padding (left before the prompt, holes
    after answers of different lengths), and the model cannot infer them from the cache length.
    """
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        pixel_values=pixel_values,
        cache=cache if cache is not None else DynamicCache(),
        use_cache=True,
    )
    return out.logits.float(), out.cache
