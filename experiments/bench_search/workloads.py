"""The models, prompts and search shapes the search benchmark runs on (all seeded, all offline)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import open_clip
import torch
from PIL import Image
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from csr.data.images import load_image
from csr.data.prompts import load_prompts
from csr.data.tiny import write_tiny_prompts
from csr.models.checkpoint import load_model, special_token_ids
from csr.models.clip import ClipBundle, load_clip
from csr.models.families.llava import make_processor
from csr.models.tiny import build_tiny, build_tokenizer
from csr.search.decode import DecodeSettings
from csr.search.engine import SearchSettings
from csr.search.stage import delimiter_ids

ASSETS = Path(__file__).resolve().parents[2] / "csr" / "assets" / "shapesworld"
# Built models, prompts and pairs: under .data/ (git-ignored), like the ShapesWorld splits.
CACHE = Path(os.environ.get("CSR_BENCH_DIR", Path(__file__).resolve().parents[2] / ".data" / "bench"))


@dataclass
class Shape:
    """The search's shape (CSR.md section 1); beam b keeps 1 best + (b - 1) worst, so b nodes live on."""

    beam_width: int = 3
    candidates_per_step: int = 5
    max_sentences: int = 3
    max_new_tokens: int = 12
    max_answer_tokens: int = 64
    prompts: int = 4


@dataclass
class Workload:
    name: str
    note: str
    model: torch.nn.Module
    processor: object
    clip: ClipBundle
    prompts: list[str]
    images: list[Image.Image]
    keys: list[str]
    shape: Shape
    family: str = "llava"  # model.family: the engine and the reference go through its adapter

    def with_shape(self, **changes) -> Workload:
        return replace(self, shape=replace(self.shape, **changes))

    def settings(self, max_batch_rows: int = 1024, max_batch_tokens: int = 10**9) -> tuple[SearchSettings, DecodeSettings]:
        s, tok = self.shape, self.processor.tokenizer
        search = SearchSettings(
            beam_width=s.beam_width, candidates_per_step=s.candidates_per_step, keep_top=1,
            keep_bottom=s.beam_width - 1, max_sentences=s.max_sentences, max_answer_tokens=s.max_answer_tokens,
            prune_by="calibrated", lam=0.9, calibration="rank", text_score="mean_logprob",
            max_batch_rows=max_batch_rows, max_batch_tokens=max_batch_tokens,
        )
        decode = DecodeSettings(
            strategy="diverse_greedy", end_ids=frozenset({tok.eos_token_id}), delimiter_ids=delimiter_ids(tok, ["."]),
            suppress_ids=special_token_ids(self.processor), max_new_tokens=s.max_new_tokens, diversity_penalty=3.0,
        )
        return search, decode


def _prompts(prompt_file: Path, image_root: Path, n: int) -> tuple[list[str], list[Image.Image], list[str]]:
    records, _ = load_prompts(str(prompt_file), str(image_root), limit=n)
    return [r.prompt for r in records], [load_image(str(image_root), r.image) for r in records], [r.image for r in records]


def shapesworld(n_prompts: int = 16) -> Workload:
    """(a) The shipped ShapesWorld model, or the `csr-make-tiny` model while the assets are not shipped."""
    if (ASSETS / "llava" / "config.json").exists():
        from csr.worlds.shapesworld.splits import ensure_split

        model, processor = load_model(str(ASSETS / "llava"))
        clip_json = ASSETS / "clip" / "shapesworld-clip.json"
        clip = load_clip("shapesworld-clip", str(ASSETS / "clip" / "shapesworld-clip.safetensors"), str(clip_json))
        split = ensure_split(CACHE / "shapesworld", "csr", n_prompts)
        prompts = _prompts(split / "prompts.json", split / "images", n_prompts)
        name, note = "shapesworld", "shipped ShapesWorld LLaVA + CLIP (csr/assets/shapesworld)"
        shape = Shape(beam_width=3, candidates_per_step=5, max_sentences=4, max_new_tokens=24, max_answer_tokens=96)
    else:
        paths = build_tiny(str(CACHE / "tiny"))
        model, processor = load_model(paths.llava)
        clip = load_clip(paths.clip_arch, paths.clip_weights, paths.clip_config)
        data = CACHE / "tiny_data"
        prompt_file = write_tiny_prompts(data, n=n_prompts)
        prompts = _prompts(prompt_file, data / "images", n_prompts)
        name = "tiny"
        note = "csr-make-tiny model (csr/assets/shapesworld not shipped yet): 2 layers, hidden 64, 16 image tokens"
        shape = Shape(beam_width=3, candidates_per_step=5, max_sentences=4, max_new_tokens=8, max_answer_tokens=64)
    return Workload(name, note, model, processor, clip, *prompts, shape=replace(shape, prompts=n_prompts))


