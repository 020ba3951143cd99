"""Each family adapter's pieces on its tiny random checkpoint, for every family: the checkpoint round
trip and processor check, LoRA targets, end-of-answer tokens, the context check's prompt length, and
the two things DPO relies on (precomputed image features reused for both rows of a pair, per-pair
images collated into one batch) giving the logits of a plain forward."""

from __future__ import annotations

import re

import pytest
import torch
from PIL import Image

from csr.config.choices import FAMILIES
from csr.dpo.data import concat_padded
from csr.models.checkpoint import load_model
from csr.models.compat import logits_at
from csr.models.families import get_family
from csr.models.families.base import LINEAR

PROMPTS = ["Describe the image in detail.", "What is it?"]  # of different lengths
ATOL = 1e-5


def _images() -> list[Image.Image]:
    """A wide and a square image: tiling, splitting and dynamic-resolution families give them different
    numbers of crops or patches."""
    wide, square = Image.new("RGB", (64, 16), (200, 30, 30)), Image.new("RGB", (64, 64), (20, 40, 220))
    square.paste((250, 250, 0), (30, 10, 60, 40))
    return [wide, square]


@pytest.fixture(scope="module", params=FAMILIES)
def built(request, tiny_family):
    name = request.param
    model, processor = load_model(tiny_family(name), family=name, dtype="float32")
    return get_family(name), model, processor


def _batch(family, processor) -> dict[str, torch.Tensor]:
    return family.encode(processor, [family.chat_prompt(processor, p) for p in PROMPTS], _images())


def test_checkpoint_loads_and_its_processor_fits(built) -> None:
    family, model, processor = built
    assert model.config.model_type in family.model_types and isinstance(model, family.model_class)
    assert family.processor_problems(model, processor) == []
    text = model.config.get_text_config()
    if family.name != "llava":  # LLaVA-1.5's Vicuna has one key per query head; every newer family groups them
        assert text.num_key_value_heads < text.num_attention_heads


def test_lora_targets_are_the_language_models_linears_only(built) -> None:
    family, model, _ = built
    names = [name for name, _ in model.named_modules()]
    matched = {name for name in names if re.fullmatch(family.lora_targets(), name)}
    text = model.config.get_text_config()
    assert len(matched) == 7 * text.num_hidden_layers  # q, k, v, o, gate, up, down in every decoder layer
    assert all(f".{family.language_model}.layers." in f".{name}" and re.search(rf"\.{LINEAR}$", name)
               for name in matched)
    assert any(name.endswith(family.projector) for name in names), f"no module named {family.projector}"
    assert not any(family.projector in n or "visual" in n or "vision" in n or "lm_head" in n for n in matched)


def test_the_answer_ends_with_an_end_token(built) -> None:
    family, model, processor = built
    ends = family.end_token_ids(processor, model)
    assert processor.tokenizer.eos_token_id in ends and family.answer_end_id(processor) in ends
    if family.name == "llava":  # LLaVA-1.5's template closes an answer with a space, not a token
        return
    answer = "A red square."
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi."}]},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    ids = processor.tokenizer(processor.apply_chat_template(chat), add_special_tokens=False)["input_ids"]
    answer_ids = processor.tokenizer(answer, add_special_tokens=False)["input_ids"]
    start = next(i for i in range(len(ids)) if ids[i : i + len(answer_ids)] == answer_ids)
    assert ids[start + len(answer_ids)] == family.answer_end_id(processor)


def test_prompt_length_counts_the_images_real_tokens(built) -> None:
    family, model, processor = built
    lengths = []
    for image in _images():
        inputs = family.encode(processor, [family.chat_prompt(processor, PROMPTS[0])], [image])
        image_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
        length = family.prompt_length(processor, PROMPTS[0], image)
        assert length == inputs["input_ids"].shape[1] and image_tokens > 0
        lengths.append(length)
    if family.name not in ("llava", "gemma3"):  # one fixed-size crop in those two
        assert lengths[0] != lengths[1]


def test_precomputed_features_reused_for_both_rows_give_the_same_logits(built) -> None:
    """As dpo/module.py's concatenated_logps: the tower runs once per pair, its features serve both rows."""
    family, model, processor = built
    inputs = _batch(family, processor)
    image = family.image_inputs(inputs, model.dtype)
    text = {key: inputs[key] for key in ("input_ids", "attention_mask", *family.token_keys)}
    with torch.no_grad():
        reference = model(**inputs).logits
        doubled = {key: torch.cat([value, value]) for key, value in text.items()}
        keep = torch.ones(doubled["input_ids"].shape, dtype=torch.bool)
        # Through csr/models/compat.py: mm_encoder_outputs where the installed transformers has it.
        twice = logits_at(model, family, doubled, image, 2, keep)
    torch.testing.assert_close(twice, torch.cat([reference, reference])[keep], atol=ATOL, rtol=0)


def test_per_pair_images_collate_to_one_processor_call(built) -> None:
    """DPO encodes each pair alone and collates: the batch must read as one processor call over all."""
    family, model, processor = built
    inputs = _batch(family, processor)
    alone = [family.encode(processor, [family.chat_prompt(processor, p)], [image])
             for p, image in zip(PROMPTS, _images(), strict=True)]
    collated = {key: concat_padded([a[key] for a in alone]) for key in family.image_keys if key in inputs}
    with torch.no_grad():
        ours = model(**{**inputs, **family.image_inputs(collated, model.dtype)}).logits
        reference = model(**inputs).logits
    torch.testing.assert_close(ours, reference, atol=ATOL, rtol=0)
