"""`csr-plan`: the predicted peak memory per device of search, reward, reference pass, DPO and eval.

    csr-plan                                           # the default config (ShapesWorld)
    csr-plan experiment=paper_llava15_7b --devices 1,2,8 --gpu-gib 80

Takes the same Hydra overrides as `csr`. The model's dimensions come from model.path's config.json
(through transformers' config classes, so unset keys get the library's defaults; no weights are
read), or, for the paper presets whose checkpoints are not on this machine, from the public
LLaVA-1.5 configs below. The arithmetic is csr/plan.py's.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from csr import plan as P
from csr.models.families import get_family

# llava-hf/llava-1.5-{7b,13b}-hf's config.json: Vicuna-1.5 (vocab 32064 with <image> and <pad>) and
# CLIP ViT-L/14-336 (24 layers, LLaVA takes the features of layer -2, 576 patch tokens, no CLS).
VIT_L14_336 = P.ViTDims(image_size=336, patch_size=14, width=1024, layers=24, mlp=4096)
PUBLIC = {
    "llava15_7b": P.LlavaDims(P.LMDims(vocab=32064, hidden=4096, intermediate=11008, layers=32, heads=32,
                                       kv_heads=32, head_dim=128), VIT_L14_336, image_tokens=576),
    "llava15_13b": P.LlavaDims(P.LMDims(vocab=32064, hidden=5120, intermediate=13824, layers=40, heads=40,
                                        kv_heads=40, head_dim=128), VIT_L14_336, image_tokens=576),
}
PUBLIC_PATHS = {"llava-hf/llava-1.5-7b-hf": "llava15_7b", "llava-hf/llava-1.5-13b-hf": "llava15_13b"}
# What DPO and the reference pass do (csr/dpo/data.py answer_positions): the LM head and log-softmax
# only at answer positions; --no-answer-logits plans them over every position (image, prompt too).
ANSWER_LOGITS_DEFAULT = True
OVERHEAD_GIB = 1.0  # CUDA context (~0.5 GiB) and allocator fragmentation, added before "fits"


def llava_dims(config) -> P.LlavaDims:
    """From a transformers LlavaConfig (any object with its attributes)."""
    t, v = config.text_config, config.vision_config
    heads = t.num_attention_heads
    head_dim = getattr(t, "head_dim", None) or t.hidden_size // heads
    lm = P.LMDims(vocab=t.vocab_size, hidden=t.hidden_size, intermediate=t.intermediate_size,
                  layers=t.num_hidden_layers, heads=heads, kv_heads=getattr(t, "num_key_value_heads", None) or heads,
                  head_dim=head_dim, tied=bool(getattr(config, "tie_word_embeddings", False)),
                  attention_bias=bool(getattr(t, "attention_bias", False)), mlp_bias=bool(getattr(t, "mlp_bias", False)))
    vision = P.ViTDims(image_size=v.image_size, patch_size=v.patch_size, width=v.hidden_size, layers=v.num_hidden_layers,
                       mlp=v.intermediate_size)
    full = getattr(config, "vision_feature_select_strategy", "default") == "full"
    return P.LlavaDims(lm, vision, image_tokens=vision.patches + full)


def model_dims(path: str, name: str) -> tuple[P.LlavaDims, str]:
    """(dims, where they came from): the checkpoint's config if it is here, else the public table."""
    from transformers import AutoConfig

    try:
        return llava_dims(AutoConfig.from_pretrained(path, local_files_only=True)), f"{path}/config.json"
    except OSError:
        key = PUBLIC_PATHS.get(path, name)
        if key not in PUBLIC:
            raise SystemExit(f"csr-plan: model.path={path!r} has no config.json here and {name!r} is not one of "
                             f"the built-in public configs {sorted(PUBLIC)}") from None
        return PUBLIC[key], f"the public {key} config (built in; {path} is not on this machine)"


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


