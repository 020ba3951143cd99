"""Where the transformers releases csr supports (5.17 to 5.x) differ in what csr calls: one shim per
difference, found by looking at the installed library rather than comparing version numbers, each
tested on the installed release (tests/test_compat.py) and on the floor set in CI.

1. The cache argument and output field: `past_key_values` up to 5.2x, then `cache`.
2. Precomputed image features: newer releases take `mm_encoder_outputs` (the vision tower runs once per
   pair, its features serve both rows) and a boolean `logits_to_keep` mask (the LM head only at answer
   positions). Older ones get the images once per row and the mask applied to the full logits: the same
   values, at more memory.
"""

from __future__ import annotations

import inspect

import torch
import transformers.modeling_utils
from transformers.generation.utils import GenerationMixin
from transformers.models.llama.modeling_llama import LlamaModel

CACHE_ARG = "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"
PRECOMPUTED_FEATURES = (hasattr(GenerationMixin, "_supports_mm_encoder_outputs")
                        and hasattr(transformers.modeling_utils, "slice_logits_to_keep"))


def cache_kwargs(cache) -> dict:
    """The keyword a forward takes its KV cache by."""
    return {CACHE_ARG: cache}


def cache_of(output):
    """The grown KV cache of a forward's output."""
    return getattr(output, CACHE_ARG)


def logits_at(model: torch.nn.Module, family, text: dict[str, torch.Tensor], image: dict[str, torch.Tensor],
              times: int, keep: torch.Tensor) -> torch.Tensor:
    """[keep.sum(), vocab] logits at the `keep` positions of rows whose images are `image`'s repeated
    `times` over (rows in blocks: every image's first row, then every image's second ...), as
    `logits[keep]` of one plain forward over those rows would give them.

    `text`: input_ids, attention_mask and the family's token types for all rows."""
    if PRECOMPUTED_FEATURES:
        features = model.get_image_features(**image)
        shared = family.repeat_image_outputs(features, times)
        del features
        # What the LM still needs of the images besides their features (Qwen's grids give its positions).
        again = {key: torch.cat([image[key]] * times) for key in family.forward_keys if key in image}
        return model(**text, mm_encoder_outputs={"image": shared}, logits_to_keep=keep, use_cache=False,
                     **again).logits
    repeated = {key: torch.cat([value] * times) for key, value in image.items()}
    return model(**text, **repeated, use_cache=False).logits[keep]
