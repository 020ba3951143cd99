"""csr/models/compat.py on the installed transformers: the cache goes in and comes out by the name this
release uses, and DPO's logits at answer positions are the plain forward's through either path (with
precomputed image features where the release has them, per row where it does not)."""

from __future__ import annotations

import inspect

import pytest
import torch
from PIL import Image
from transformers import DynamicCache
from transformers.models.llama.modeling_llama import LlamaModel

from csr.models import compat
from csr.models.checkpoint import load_model
from csr.models.families import get_family

PROMPTS = ["Describe the image in detail.", "What is it?"]


@pytest.fixture(scope="module")
def qwen(tiny_family):
    """Qwen2.5-VL: its grids are the image inputs the forward needs besides the features."""
    model, processor = load_model(tiny_family("qwen2_5_vl"), family="qwen2_5_vl", dtype="float32")
    family = get_family("qwen2_5_vl")
    images = [Image.new("RGB", (64, 16), (200, 30, 30)), Image.new("RGB", (64, 64), (20, 40, 220))]
    inputs = family.encode(processor, [family.chat_prompt(processor, p) for p in PROMPTS], images)
    return family, model, inputs


def test_the_cache_argument_is_the_one_this_release_takes(qwen):
    assert compat.CACHE_ARG in inspect.signature(LlamaModel.forward).parameters
    _, model, inputs = qwen
    with torch.no_grad():
        out = model(**inputs, **compat.cache_kwargs(DynamicCache()), use_cache=True)
    assert compat.cache_of(out).get_seq_length() == inputs["input_ids"].shape[1]


@pytest.mark.parametrize("precomputed", [True, False])
def test_logits_at_answer_positions_equal_the_plain_forward(qwen, monkeypatch, precomputed):
    if precomputed and not compat.PRECOMPUTED_FEATURES:
        pytest.skip("this transformers has no mm_encoder_outputs (the per-row path is the one csr takes here)")
    monkeypatch.setattr(compat, "PRECOMPUTED_FEATURES", precomputed)
    family, model, inputs = qwen
    text = {key: torch.cat([inputs[key]] * 2) for key in ("input_ids", "attention_mask", *family.token_keys)}
    image = family.image_inputs(inputs, model.dtype)
    keep = torch.zeros(text["input_ids"].shape, dtype=torch.bool)
    keep[:, -5:-1] = True  # as DPO's answer positions: a few per row
    keep[1, -7] = True
    with torch.no_grad():
        plain = model(**{key: torch.cat([value] * 2) for key, value in inputs.items()}).logits[keep]
        kept = compat.logits_at(model, family, text, image, 2, keep)
    assert kept.shape == (int(keep.sum()), model.config.get_text_config().vocab_size)
    torch.testing.assert_close(kept, plain, atol=1e-5, rtol=0)
