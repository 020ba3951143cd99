"""The LLaVA-NeXT and LLaVA-OneVision families: their tiny checkpoints, and what the search, DPO and
merge rely on them to do. Both tile an image into a size-dependent number of crops and tokens."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPooling

from csr.core.errors import CSRError
from csr.dpo.data import concat_padded
from csr.models.checkpoint import load_model, save_model
from csr.models.compat import PRECOMPUTED_FEATURES, cache_kwargs, cache_of
from csr.models.families import get_family
from csr.models.families.base import LINEAR, feature_list
from csr.models.families.llava import make_processor as llava_processor
from csr.models.families.llava_next import (
    ONEVISION_SPECIAL_TOKENS,
    TINY_IMAGE_SIZE,
    TINY_PATCH_SIZE,
    TINY_SLIDING_WINDOW,
    make_next_processor,
    make_onevision_processor,
)
from csr.models.tiny import build_chatml_tokenizer, build_tokenizer

NAMES = ("llava_next", "llava_onevision")
PROMPTS = ["Describe the image in detail.", "What is it?"]  # of different lengths
ATOL = 1e-5
# 40x30 tiles as 1x2 crops: the base crop's 16 tokens, the unpadded 4x6 grid and 4 row ends; 64x64 as
# 2x2 crops: 16 + 8x8 + 8 (the same in both families: OneVision's 9-crop cap is not reached).
IMAGE_TOKENS = [44, 88]


@pytest.fixture(scope="module", params=NAMES)
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(family, checkpoint dir, model, processor) of each family."""
    family = get_family(request.param)
    out = str(tmp_path_factory.mktemp(request.param))
    family.build_tiny(out, seed=0)
    model, processor = load_model(out, family=request.param, dtype="float32")
    return family, out, model, processor


def _images() -> list[Image.Image]:
    """Two images of different sizes and colours, so of different crop and token counts."""
    return [Image.new("RGB", (40, 30), (255, 0, 0)), Image.new("RGB", (64, 64), (0, 0, 255))]


def _batch(family, processor) -> dict[str, torch.Tensor]:
    return family.encode(processor, [family.chat_prompt(processor, p) for p in PROMPTS], _images())


def _extra(family, model, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What the engine's prefill passes besides ids, mask and positions."""
    return {**family.image_inputs(inputs, model.dtype), **{key: inputs[key] for key in family.token_keys}}


# -- 1. checkpoint round trip, processor checks --------------------------------------------------------


def test_round_trip_and_config(built, tmp_path: Path) -> None:
    family, checkpoint, model, processor = built
    assert family.processor_problems(model, processor) == []
    text = model.config.get_text_config()
    assert text.num_key_value_heads < text.num_attention_heads  # grouped-query attention
    assert text.max_position_embeddings >= 2048
    if family.name == "llava_next":
        assert text.model_type == "mistral" and text.sliding_window == TINY_SLIDING_WINDOW
    else:
        assert text.model_type == "qwen2" and text.sliding_window is None
    # Same seed, same weights.
    family.build_tiny(str(tmp_path), seed=0)
    first, again = load_file(f"{checkpoint}/model.safetensors"), load_file(f"{tmp_path}/model.safetensors")
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)


