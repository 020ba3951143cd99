"""Tiny checkpoints go through the same loaders as real ones: load_model / load_clip."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import LlamaConfig, LlamaForCausalLM

from csr.core.errors import CSRError
from csr.models.checkpoint import load_model, save_model, special_token_ids
from csr.models.clip import RANDOM_WEIGHTS, ClipScorer, load_clip
from csr.models.tiny import CLIP_CONFIG, TinyPaths, build_tiny, main

PROMPT = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]
TEXTS = ["There is a red circle in the top left.", "A blue dog.  Two spaces. End.", "Hello, world! x.y"]


@pytest.fixture(scope="module")
def llava(tiny_models: TinyPaths):
    return load_model(tiny_models.llava, dtype="float32")


@pytest.fixture(scope="module")
def clip(tiny_models: TinyPaths):
    return load_clip(tiny_models.clip_arch, tiny_models.clip_weights, tiny_models.clip_config)


def _image(color: tuple[int, int, int] = (255, 0, 0)) -> Image.Image:
    return Image.new("RGB", (40, 50), color)


def test_llava_chat_template_and_forward(llava) -> None:
    model, processor = llava
    assert not model.training
    assert processor.tokenizer.padding_side == "left"
    prompt = processor.apply_chat_template(PROMPT, add_generation_prompt=True)
    assert prompt == "USER: <image>\nDescribe the image. ASSISTANT:"
    assert (
        processor.tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False) == prompt
    )
    batch = processor(images=_image(), text=prompt, return_tensors="pt")
    assert int((batch["input_ids"] == processor.image_token_id).sum()) == 16
    assert batch["input_ids"][0, 0] == processor.tokenizer.bos_token_id
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (1, batch["input_ids"].shape[1], len(processor.tokenizer))
    out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.shape[1] <= batch["input_ids"].shape[1] + 3


def test_tokenizer_lossless_and_period_is_one_token(llava) -> None:
    tokenizer = llava[1].tokenizer
    for text in TEXTS:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids) == text
    period = tokenizer.encode(".", add_special_tokens=False)
    assert len(period) == 1
    assert period[0] in tokenizer.encode("a red circle. The end.", add_special_tokens=False)


def test_special_token_ids(llava) -> None:
    tokenizer = llava[1].tokenizer
    ids = special_token_ids(llava[1])
    assert tokenizer.convert_tokens_to_ids("<image>") in ids
    assert {tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.unk_token_id} <= set(ids)
    assert tokenizer.eos_token_id not in ids


def test_save_model_round_trip(llava, tmp_path: Path) -> None:
    model, processor = llava
    save_model(model, processor, str(tmp_path))
    model2, _ = load_model(str(tmp_path))
    batch = processor(images=_image(), text=processor.apply_chat_template(PROMPT), return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, model2(**batch).logits)


def test_load_model_errors(tmp_path: Path, tiny_models: TinyPaths) -> None:
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(CSRError, match="no-such-model"):
        load_model(missing)
    with pytest.raises(CSRError, match="not-an-org/not-a-model"):
        load_model("not-an-org/not-a-model")
    llama_dir = tmp_path / "llama"
    config = LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    LlamaForCausalLM(config).save_pretrained(llama_dir)
    with pytest.raises(CSRError, match=r"llama.*model_type='llama', which no csr family loads \(families: llava, "
                       r"llava_next, .*gemma3"):
        load_model(str(llama_dir))
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    shutil.copy(os.path.join(tiny_models.llava, "config.json"), config_only)
    with pytest.raises(CSRError, match="incomplete checkpoint"):
        load_model(str(config_only))
    with pytest.raises(CSRError, match="model.dtype"):
        load_model(tiny_models.llava, dtype="float8")


def test_build_tiny_is_idempotent(tiny_models: TinyPaths, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = os.path.dirname(tiny_models.llava)
    weights = os.path.join(tiny_models.llava, "model.safetensors")
    mtime = os.path.getmtime(weights)
    assert build_tiny(out_dir) == tiny_models
    main([out_dir])
    assert json.loads(capsys.readouterr().out)["llava"] == tiny_models.llava
    assert os.path.getmtime(weights) == mtime


def test_load_clip(clip) -> None:
    pixels = clip.preprocess(_image())
    assert pixels.shape == (3, 32, 32)
    tokens = clip.tokenizer(["a red circle"])
    assert tokens.shape == (1, CLIP_CONFIG["text_cfg"]["context_length"])
    assert not clip.model.training


def test_load_clip_errors(tmp_path: Path, tiny_models: TinyPaths) -> None:
    wide = json.loads(json.dumps(CLIP_CONFIG))
    wide["vision_cfg"]["width"] = 96
    wide_json = tmp_path / "tiny-clip-wide.json"
    wide_json.write_text(json.dumps(wide))
    with pytest.raises(CSRError, match="do not match architecture"):
        load_clip("tiny-clip-wide", tiny_models.clip_weights, str(wide_json))
    with pytest.raises(CSRError, match="reward.clip.arch"):
        load_clip("other-name", tiny_models.clip_weights, str(wide_json))
    with pytest.raises(CSRError, match="reward.clip.weights"):
        load_clip(tiny_models.clip_arch, str(tmp_path / "missing.safetensors"), tiny_models.clip_config)
    # null used to build a random CLIP after one warning; now only an explicit "random" does.
    with pytest.raises(CSRError, match=r"reward.clip.weights is null: give a local open_clip weights file"):
        load_clip(tiny_models.clip_arch, None, tiny_models.clip_config)
    random_clip = load_clip(tiny_models.clip_arch, RANDOM_WEIGHTS, tiny_models.clip_config)
    trained = load_clip(tiny_models.clip_arch, tiny_models.clip_weights, tiny_models.clip_config)
    assert random_clip.model.state_dict().keys() == trained.model.state_dict().keys()


def test_clip_scorer_caches_and_scores(clip) -> None:
    scorer = ClipScorer(clip)
    image = _image((0, 0, 255))
    first = scorer.relevance("img-1", image, TEXTS)
    second = scorer.relevance("img-1", image, TEXTS[:1])
    assert scorer.image_encodes == 1
    assert scorer.relevance("img-1", image, []) == []
    assert len(first) == len(TEXTS) and all(score >= 0 for score in first)
    assert second[0] == pytest.approx(first[0], abs=1e-4)

    with torch.no_grad():
        img = clip.model.encode_image(clip.preprocess(image).unsqueeze(0))
        txt = clip.model.encode_text(clip.tokenizer(TEXTS))
    cos = torch.nn.functional.cosine_similarity(txt, img)
    assert first == pytest.approx([max(100 * c, 0.0) for c in cos.tolist()], abs=1e-3)

    scorer.clear_cache()
    scorer.relevance("img-1", image, TEXTS[:1])
    assert scorer.image_encodes == 2