def tiny(n_prompts: int = 8) -> Workload:
    """(t) The `csr-make-tiny` model (2 layers, hidden 64, 16 image tokens): every benchmark's `--tiny` mode,
    which checks that the benchmark runs, in seconds (its figures mean nothing)."""
    paths = build_tiny(str(CACHE / "tiny"))
    model, processor = load_model(paths.llava)
    clip = load_clip(paths.clip_arch, paths.clip_weights, paths.clip_config)
    data = CACHE / "tiny_data"
    prompts = _prompts(write_tiny_prompts(data, n=n_prompts), data / "images", n_prompts)
    shape = Shape(beam_width=3, candidates_per_step=5, max_sentences=4, max_new_tokens=8, max_answer_tokens=64,
                  prompts=min(4, n_prompts))
    return Workload("tiny", "csr-make-tiny model: 2 layers, hidden 64, 16 image tokens", model, processor, clip,
                    *prompts, shape=shape)


# (b) LLaVA-1.5's geometry scaled down: 336 px images, patch 14 -> 576 image tokens, 8 decoder layers.
MID_LLAMA = dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
                 num_key_value_heads=8, max_position_embeddings=2048)
MID_VISION = dict(image_size=336, patch_size=14, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                  num_attention_heads=4, projection_dim=256)
MID_CLIP = {"embed_dim": 256,
            "vision_cfg": {"image_size": 336, "layers": 4, "width": 256, "patch_size": 14},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 256, "heads": 4, "layers": 4}}
# (c) LLaVA-1.5-7B's shapes: Vicuna-7B decoder, CLIP ViT-L/14-336 tower (and the same CLIP for R_I).
L7B_LLAMA = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=32, max_position_embeddings=4096)
L7B_VISION = dict(image_size=336, patch_size=14, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                  num_attention_heads=16, projection_dim=768)


# LLaVA-1.5's vocabulary size (Vicuna's 32000 + image and pad): per-token costs grow with it (the LM head,
# log-softmax, the token choice, and the logits a host-side choice would copy off the device).
VOCAB = 32064


def _tokenizer(vocab: int):
    """The tiny BPE tokenizer padded with plain added tokens ('<w123>') to `vocab` entries, so that a
    random model can write any of them and every sentence still decodes to text."""
    tokenizer = build_tokenizer()
    tokenizer.add_tokens([f"<w{i}>" for i in range(vocab - len(tokenizer))])
    return tokenizer


def _random_llava(llama: dict, vision: dict, seed: int, device: str, dtype: torch.dtype, vocab: int = VOCAB):
    tokenizer = _tokenizer(vocab)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**vision),
        text_config=LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **llama),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), image_seq_length=576,
        vision_feature_select_strategy="default", vision_feature_layer=-2, projector_hidden_act="gelu",
    )
    config.text_config._attn_implementation = config.vision_config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlavaForConditionalGeneration(config).to(dtype).eval()
    processor = make_processor(tokenizer, 336, 14)
    processor.tokenizer.padding_side = "left"
    return model, processor


def _random_clip(name: str, config: dict | None, seed: int, device: str) -> ClipBundle:
    if config is not None:
        path = CACHE / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(config))
        open_clip.add_model_config(str(path))
    torch.manual_seed(seed)
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None, device=device)
    return ClipBundle(model=model.eval(), preprocess=preprocess, tokenizer=open_clip.get_tokenizer(name))


def _tiny_images(n_prompts: int) -> tuple[list[str], list[Image.Image], list[str]]:
    data = CACHE / "tiny_data"
    prompt_file = write_tiny_prompts(data, n=max(n_prompts, 8))
    return _prompts(prompt_file, data / "images", n_prompts)