def test_wrong_processor_is_refused(built, tmp_path: Path) -> None:
    family, _, model, _ = built
    if family.name == "llava_next":
        # Patches of 4px: the processor writes 4x the tokens the tower's 8px patches make.
        other_count = make_next_processor(build_tokenizer(), TINY_IMAGE_SIZE, TINY_PATCH_SIZE // 2)
        wider = make_next_processor(build_tokenizer(), 48, TINY_PATCH_SIZE)
        other_family = make_onevision_processor(build_chatml_tokenizer(ONEVISION_SPECIAL_TOKENS), TINY_IMAGE_SIZE, 16)
    else:
        other_count = make_onevision_processor(build_chatml_tokenizer(ONEVISION_SPECIAL_TOKENS), TINY_IMAGE_SIZE, 9)
        wider = make_onevision_processor(build_chatml_tokenizer(ONEVISION_SPECIAL_TOKENS), 48, 16)
        other_family = make_next_processor(build_tokenizer(), TINY_IMAGE_SIZE, TINY_PATCH_SIZE)
    [problem] = family.processor_problems(model, other_count)
    assert re.fullmatch(r"the processor writes \d+ image tokens for a probe image, the model makes \d+ features",
                        problem)
    assert "the processor makes 48px crops, the vision tower expects 32px" in family.processor_problems(model, wider)
    assert any("the processor tiles images on the grids" in p for p in family.processor_problems(model, other_family))
    llava = llava_processor(build_tokenizer(), TINY_IMAGE_SIZE, TINY_PATCH_SIZE)
    assert family.processor_problems(model, llava) == [
        "the processor's CLIPImageProcessor does not tile images (no image_grid_pinpoints)"]
    save_model(model, llava, str(tmp_path))  # a checkpoint whose processor is LLaVA-1.5's
    with pytest.raises(CSRError, match="processor does not match the model"):
        load_model(str(tmp_path), family=family.name)


# -- 2. the left-padded prefill ------------------------------------------------------------------------


def test_chat_template_and_encode(built) -> None:
    family, _, _, processor = built
    if family.name == "llava_next":
        assert family.chat_prompt(processor, "Hi.") == "[INST] <image>\nHi. [/INST]"
    else:
        assert family.chat_prompt(processor, "Hi.") == "<|im_start|>user <image>\nHi.<|im_end|><|im_start|>assistant\n"
    inputs = _batch(family, processor)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    # Left-padded: the first prompt, longer in text but with the smaller image, starts with padding.
    assert mask[:, -1].all() and not mask[0, 0] and mask[1].all()
    assert (ids == processor.image_token_id).sum(-1).tolist() == IMAGE_TOKENS
    # [images, crops, C, H, W]: 1 + 2 crops, and 1 + 4 (the first padded with zero crops to 5).
    assert inputs["pixel_values"].shape == (2, 5, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    assert not inputs["pixel_values"][0, 3:].any()
    assert inputs["image_sizes"].tolist() == [[30, 40], [64, 64]]  # (height, width)
    if family.name == "llava_onevision":
        assert inputs["batch_num_images"].tolist() == [1, 1]


def test_prefill_positions_match_own_and_single_forward(built) -> None:
    family, _, model, processor = built
    inputs = _batch(family, processor)
    position, offset = family.prefill_positions(model, inputs)
    assert not offset.any()
    with torch.no_grad():
        explicit = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                         position_ids=position, **_extra(family, model, inputs)).logits[:, -1]
        own = model(**inputs).logits[:, -1]
    torch.testing.assert_close(explicit, own, atol=ATOL, rtol=0)
    for row, (prompt, image) in enumerate(zip(PROMPTS, _images(), strict=True)):
        single = family.encode(processor, [family.chat_prompt(processor, prompt)], [image])
        with torch.no_grad():
            alone = model(**single).logits[0, -1]
        torch.testing.assert_close(explicit[row], alone, atol=ATOL, rtol=0)


@pytest.mark.parametrize("built", ["llava_next"], indirect=True)  # OneVision's Qwen2 has no window
def test_next_sliding_window_bites(built) -> None:
    """Every Mistral layer attends within the window: the mask is built from text_config.sliding_window
    on each call, so widening it changes the logits of a prompt longer than the window."""
    family, _, model, processor = built
    inputs = _batch(family, processor)
    assert inputs["attention_mask"].sum(-1).min() > TINY_SLIDING_WINDOW
    text_config = model.config.text_config
    with torch.no_grad():
        windowed = model(**inputs).logits[:, -1]
        text_config.sliding_window = 10**4
        try:
            unwindowed = model(**inputs).logits[:, -1]
        finally:
            text_config.sliding_window = TINY_SLIDING_WINDOW
    assert (windowed - unwindowed).abs().max() > 1e-3


# -- 3. cached decoding as the engine does it ----------------------------------------------------------


def _decode(family, model, inputs: dict[str, torch.Tensor], steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy tokens [B, steps] and the logits that chose them [B, steps, V]: a prefill with explicit
    positions, then one token at a time with positions from real-token counts."""
    mask = inputs["attention_mask"]
    position, offset = family.prefill_positions(model, inputs)
    with torch.no_grad():
        out = model(input_ids=inputs["input_ids"], attention_mask=mask, position_ids=position, **cache_kwargs(DynamicCache()),
                    use_cache=True, **_extra(family, model, inputs))
        tokens, logits = [], [out.logits[:, -1]]
        for _ in range(steps):
            # Never the image token, as csr's decoder (search.decode suppress_ids): an uncached forward
            # over a written image token would look for one more image's features.
            tokens.append(logits[-1].index_fill(-1, torch.tensor([model.config.image_token_id]), float("-inf")).argmax(-1))
            real = mask.sum(-1)  # real tokens before the new one
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out = model(input_ids=tokens[-1][:, None], attention_mask=mask, **cache_kwargs(cache_of(out)), use_cache=True,
                        position_ids=family.decode_positions(real[:, None], offset))
            logits.append(out.logits[:, -1])
    return torch.stack(tokens, 1), torch.stack(logits[:-1], 1)


def test_cached_decode_matches_generate_and_uncached(built) -> None:
    family, _, model, processor = built
    inputs = _batch(family, processor)
    steps = 8
    tokens, logits = _decode(family, model, inputs, steps)
    # min_new_tokens keeps generate from stopping: it would pick another token where ours is an end token.
    assert not set(tokens.flatten().tolist()) & family.end_token_ids(processor, model)
    width = inputs["input_ids"].shape[1]
    with torch.no_grad():
        generated = model.generate(**inputs, do_sample=False, max_new_tokens=steps, min_new_tokens=steps,
                                   suppress_tokens=[model.config.image_token_id])
    assert torch.equal(generated[:, width:], tokens)
    ids = torch.cat([inputs["input_ids"], tokens], dim=1)
    mask = torch.cat([inputs["attention_mask"], torch.ones_like(tokens)], dim=1)
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                     **_extra(family, model, inputs)).logits
    torch.testing.assert_close(logits, full[:, width - 1 : -1], atol=ATOL, rtol=0)


# -- 4, 5, 6. LoRA targets, end tokens, prompt lengths -------------------------------------------------


def test_lora_targets_are_the_language_models_linears(built) -> None:
    family, _, model, _ = built
    pattern = family.lora_targets()
    matched = {name for name, _ in model.named_modules() if re.fullmatch(pattern, name)}
    wanted = {name for name, _ in model.named_modules()
              if name.startswith("model.language_model.layers.") and re.search(rf"\.{LINEAR}$", name)}
    assert matched == wanted and len(wanted) == 2 * 7
    assert not any(("vision_tower" in n) or ("projector" in n) or ("lm_head" in n) for n in matched)


def test_end_tokens(built) -> None:
    family, _, model, processor = built
    tokenizer = processor.tokenizer
    turn_end = tokenizer.convert_tokens_to_ids(family.turn_end)
    assert {turn_end, tokenizer.eos_token_id} <= family.end_token_ids(processor, model)
    answer = "A red square."
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi."}]},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    text = processor.apply_chat_template(chat)
    # The token that starts where the answer's text ends (NeXT's answer follows a space: its first
    # token differs from the answer tokenized alone, so it is located by characters).
    end = text.index(answer) + len(answer)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    after = next(i for i, (start, _) in enumerate(encoded["offset_mapping"]) if start == end)
    assert encoded["input_ids"][after] == family.answer_end_id(processor) == turn_end


def test_prompt_length_is_the_real_length(built) -> None:
    family, _, _, processor = built
    lengths = []
    for image in _images():
        # The image inside the message: how every transformers release csr supports takes it.
        chat = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": PROMPTS[0]}]}]
        real = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        lengths.append(family.prompt_length(processor, PROMPTS[0], image))
        assert lengths[-1] == len(real[0])
    assert lengths[1] - lengths[0] == IMAGE_TOKENS[1] - IMAGE_TOKENS[0]


# -- 7, 8. precomputed image features and DPO's collation ----------------------------------------------


@pytest.mark.skipif(not PRECOMPUTED_FEATURES, reason="this transformers has no mm_encoder_outputs: csr runs the tower "
                    "per row there (csr/models/compat.py, tests/test_compat.py)")
def test_precomputed_features_give_the_same_logits(built) -> None:
    family, _, model, processor = built
    inputs = _batch(family, processor)
    text = {key: inputs[key] for key in ("input_ids", "attention_mask", *family.token_keys)}
    with torch.no_grad():
        features = model.get_image_features(**family.image_inputs(inputs, model.dtype))
        reference = model(**inputs).logits
        # Per-image features of different lengths, as a list (the forward concatenates them).
        reused = model(**text, mm_encoder_outputs={"image": BaseModelOutputWithPooling(
            pooler_output=feature_list(features))}).logits
        # DPO's chosen and rejected rows share each pair's features: both halves see them again.
        doubled = {key: torch.cat([value, value]) for key, value in text.items()}
        twice = model(**doubled, mm_encoder_outputs={"image": BaseModelOutputWithPooling(
            pooler_output=feature_list(features) * 2)}).logits
    hidden = model.config.text_config.hidden_size
    assert [tuple(f.shape) for f in features.pooler_output] == [(n, hidden) for n in IMAGE_TOKENS]
    torch.testing.assert_close(reused, reference, atol=ATOL, rtol=0)
    torch.testing.assert_close(twice, torch.cat([reference, reference]), atol=ATOL, rtol=0)


def test_collated_images_match_one_processor_call(built) -> None:
    family, _, model, processor = built
    inputs = _batch(family, processor)
    alone = [family.encode(processor, [family.chat_prompt(processor, p)], [image])
             for p, image in zip(PROMPTS, _images(), strict=True)]
    collated = {key: concat_padded([a[key] for a in alone]) for key in family.image_keys}
    for key in family.image_keys:  # crops zero-padded to the batch's most, as the processor pads them
        torch.testing.assert_close(collated[key], inputs[key], atol=0, rtol=0)
    with torch.no_grad():
        ours = model(**{**inputs, **collated}).logits
        reference = model(**inputs).logits
    torch.testing.assert_close(ours, reference, atol=ATOL, rtol=0)
