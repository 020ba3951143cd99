"""The Gemma 3 family: its tiny checkpoint, and what the search, DPO and merge rely on it to do."""

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
from csr.models.families.gemma3 import TINY_IMAGE_SIZE, TINY_SLIDING_WINDOW, build_tokenizer, make_processor
from csr.models.families.llava import make_processor as llava_processor
from csr.models.tiny import build_tokenizer as llava_tokenizer

FAMILY = get_family("gemma3")
PROMPTS = ["Describe the image in detail.", "What is it?"]  # of different lengths
ATOL = 1e-5


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("gemma3")
    FAMILY.build_tiny(str(out), seed=0)
    return str(out)


@pytest.fixture(scope="module")
def gemma3(checkpoint: str):
    return load_model(checkpoint, family="gemma3", dtype="float32")


def _images() -> list[Image.Image]:
    """Two images of different sizes and colours (the processor resizes both to one crop)."""
    return [Image.new("RGB", (40, 30), (255, 0, 0)), Image.new("RGB", (64, 64), (0, 0, 255))]


def _batch(processor) -> dict[str, torch.Tensor]:
    return FAMILY.encode(processor, [FAMILY.chat_prompt(processor, p) for p in PROMPTS], _images())


def _extra(model, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What the engine's prefill passes besides ids, mask and positions."""
    return {**FAMILY.image_inputs(inputs, model.dtype), **{key: inputs[key] for key in FAMILY.token_keys}}


# -- 1. checkpoint round trip, processor checks --------------------------------------------------------


def test_round_trip_and_config(checkpoint: str, gemma3, tmp_path: Path) -> None:
    model, processor = gemma3
    assert FAMILY.processor_problems(model, processor) == []
    text = model.config.text_config
    assert set(text.layer_types) == {"sliding_attention", "full_attention"}
    assert text.num_key_value_heads < text.num_attention_heads  # grouped-query attention
    assert text.max_position_embeddings >= 2048
    assert processor.image_processor.size == {"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}
    # Same seed, same weights.
    FAMILY.build_tiny(str(tmp_path), seed=0)
    first, again = load_file(f"{checkpoint}/model.safetensors"), load_file(f"{tmp_path}/model.safetensors")
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)


def test_wrong_processor_is_refused(gemma3, tmp_path: Path) -> None:
    model, _ = gemma3
    nine = make_processor(build_tokenizer(), TINY_IMAGE_SIZE, 9)
    assert FAMILY.processor_problems(model, nine) == [
        "the processor writes 9 image tokens per image, the model makes 4 features"]
    wider = make_processor(build_tokenizer(), 48, 4)
    assert "the vision tower expects 32px" in " ".join(FAMILY.processor_problems(model, wider))
    llava = llava_processor(llava_tokenizer(), 32, 8)
    assert any("image soft token id is None" in p for p in FAMILY.processor_problems(model, llava))
    save_model(model, llava, str(tmp_path))  # a checkpoint whose processor is another family's
    with pytest.raises(CSRError, match="processor does not match the model"):
        load_model(str(tmp_path), family="gemma3")


# -- 2. the left-padded prefill ------------------------------------------------------------------------


def test_chat_template_and_encode(gemma3) -> None:
    _, processor = gemma3
    tokenizer = processor.tokenizer
    assert FAMILY.chat_prompt(processor, "Hi.") == (
        "<bos><start_of_turn>user\n<start_of_image>Hi.<end_of_turn>\n<start_of_turn>model\n")
    inputs = _batch(processor)
    ids, mask, types = inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"]
    assert mask[:, -1].all() and not mask[1, 0]  # left-padded: the shorter prompt starts with padding
    assert ((ids == tokenizer.bos_token_id).sum(-1) == 1).all()  # the template's <bos> only
    soft = ids == tokenizer.image_token_id
    assert torch.equal(types == 1, soft) and (soft.sum(-1) == 4).all()
    assert inputs["pixel_values"].shape == (2, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)


def test_prefill_positions_match_own_and_single_forward(gemma3) -> None:
    model, processor = gemma3
    inputs = _batch(processor)
    position, offset = FAMILY.prefill_positions(model, inputs)
    assert not offset.any()
    with torch.no_grad():
        explicit = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                         position_ids=position, **_extra(model, inputs)).logits[:, -1]
        own = model(**inputs).logits[:, -1]
        # Without token types the image tokens attend causally: a different model, so they are needed.
        causal = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                       pixel_values=inputs["pixel_values"], position_ids=position).logits[:, -1]
    torch.testing.assert_close(explicit, own, atol=ATOL, rtol=0)
    assert (explicit - causal).abs().max() > 1e-3
    text_config = model.config.text_config
    text_config.sliding_window = 10**4  # the masks read it per call: the sliding layer now sees all
    try:
        with torch.no_grad():
            unwindowed = model(**inputs).logits[:, -1]
    finally:
        text_config.sliding_window = TINY_SLIDING_WINDOW
    assert (own - unwindowed).abs().max() > 1e-3  # the window bites within a prompt
    for row, (prompt, image) in enumerate(zip(PROMPTS, _images(), strict=True)):
        single = FAMILY.encode(processor, [FAMILY.chat_prompt(processor, prompt)], [image])
        with torch.no_grad():
            alone = model(**single).logits[0, -1]
        torch.testing.assert_close(explicit[row], alone, atol=ATOL, rtol=0)


# -- 3. cached decoding as the engine does it ----------------------------------------------------------


