"""A config's memory plan: csr/models/memory.py's arithmetic fed with the dimensions of `model.path`'s checkpoint.

The dimensions come from the checkpoint's config.json through transformers' config classes (unset
keys get the library's defaults), or, for presets whose checkpoints are not on this machine, from the
published configs below. The parameter count of a family other than LLaVA-1.5 is that of the model
built from its config on the meta device (no memory, no weights read); an image's prompt tokens follow
the family's processor for an image of `IMAGE_HW`. `csr-plan` prints the plan; `csr` warns at start
when it exceeds the GPU it sees; the merge decides with it where its check runs.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from csr.models import memory as P
from csr.models.families import Family, get_family

# llava-hf/llava-1.5-{7b,13b}-hf's config.json: Vicuna-1.5 (vocab 32064 with <image> and <pad>) and
# CLIP ViT-L/14-336 (24 layers, LLaVA takes the features of layer -2, 576 patch tokens, no CLS).
VIT_L14_336 = P.ViTDims(image_size=336, patch_size=14, width=1024, layers=24, mlp=4096)
PUBLIC = {
    "llava15_7b": P.LlavaDims(P.LMDims(vocab=32064, hidden=4096, intermediate=11008, layers=32, heads=32,
                                       kv_heads=32, head_dim=128), VIT_L14_336, image_tokens=576),
    "llava15_13b": P.LlavaDims(P.LMDims(vocab=32064, hidden=5120, intermediate=13824, layers=40, heads=40,
                                        kv_heads=40, head_dim=128), VIT_L14_336, image_tokens=576),
}
_QWEN25_VISION = {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16}
_SIGLIP_SO400M = {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27, "num_attention_heads": 16}
# family, and the keys of the published config.json that differ from transformers' defaults (the
# parameter counts they build are the model cards': tests/test_plan.py).
PUBLIC_CONFIGS = {
    "qwen2_5_vl_3b": ("qwen2_5_vl", {
        "tie_word_embeddings": True, "vocab_size": 151936,
        "text_config": {"hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36, "num_attention_heads": 16,
                        "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True},
        "vision_config": {**_QWEN25_VISION, "out_hidden_size": 2048}}),
    "qwen2_5_vl_7b": ("qwen2_5_vl", {
        "tie_word_embeddings": False, "vocab_size": 152064,
        "text_config": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
                        "num_key_value_heads": 4, "vocab_size": 152064},
        "vision_config": {**_QWEN25_VISION, "out_hidden_size": 3584}}),
    "qwen2_vl_7b": ("qwen2_vl", {
        "tie_word_embeddings": False, "vocab_size": 152064,
        "text_config": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
                        "num_key_value_heads": 4, "vocab_size": 152064},
        "vision_config": {"depth": 32, "embed_dim": 1280, "hidden_size": 3584, "mlp_ratio": 4, "num_heads": 16}}),
    "qwen3_vl_8b": ("qwen3_vl", {
        "tie_word_embeddings": False,
        "text_config": {"hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36, "num_attention_heads": 32,
                        "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936},
        "vision_config": {"depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "num_heads": 16, "out_hidden_size": 4096,
                          "patch_size": 16, "num_position_embeddings": 2304, "deepstack_visual_indexes": [8, 16, 24]}}),
    "gemma3_4b": ("gemma3", {
        "mm_tokens_per_image": 256,
        "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "num_hidden_layers": 34, "num_attention_heads": 8,
                        "num_key_value_heads": 4, "head_dim": 256, "vocab_size": 262208, "sliding_window": 1024},
        "vision_config": {**_SIGLIP_SO400M, "image_size": 896, "patch_size": 14, "vision_use_head": False}}),
    "gemma3_12b": ("gemma3", {
        "mm_tokens_per_image": 256,
        "text_config": {"hidden_size": 3840, "intermediate_size": 15360, "num_hidden_layers": 48, "num_attention_heads": 16,
                        "num_key_value_heads": 8, "head_dim": 256, "vocab_size": 262208, "sliding_window": 1024},
        "vision_config": {**_SIGLIP_SO400M, "image_size": 896, "patch_size": 14, "vision_use_head": False}}),
    "idefics3_8b": ("idefics3", {
        "scale_factor": 2, "tie_word_embeddings": False,
        "text_config": {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128259},
        "vision_config": {**_SIGLIP_SO400M, "image_size": 364, "patch_size": 14}}),
    "smolvlm_2b": ("smolvlm", {
        "scale_factor": 3, "tie_word_embeddings": False,
        "text_config": {"model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24,
                        "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 49155},
        "vision_config": {**_SIGLIP_SO400M, "image_size": 384, "patch_size": 14}}),
    "llava_next_7b": ("llava_next", {
        "text_config": {"model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32064}}),
    "llava_onevision_7b": ("llava_onevision", {
        "text_config": {"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                        "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152128},
        "vision_config": {**_SIGLIP_SO400M, "num_hidden_layers": 26, "image_size": 384, "patch_size": 14,
                          "vision_use_head": False}}),
}
PUBLIC_PATHS = {"llava-hf/llava-1.5-7b-hf": "llava15_7b", "llava-hf/llava-1.5-13b-hf": "llava15_13b",
                "Qwen/Qwen2.5-VL-3B-Instruct": "qwen2_5_vl_3b", "Qwen/Qwen2.5-VL-7B-Instruct": "qwen2_5_vl_7b",
                "Qwen/Qwen2-VL-7B-Instruct": "qwen2_vl_7b", "Qwen/Qwen3-VL-8B-Instruct": "qwen3_vl_8b",
                "google/gemma-3-4b-it": "gemma3_4b", "google/gemma-3-12b-it": "gemma3_12b",
                "HuggingFaceM4/Idefics3-8B-Llama3": "idefics3_8b", "HuggingFaceTB/SmolVLM-Instruct": "smolvlm_2b",
                "llava-hf/llava-v1.6-mistral-7b-hf": "llava_next_7b",
                "llava-hf/llava-onevision-qwen2-7b-ov-hf": "llava_onevision_7b"}
# The image an image's tokens are counted for: (height, width), COCO's most common size.
IMAGE_HW = (480, 640)
# Processor settings of the published checkpoints that the model config does not carry.
QWEN_PIXELS = {"qwen2_vl": (3136, 12845056), "qwen2_5_vl": (3136, 12845056), "qwen3_vl": (65536, 16777216)}
TILES_LONGEST_EDGE = {"idefics3": 4, "smolvlm": 4}  # the image is resized to 4 tiles on its longest edge
# What DPO and the reference pass do (csr/dpo/data.py answer_positions): the LM head and log-softmax
# only at answer positions; --no-answer-logits plans them over every position (image, prompt too).
ANSWER_LOGITS_DEFAULT = True


# --- dimensions -----------------------------------------------------------------------------------


def lm_dims(t, tied: bool) -> P.LMDims:
    """From a transformers text config (any object with its attributes)."""
    heads = t.num_attention_heads
    return P.LMDims(vocab=t.vocab_size, hidden=t.hidden_size, intermediate=t.intermediate_size,
                    layers=t.num_hidden_layers, heads=heads, kv_heads=getattr(t, "num_key_value_heads", None) or heads,
                    head_dim=getattr(t, "head_dim", None) or t.hidden_size // heads, tied=tied,
                    attention_bias=bool(getattr(t, "attention_bias", False)), mlp_bias=bool(getattr(t, "mlp_bias", False)))


def llava_dims(config) -> P.LlavaDims:
    """From a transformers LlavaConfig (any object with its attributes): every count from the dimensions."""
    v = config.vision_config
    vision = P.ViTDims(image_size=v.image_size, patch_size=v.patch_size, width=v.hidden_size, layers=v.num_hidden_layers,
                       mlp=v.intermediate_size)
    full = getattr(config, "vision_feature_select_strategy", "default") == "full"
    lm = lm_dims(config.text_config, bool(getattr(config, "tie_word_embeddings", False)))
    return P.LlavaDims(lm, vision, image_tokens=vision.patches + full)


def anyres_tokens(image_hw: tuple[int, int], best_hw: tuple[int, int], tile: int, side: int, max_tiles: int | None) -> int:
    """LLaVA-NeXT / OneVision: the grid features of an image tiled at `best_hw` (tiles of `tile` px,
    `side` x `side` features each) with the padding rows or columns removed, one newline per row, and
    OneVision's `anyres_max_N` downscale (as the transformers processors count them)."""
    (h, w), rows, cols = image_hw, side * (best_hw[0] // tile), side * (best_hw[1] // tile)
    if w / h > cols / rows:
        rows -= (rows - int(round(h * (cols / w), 7))) // 2 * 2
    else:
        cols -= (cols - int(round(w * (rows / h), 7))) // 2 * 2
    ratio = math.sqrt(rows * cols / (max_tiles * side**2)) if max_tiles else 0
    if ratio > 1.1:
        rows, cols = int(rows // ratio), int(cols // ratio)
    return rows * cols + rows


def processor_settings(path: str) -> dict:
    """The image processor's saved settings in a local checkpoint (processor_config.json, or the older
    preprocessor_config.json), {} when it has none."""
    for name in ("processor_config.json", "preprocessor_config.json"):
        file = Path(path) / name
        if file.is_file():
            saved = json.loads(file.read_text())
            return saved.get("image_processor", saved)
    return {}


def image_tokens(config, family: str, image_hw: tuple[int, int], processor: dict | None = None) -> tuple[int, int]:
    """(prompt tokens of one image, tokens the vision tower runs on for it) as the family's processor
    and model make them for an image of `image_hw`. `processor`: its saved settings (processor_settings);
    missing ones are the published checkpoints'."""
    v, (h, w), processor = config.vision_config, image_hw, processor or {}
    size = processor.get("size") or {}
    if family in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        low = size.get("shortest_edge") or processor.get("min_pixels") or QWEN_PIXELS[family][0]
        high = size.get("longest_edge") or processor.get("max_pixels") or QWEN_PIXELS[family][1]
        factor = v.patch_size * v.spatial_merge_size
        rh, rw = smart_resize(h, w, factor=factor, min_pixels=low, max_pixels=high)
        tokens = (rh // factor) * (rw // factor)
        return tokens, tokens * v.spatial_merge_size**2
    if family == "gemma3":
        return config.mm_tokens_per_image, (v.image_size // v.patch_size) ** 2
    if family in TILES_LONGEST_EDGE:  # tiles of image_size px plus the whole image, pixel-shuffled
        tile = (processor.get("max_image_size") or {}).get("longest_edge") or v.image_size
        scale = (size.get("longest_edge") or TILES_LONGEST_EDGE[family] * tile) / max(h, w)
        tiles = math.ceil(round(h * scale) / tile) * math.ceil(round(w * scale) / tile)
        tiles += tiles > 1
        patches = (v.image_size // v.patch_size) ** 2
        return tiles * patches // config.scale_factor**2, tiles * patches
    if family in ("llava_next", "llava_onevision"):
        from transformers.image_processing_utils import select_best_resolution

        side = v.image_size // v.patch_size
        best = select_best_resolution((h, w), config.image_grid_pinpoints)
        max_tiles = int(config.vision_aspect_ratio.removeprefix("anyres_max_")) if family == "llava_onevision" else None
        tiles = (best[0] // v.image_size) * (best[1] // v.image_size)
        return side**2 + anyres_tokens((h, w), best, v.image_size, side, max_tiles), (tiles + 1) * (side**2 + 1)
    raise ValueError(f"no image token count for family {family!r}")


def built_params(config, family: Family) -> int:
    """Parameters of the family's model built from `config` on the meta device (no memory used)."""
    import torch

    with torch.device("meta"):
        model = family.model_class(config)
    return sum(p.numel() for p in model.parameters())


def dims_from_config(config, family: Family, image_hw: tuple[int, int] = IMAGE_HW,
                     processor: dict | None = None) -> P.LlavaDims:
    """Any family's dimensions from its transformers config (and its processor's saved settings)."""
    if family.name == "llava":
        return llava_dims(config)
    v, t = config.vision_config, config.get_text_config()
    tied = bool(getattr(config, "tie_word_embeddings", False) or getattr(t, "tie_word_embeddings", False))
    prompt_tokens, tower_tokens = image_tokens(config, family.name, image_hw, processor)
    width = getattr(v, "embed_dim", None) or v.hidden_size  # Qwen2-VL names its tower width embed_dim
    layers = getattr(v, "depth", None) or v.num_hidden_layers
    mlp = getattr(v, "intermediate_size", None) or int(width * v.mlp_ratio)
    vision = P.ViTDims(image_size=getattr(v, "image_size", 0) or 0, patch_size=v.patch_size, width=width, layers=layers,
                       mlp=mlp, seq=tower_tokens)
    return P.LlavaDims(lm_dims(t, tied), vision, image_tokens=prompt_tokens, params=built_params(config, family))


def public_config(key: str):
    """The transformers config of built-in published checkpoint `key`, by the class of the family it names."""
    family, values = PUBLIC_CONFIGS[key]
    return get_family(family).model_class.config_class(**values)


def model_dims(path: str, name: str, family: Family, image_hw: tuple[int, int] = IMAGE_HW) -> tuple[P.LlavaDims, str]:
    """(dims, where they came from): the checkpoint's config if it is here, else the published one.
    family: the run's, resolved once by the caller (csr-plan, csr's start check)."""
    from transformers import AutoConfig

    from csr.core.errors import CSRError

    try:
        config, source = AutoConfig.from_pretrained(path, local_files_only=True), f"{path}/config.json"
    except OSError:
        key = PUBLIC_PATHS.get(path, name)
        if key in PUBLIC and family.name == "llava":
            return PUBLIC[key], f"the public {key} config (built in; {path} is not on this machine)"
        if key not in PUBLIC_CONFIGS or PUBLIC_CONFIGS[key][0] != family.name:
            known = sorted(PUBLIC) + sorted(PUBLIC_CONFIGS)
            raise CSRError(f"model.path={path!r} has no config.json here and model.name={name!r} is not one of the "
                           f"built-in public configs {known}") from None
        return dims_from_config(public_config(key), family, image_hw), \
            f"the public {key} config (built in; {path} is not on this machine)"
    return dims_from_config(config, family, image_hw, processor_settings(path)), source


def clip_dims(arch: str, config_json: str | None) -> P.ClipDims:
    """From an open_clip architecture JSON: the given file, or the one open_clip ships under that name."""
    if config_json is None:
        spec = importlib.util.find_spec("open_clip")  # finds the package without importing it
        config_json = str(Path(spec.submodule_search_locations[0]) / "model_configs" / f"{arch}.json")
    c = json.loads(Path(config_json).read_text())
    v, t = c["vision_cfg"], c["text_cfg"]
    vision = P.ViTDims(image_size=v["image_size"], patch_size=v["patch_size"], width=v["width"], layers=v["layers"],
                       mlp=int(v["width"] * v.get("mlp_ratio", 4.0)))
    width = t.get("width", 512)
    return P.ClipDims(embed_dim=c["embed_dim"], vision=vision, context=t.get("context_length", 77),
                      text_vocab=t.get("vocab_size", 49408), text_width=width, text_layers=t.get("layers", 12),
                      text_mlp=int(width * t.get("mlp_ratio", 4.0)))


# --- the config's shapes --------------------------------------------------------------------------


def training(cfg: DictConfig, family: Family, devices: int, answer_logits: bool) -> P.Training:
    t, dpo = cfg.trainer, cfg.dpo
    strategy = "ddp" if devices > 1 else "single"
    if t.strategy == "deepspeed":
        zero = (t.deepspeed or {}).get("zero_optimization", {})
        strategy = {2: "zero2", 3: "zero3"}.get(int(zero.get("stage", 2)), "zero2")
        if strategy == "zero3" and "offload_optimizer" in zero:
            strategy = "zero3_offload"
    bucket = int(((t.deepspeed or {}).get("zero_optimization", {}) or {}).get("reduce_bucket_size", 16_777_216))
    targets = dpo.lora.target_modules or family.lora_targets()
    modules = tuple(m for m in P.LORA_MODULES if m in targets)
    return P.Training(pairs=dpo.batch_size, lora_r=dpo.lora.r, lora_dropout=dpo.lora.dropout > 0, modules=modules,
                      strategy=strategy, devices=devices, reference=dpo.reference,
                      checkpointing=bool(OmegaConf.select(cfg, "dpo.gradient_checkpointing", default=False)),
                      answer_logits=answer_logits, bucket=bucket)


def token_cap(s, dims: P.LlavaDims, act: int) -> int:
    """The decode batch's token cap of search config `s` for this model (csr/search/stage.py's)."""
    kv_gib = OmegaConf.select(s, "max_batch_kv_gib", default=None) if OmegaConf.is_config(s) else s.max_batch_kv_gib
    return P.batch_token_cap(s.max_batch_tokens, kv_gib, P.kv_bytes_per_token(dims.lm, act))


def search_shape(s, answer_tokens: int, max_batch_tokens: int) -> P.SearchShape:
    return P.SearchShape(prompts_per_batch=s.prompts_per_batch, beam_width=s.beam_width, candidates=s.candidates_per_step,
                         keep_top=s.keep_top, keep_bottom=s.keep_bottom, max_sentences=s.max_sentences,
                         sentence_tokens=s.max_new_tokens_per_sentence,
                         answer_tokens=min(answer_tokens, s.max_answer_tokens),
                         max_batch_rows=s.max_batch_rows, max_batch_tokens=max_batch_tokens)


def activation_bytes(cfg: DictConfig) -> int:
    """Model dtype, or bfloat16/float16 under mixed precision (autocast computes in it)."""
    weight = P.DTYPE_BYTES[cfg.model.dtype]
    return min(weight, 2) if str(cfg.trainer.precision).startswith(("bf16", "16")) else weight


def merge_parts(cfg: DictConfig, family: Family, dims: P.LlavaDims, prompt_tokens: int, answers: int,
                answer_logits: bool = ANSWER_LOGITS_DEFAULT) -> tuple[dict[str, int], dict[str, int]]:
    """(host RAM, GPU memory of its check) of the merge stage: csr/merge/stage.py merges on the CPU and runs
    its log-prob check on 4 pairs on the GPU when it fits there with HEADROOM, else on the CPU."""
    t = training(cfg, family, 1, answer_logits)
    lora = P.lora_params(dims.lm, t.lora_r, t.modules)
    rows, length = 2 * P.MERGE_CHECK_PAIRS, dims.image_tokens + prompt_tokens + answers + 1
    positions = rows * (answers + 1) if answer_logits else rows * length
    return P.merge_host(dims, lora), P.merge_check_gpu(dims, lora, rows, length, positions)


def plan(cfg: DictConfig, family: Family, dims: P.LlavaDims, clip: P.ClipDims, devices: int, prompt_tokens: int,
         answer_tokens: int | None = None, answer_logits: bool = ANSWER_LOGITS_DEFAULT) -> dict[str, dict[str, int]]:
    """Every stage's parts (bytes per device) for one device count. answer_tokens: the longest answer
    expected, in the search (its widths) and in DPO and the reference pass (default
    search.max_answer_tokens, the longest possible). The merge's entry is its check on the GPU."""
    act, weight = activation_bytes(cfg), P.DTYPE_BYTES[cfg.model.dtype]
    clip_bytes = P.clip_params(clip) * 4  # open_clip builds float32
    answers = answer_tokens if answer_tokens is not None else cfg.search.max_answer_tokens
    search_clip = clip_bytes if cfg.search.prune_by == "calibrated" else 0
    shape = search_shape(cfg.search, answers, token_cap(cfg.search, dims, act))
    stages = {
        "search": P.search_peak(dims, shape, prompt_tokens, act, search_clip),
        "reward": {"clip": clip_bytes},
        "reference": P.reference_peak(dims, cfg.dpo.batch_size, prompt_tokens, answers, act, answer_logits),
        "dpo": P.dpo_peak(dims, training(cfg, family, devices, answer_logits), prompt_tokens, answers, act),
        "merge": merge_parts(cfg, family, dims, prompt_tokens, answers, answer_logits)[1],
        "eval": P.eval_peak(dims, cfg.eval.batch_size, prompt_tokens, cfg.eval.max_new_tokens, act, clip_bytes),
    }
    if weight != act:  # weights are stored in model.dtype, computed in the autocast dtype
        for name in ("search", "reference", "eval"):
            stages[name]["weights"] = stages[name]["weights"] // act * weight
    if cfg.dpo.reference != "precomputed":
        stages.pop("reference")  # no separate pass: the reference runs inside the DPO step
    return stages