def training(cfg: DictConfig, devices: int, answer_logits: bool) -> P.Training:
    t, dpo = cfg.trainer, cfg.dpo
    strategy = "ddp" if devices > 1 else "single"
    if t.strategy == "deepspeed":
        zero = (t.deepspeed or {}).get("zero_optimization", {})
        strategy = {2: "zero2", 3: "zero3"}.get(int(zero.get("stage", 2)), "zero2")
        if strategy == "zero3" and "offload_optimizer" in zero:
            strategy = "zero3_offload"
    bucket = int(((t.deepspeed or {}).get("zero_optimization", {}) or {}).get("reduce_bucket_size", 16_777_216))
    targets = dpo.lora.target_modules or get_family(cfg.model.family).lora_targets()
    modules = tuple(m for m in P.LORA_MODULES if m in targets)
    return P.Training(pairs=dpo.batch_size, lora_r=dpo.lora.r, lora_dropout=dpo.lora.dropout > 0, modules=modules,
                      strategy=strategy, devices=devices, reference=dpo.reference,
                      checkpointing=bool(OmegaConf.select(cfg, "dpo.gradient_checkpointing", default=False)),
                      answer_logits=answer_logits, bucket=bucket)


def search_shape(s, answer_tokens: int) -> P.SearchShape:
    return P.SearchShape(prompts_per_batch=s.prompts_per_batch, beam_width=s.beam_width, candidates=s.candidates_per_step,
                         keep_top=s.keep_top, keep_bottom=s.keep_bottom, max_sentences=s.max_sentences,
                         sentence_tokens=s.max_new_tokens_per_sentence,
                         answer_tokens=min(answer_tokens, s.max_answer_tokens),
                         max_batch_rows=s.max_batch_rows, max_batch_tokens=s.max_batch_tokens)


def activation_bytes(cfg: DictConfig) -> int:
    """Model dtype, or bfloat16/float16 under mixed precision (autocast computes in it)."""
    weight = P.DTYPE_BYTES[cfg.model.dtype]
    return min(weight, 2) if str(cfg.trainer.precision).startswith(("bf16", "16")) else weight


def plan(cfg: DictConfig, dims: P.LlavaDims, clip: P.ClipDims, devices: int, prompt_tokens: int,
         answer_tokens: int | None = None, answer_logits: bool = ANSWER_LOGITS_DEFAULT) -> dict[str, dict[str, int]]:
    """Every stage's parts (bytes per device) for one device count. answer_tokens: the longest answer
    expected, in the search (its widths) and in DPO and the reference pass (default
    search.max_answer_tokens, the longest possible)."""
    act, weight = activation_bytes(cfg), P.DTYPE_BYTES[cfg.model.dtype]
    clip_bytes = P.clip_params(clip) * 4  # open_clip builds float32
    answers = answer_tokens if answer_tokens is not None else cfg.search.max_answer_tokens
    search_clip = clip_bytes if cfg.search.prune_by == "calibrated" else 0
    stages = {
        "search": P.search_peak(dims, search_shape(cfg.search, answers), prompt_tokens, act, search_clip),
        "reward": {"clip": clip_bytes},
        "reference": P.reference_peak(dims, cfg.dpo.batch_size, prompt_tokens, answers, act, answer_logits),
        "dpo": P.dpo_peak(dims, training(cfg, devices, answer_logits), prompt_tokens, answers, act),
        "eval": P.eval_peak(dims, cfg.eval.batch_size, prompt_tokens, cfg.eval.max_new_tokens, act, clip_bytes),
    }
    if weight != act:  # weights are stored in model.dtype, computed in the autocast dtype
        for name in ("search", "reference", "eval"):
            stages[name]["weights"] = stages[name]["weights"] // act * weight
    if cfg.dpo.reference != "precomputed":
        stages.pop("reference")  # no separate pass: the reference runs inside the DPO step
    return stages