def _decode(model, inputs: dict[str, torch.Tensor], steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy tokens [B, steps] and the logits that chose them [B, steps, V]: a prefill with explicit
    positions and token types, then one token at a time with positions from real-token counts and no
    token types (text tokens attend causally)."""
    mask = inputs["attention_mask"]
    position, offset = FAMILY.prefill_positions(model, inputs)
    with torch.no_grad():
        out = model(input_ids=inputs["input_ids"], attention_mask=mask, position_ids=position, **cache_kwargs(DynamicCache()),
                    use_cache=True, **_extra(model, inputs))
        tokens, logits = [], [out.logits[:, -1]]
        for _ in range(steps):
            tokens.append(logits[-1].argmax(-1))
            real = mask.sum(-1)  # real tokens before the new one
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out = model(input_ids=tokens[-1][:, None], attention_mask=mask, **cache_kwargs(cache_of(out)), use_cache=True,
                        position_ids=FAMILY.decode_positions(real[:, None], offset))
            logits.append(out.logits[:, -1])
    return torch.stack(tokens, 1), torch.stack(logits[:-1], 1)


def test_cached_decode_matches_generate_and_uncached(gemma3) -> None:
    model, processor = gemma3
    inputs = _batch(processor)
    steps = 8
    tokens, logits = _decode(model, inputs, steps)
    width = inputs["input_ids"].shape[1]
    # Longer than the sliding window: the sliding layer must drop the prompt's start while decoding.
    assert width > TINY_SLIDING_WINDOW
    with torch.no_grad():
        generated = model.generate(**inputs, do_sample=False, max_new_tokens=steps, min_new_tokens=steps)
    assert torch.equal(generated[:, width:], tokens)
    ids = torch.cat([inputs["input_ids"], tokens], dim=1)
    mask = torch.cat([inputs["attention_mask"], torch.ones_like(tokens)], dim=1)
    types = torch.cat([inputs["token_type_ids"], torch.zeros_like(tokens)], dim=1)
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, token_type_ids=types, pixel_values=inputs["pixel_values"],
                     position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    torch.testing.assert_close(logits, full[:, width - 1 : -1], atol=ATOL, rtol=0)


# -- 4, 5, 6. LoRA targets, end tokens, prompt lengths -------------------------------------------------


def test_lora_targets_are_the_language_models_linears(gemma3) -> None:
    model, _ = gemma3
    pattern = FAMILY.lora_targets()
    matched = {name for name, _ in model.named_modules() if re.fullmatch(pattern, name)}
    wanted = {name for name, _ in model.named_modules()
              if name.startswith("model.language_model.layers.") and re.search(rf"\.{LINEAR}$", name)}
    assert matched == wanted and len(wanted) == 2 * 7
    assert not any(("vision_tower" in n) or ("projector" in n) or ("lm_head" in n) for n in matched)


def test_end_tokens(gemma3) -> None:
    model, processor = gemma3
    tokenizer = processor.tokenizer
    turn_end = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    assert turn_end in FAMILY.end_token_ids(processor, model)
    assert tokenizer.eos_token_id in FAMILY.end_token_ids(processor, model)
    answer = "A red square."
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi."}]},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    ids = tokenizer(processor.apply_chat_template(chat), add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    start = next(i for i in range(len(ids)) if ids[i : i + len(answer_ids)] == answer_ids)
    assert ids[start + len(answer_ids)] == FAMILY.answer_end_id(processor) == turn_end


def test_prompt_length_is_the_real_length(gemma3) -> None:
    _, processor = gemma3
    for image in _images():
        # The image inside the message: how every transformers release csr supports takes it.
        chat = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": PROMPTS[0]}]}]
        real = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        assert FAMILY.prompt_length(processor, PROMPTS[0], image) == len(real[0])


# -- 7, 8. precomputed image features and DPO's collation ----------------------------------------------


@pytest.mark.skipif(not PRECOMPUTED_FEATURES, reason="this transformers has no mm_encoder_outputs: csr runs the tower "
                    "per row there (csr/models/compat.py, tests/test_compat.py)")
def test_precomputed_features_give_the_same_logits(gemma3) -> None:
    model, processor = gemma3
    inputs = _batch(processor)
    text = {key: inputs[key] for key in ("input_ids", "attention_mask", *FAMILY.token_keys)}
    with torch.no_grad():
        features = model.get_image_features(**FAMILY.image_inputs(inputs, model.dtype))
        reference = model(**inputs).logits
        # Gemma 3's forward wants the features as one tensor [images, tokens, hidden], not a list.
        reused = model(**text, mm_encoder_outputs={"image": BaseModelOutputWithPooling(
            pooler_output=torch.cat(feature_list(features)))}).logits
        # DPO's chosen and rejected rows share each pair's features: both halves see them again.
        doubled = {key: torch.cat([value, value]) for key, value in text.items()}
        twice = model(**doubled, mm_encoder_outputs={"image": BaseModelOutputWithPooling(
            pooler_output=torch.cat(feature_list(features) * 2))}).logits
    assert features.pooler_output.shape == (2, 4, model.config.text_config.hidden_size)
    torch.testing.assert_close(reused, reference, atol=ATOL, rtol=0)
    torch.testing.assert_close(twice, torch.cat([reference, reference]), atol=ATOL, rtol=0)


def test_collated_images_match_one_processor_call(gemma3) -> None:
    model, processor = gemma3
    inputs = _batch(processor)
    alone = [FAMILY.encode(processor, [FAMILY.chat_prompt(processor, p)], [image])
             for p, image in zip(PROMPTS, _images(), strict=True)]
    collated = {key: concat_padded([a[key] for a in alone]) for key in FAMILY.image_keys}
    torch.testing.assert_close(collated["pixel_values"], inputs["pixel_values"], atol=0, rtol=0)
    with torch.no_grad():
        ours = model(**{**inputs, **collated}).logits
        reference = model(**inputs).logits
    torch.testing.assert_close(ours, reference, atol=ATOL, rtol=0)