def mid(n_prompts: int = 4, seed: int = 0) -> Workload:
    """(b) A random-weight LLaVA-shaped model with 576 image tokens, built in memory, float32 on the CPU."""
    model, processor = _random_llava(MID_LLAMA, MID_VISION, seed, "cpu", torch.float32)
    clip = _random_clip("mid-clip", MID_CLIP, seed, "cpu")
    note = (f"random weights; LM 8 layers, hidden 512, vocab {VOCAB}; CLIP-ViT tower 336 px / patch 14 "
            "(576 image tokens, 4 layers, width 256); open_clip ViT of the same shape for R_I")
    # LLaVA-1.5's detailed descriptions run ~100 tokens, ~6 sentences (random weights never write '.', so
    # every sentence runs to its 16-token cap).
    shape = Shape(beam_width=3, candidates_per_step=5, max_sentences=6, max_new_tokens=16, max_answer_tokens=128,
                  prompts=n_prompts)
    return Workload("mid", note, model, processor, clip, *_tiny_images(n_prompts), shape=shape)


# (b') Qwen2.5-VL's geometry scaled down as (b): 672 px images, patch 14, 2x2 merge -> 576 image tokens,
# a window-attention tower, an 8-layer LM with grouped-query attention (7B's 28 query / 4 key heads)
# and multimodal RoPE.
QWEN_MID_TEXT = dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
                     num_key_value_heads=2, max_position_embeddings=4096,
                     rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [8, 12, 12]})
QWEN_MID_VISION = dict(depth=4, hidden_size=256, intermediate_size=1024, num_heads=4, out_hidden_size=512,
                       patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                       fullatt_block_indexes=[3])
QWEN_MID_PIXELS = 672 * 672


def qwen25_mid(n_prompts: int = 4, seed: int = 0) -> Workload:
    """(b') A random-weight Qwen2.5-VL-shaped model with 576 image tokens, float32 on the CPU."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from csr.models.families import get_family
    from csr.models.families.qwen_vl import SPECIAL_TOKENS
    from csr.models.tiny import build_chatml_tokenizer

    tokenizer = build_chatml_tokenizer(SPECIAL_TOKENS)
    tokenizer.add_tokens([f"<w{i}>" for i in range(VOCAB - len(tokenizer))])
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        vision_config=QWEN_MID_VISION,
        text_config=dict(vocab_size=len(tokenizer), bos_token_id=None, eos_token_id=ids("<|im_end|>"),
                         pad_token_id=tokenizer.pad_token_id, **QWEN_MID_TEXT),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
    )
    config.text_config._attn_implementation = config.vision_config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    processor = get_family("qwen2_5_vl").make_processor(tokenizer, min_pixels=QWEN_MID_PIXELS, max_pixels=QWEN_MID_PIXELS)
    for part in (processor.image_processor, processor.video_processor):
        part.patch_size = 14
    processor.tokenizer.padding_side = "left"
    clip = _random_clip("mid-clip", MID_CLIP, seed, "cpu")
    note = (f"random weights; Qwen2.5-VL shape: LM 8 layers, hidden 512, 8 query / 2 key heads, mRoPE, vocab {VOCAB}; "
            "windowed ViT 4 layers, width 256, 672 px / patch 14, 2x2 merge (576 image tokens)")
    shape = Shape(beam_width=3, candidates_per_step=5, max_sentences=6, max_new_tokens=16, max_answer_tokens=128,
                  prompts=n_prompts)
    return Workload("qwen25_mid", note, model, processor, clip, *_tiny_images(n_prompts), shape=shape,
                    family="qwen2_5_vl")


def llava7b(n_prompts: int = 4, seed: int = 0, device: str = "cuda") -> Workload:
    """(c) LLaVA-1.5-7B's shapes with random weights in bfloat16, for a GPU."""
    model, processor = _random_llava(L7B_LLAMA, L7B_VISION, seed, device, torch.bfloat16)
    clip = _random_clip("ViT-L-14-336", None, seed, device)
    note = f"random weights, LLaVA-1.5-7B shapes (Vicuna-7B + ViT-L/14-336, vocab {VOCAB}), bfloat16 on {device}"
    shape = Shape(beam_width=3, candidates_per_step=5, max_sentences=4, max_new_tokens=24, max_answer_tokens=128,
                  prompts=n_prompts)
    return Workload("llava7b", note, model, processor, clip, *_tiny_images(n_prompts), shape=shape)