def compose(overrides: list[str]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    import csr.config  # noqa: F401 - registers the ${asset:} resolver
    from csr.cli import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = hydra_compose("config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # ${hydra:runtime.cwd} in the tiny model's path
    return cfg


def gib(n: int) -> str:
    return f"{n / P.GIB:.2f}"


def render(cfg: DictConfig, device_counts: list[int], gpu_gib: float | None, prompt_tokens: int,
           answer_tokens: int | None, answer_logits: bool) -> str:
    dims, source = model_dims(cfg.model.path, cfg.model.name)
    clip = clip_dims(cfg.reward.clip.arch, cfg.reward.clip.config_json)
    plans = {n: plan(cfg, dims, clip, n, prompt_tokens, answer_tokens, answer_logits) for n in device_counts}
    t = training(cfg, device_counts[0], answer_logits)
    answers = answer_tokens if answer_tokens is not None else cfg.search.max_answer_tokens
    head = [
        f"csr-plan: {cfg.model.name} ({P.llava_params(dims) / 1e9:.3f} B params, {cfg.model.dtype}, "
        f"activations {activation_bytes(cfg)} B) from {source}",
        f"  CLIP {cfg.reward.clip.arch}: {P.clip_params(clip) / 1e6:.1f} M params (float32); "
        f"LoRA r={t.lora_r}: {P.lora_params(dims.lm, t.lora_r, t.modules) / 1e6:.1f} M params; DPO {t.strategy} "
        f"(devices {'/'.join(map(str, device_counts))}), reference {t.reference}, gradient checkpointing "
        f"{'on' if t.checkpointing else 'off'}, log-softmax over {'answer' if answer_logits else 'all'} positions",
        f"  prompt {dims.image_tokens} image + {prompt_tokens} text tokens; answers up to {answers} tokens",
        "",
        "| stage | " + " | ".join(f"{n} device{'s' * (n > 1)} (GiB)" for n in device_counts) + " | parts, GiB (first column) |",
        "|---|" + "---|" * len(device_counts) + "---|",
    ]
    rows = []
    for stage, parts in plans[device_counts[0]].items():
        cells = []
        for n in device_counts:
            value = P.total(plans[n][stage])
            fits = "" if gpu_gib is None else (" ok" if value / P.GIB + OVERHEAD_GIB <= gpu_gib else " **no**")
            cells.append(gib(value) + fits)
        detail = ", ".join(f"{k} {gib(v)}" for k, v in parts.items() if v)
        rows.append(f"| {stage} | " + " | ".join(cells) + f" | {detail} |")
    tail = [] if gpu_gib is None else ["", f"ok: total + {OVERHEAD_GIB:g} GiB (CUDA context, fragmentation) <= {gpu_gib:g} GiB"]
    return "\n".join(head + rows + tail)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="csr-plan", description=__doc__.split("\n")[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for csr")
    parser.add_argument("--devices", default=None, help="device counts to plan for, e.g. 1,2,8 (default trainer.devices)")
    parser.add_argument("--gpu-gib", type=float, default=None, help="memory per device: mark what fits")
    parser.add_argument("--prompt-tokens", type=int, default=64, help="text tokens of a prompt with its chat template")
    parser.add_argument("--answer-tokens", type=int, default=None,
                        help="the longest answer expected, in search and DPO (default search.max_answer_tokens, the cap)")
    parser.add_argument("--answer-logits", action=argparse.BooleanOptionalAction, default=ANSWER_LOGITS_DEFAULT,
                        help="DPO's log-softmax over answer positions only")
    args, rest = parser.parse_known_args(argv)  # overrides may come after the options too
    unknown = [a for a in rest if a.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    cfg = compose([*args.overrides, *rest])
    counts = [int(n) for n in args.devices.split(",")] if args.devices else [max(int(cfg.trainer.devices), 1)]
    print(render(cfg, counts, args.gpu_gib, args.prompt_tokens, args.answer_tokens, args.answer_logits))


if __name__ == "__main__":
    main()
