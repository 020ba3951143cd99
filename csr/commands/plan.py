"""`csr-plan`: the predicted peak memory per device of search, reward, reference pass, DPO, merge and eval.

    csr-plan                                           # the default config (ShapesWorld)
    csr-plan experiment=paper_llava15_7b --devices 1,2,8 --gpu-gib 80

Takes the same Hydra overrides as `csr`. The model's dimensions come from model.path's config.json
(through transformers' config classes, so unset keys get the library's defaults; no weights are
read), or, for the presets whose checkpoints are not on this machine, from the published configs
built into csr/models/planning.py. The arithmetic is csr/models/memory.py's.
"""

from __future__ import annotations

import argparse
import math
import sys

from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from csr.core.errors import CSRError
from csr.models import memory as P
from csr.models.families import Family, get_family
from csr.models.planning import (  # noqa: F401 - PUBLIC, llava_dims, model_dims: csr-plan's readers, used by tests
    ANSWER_LOGITS_DEFAULT,
    IMAGE_HW,
    PUBLIC,
    activation_bytes,
    clip_dims,
    llava_dims,
    merge_parts,
    model_dims,
    plan,
    search_shape,
    token_cap,
    training,
)


def compose(overrides: list[str]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    import csr.config.schema  # noqa: F401 - registers the ${asset:} resolver
    from csr.cli import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = hydra_compose("config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # ${hydra:runtime.cwd} in the tiny model's path
    return cfg


def gib(n: int) -> str:
    return f"{n / P.GIB:.2f}"


def render(cfg: DictConfig, family: Family, device_counts: list[int], gpu_gib: float | None, prompt_tokens: int,
           answer_tokens: int | None, answer_logits: bool, image_hw: tuple[int, int] = IMAGE_HW) -> str:
    dims, source = model_dims(cfg.model.path, cfg.model.name, family, image_hw)
    clip = clip_dims(cfg.reward.clip.arch, cfg.reward.clip.config_json)
    plans = {n: plan(cfg, family, dims, clip, n, prompt_tokens, answer_tokens, answer_logits) for n in device_counts}
    t = training(cfg, family, device_counts[0], answer_logits)
    answers = answer_tokens if answer_tokens is not None else cfg.search.max_answer_tokens
    act = activation_bytes(cfg)
    kv_gib = cfg.search.get("max_batch_kv_gib")
    host, _ = merge_parts(cfg, family, dims, prompt_tokens, answers, answer_logits)
    head = [
        f"csr-plan: {cfg.model.name} ({P.model_params(dims) / 1e9:.3f} B params, {cfg.model.dtype}, "
        f"activations {act} B) from {source}",
        f"  CLIP {cfg.reward.clip.arch}: {P.clip_params(clip) / 1e6:.1f} M params (float32); "
        f"LoRA r={t.lora_r}: {P.lora_params(dims.lm, t.lora_r, t.modules) / 1e6:.1f} M params; DPO {t.strategy} "
        f"(devices {'/'.join(map(str, device_counts))}), reference {t.reference}, gradient checkpointing "
        f"{'on' if t.checkpointing else 'off'}, log-softmax over {'answer' if answer_logits else 'all'} positions",
        f"  prompt {dims.image_tokens} image + {prompt_tokens} text tokens; answers up to {answers} tokens",
        f"  search: KV cache {P.kv_bytes_per_token(dims.lm, act) / 1e3:.1f} KB a token; decode batches of up to "
        f"{token_cap(cfg.search, dims, act)} tokens (search.max_batch_tokens {cfg.search.max_batch_tokens}"
        + (f", search.max_batch_kv_gib {kv_gib:g}" if kv_gib is not None else "") + ")",
        "",
        "| stage | " + " | ".join(f"{n} device{'s' * (n > 1)} (GiB)" for n in device_counts) + " | parts, GiB (first column) |",
        "|---|" + "---|" * len(device_counts) + "---|",
    ]
    rows = []
    for stage, parts in plans[device_counts[0]].items():
        cells = []
        for n in device_counts:
            value = P.total(plans[n][stage])
            mark = "" if gpu_gib is None else " ok" if P.fits(value, gpu_gib * P.GIB) else " cpu" if stage == "merge" else " **no**"
            cells.append(gib(value) + mark)
        detail = ", ".join(f"{k} {gib(v)}" for k, v in parts.items() if v)
        rows.append(f"| {stage} | " + " | ".join(cells) + f" | {detail} |")
    tail = ["", f"merge: host RAM {gib(P.total(host))} GiB on rank 0 (" + ", ".join(f"{k} {gib(v)}" for k, v in host.items())
            + "); its log-prob check runs on the GPU where it fits, else on the CPU"]
    if gpu_gib is not None:
        budget = int((1 - P.HEADROOM) * gpu_gib * P.GIB)
        search_clip = P.clip_params(clip) * 4 if cfg.search.prune_by == "calibrated" else 0
        shape = search_shape(cfg.search, answers, token_cap(cfg.search, dims, act))
        weights = P.model_params(dims) * (P.DTYPE_BYTES[cfg.model.dtype] - act)  # stored in model.dtype, see plan()
        widest = P.widest_search(dims, shape, prompt_tokens, act, search_clip, budget - weights)
        if widest is None:
            tail.append("search: not even one prompt per batch fits")
        else:
            kv = P.kv_bytes_per_token(dims.lm, act) * widest.max_batch_tokens
            tail.append(f"search: the most prompts per batch within {1 - P.HEADROOM:.0%} of {gpu_gib:g} GiB, every live "
                        f"node in one decode batch: search.prompts_per_batch={widest.prompts_per_batch} "
                        f"search.max_batch_rows={widest.max_batch_rows} search.max_batch_kv_gib={math.ceil(kv / P.GIB)}")
        tail.append(f"ok: total <= {1 - P.HEADROOM:.0%} of {gpu_gib:g} GiB (the rest: CUDA context, workspaces, "
                    "fragmentation, the formulas' error); cpu: the merge's check runs on the CPU")
    return "\n".join(head + rows + tail)


def parse_devices(text: str) -> list[int]:
    try:
        counts = [int(n) for n in text.split(",")]
    except ValueError:
        counts = []
    if not counts or any(n < 1 for n in counts):
        raise CSRError(f"--devices {text}: expected device counts >= 1, comma-separated (e.g. 1,2,8)")
    return counts


def parse_image_size(text: str) -> tuple[int, int]:
    """'640x480' (width x height) -> (480, 640)."""
    width, _, height = text.partition("x")
    if not (width.isdigit() and height.isdigit() and int(width) > 0 and int(height) > 0):
        raise CSRError(f"--image-size {text}: expected WIDTHxHEIGHT in pixels, e.g. 640x480")
    return int(height), int(width)


def check_args(args) -> None:
    """Every numeric option in range, or one line naming it (before Hydra composes anything)."""
    for name, value in (("--gpu-gib", args.gpu_gib), ("--prompt-tokens", args.prompt_tokens),
                        ("--answer-tokens", args.answer_tokens)):
        if value is not None and not (math.isfinite(value) and value > 0):  # nan and inf ended in a traceback
            raise CSRError(f"{name} {value:g}: must be > 0")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="csr-plan", description=__doc__.split("\n")[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for csr")
    parser.add_argument("--devices", default=None, help="device counts to plan for, e.g. 1,2,8 (default trainer.devices)")
    parser.add_argument("--gpu-gib", type=float, default=None,
                        help=f"memory per device: mark what fits with {P.HEADROOM:.0%}% of it left free")  # %%: argparse formats help
    parser.add_argument("--prompt-tokens", type=int, default=64, help="text tokens of a prompt with its chat template")
    parser.add_argument("--answer-tokens", type=int, default=None,
                        help="the longest answer expected, in search and DPO (default search.max_answer_tokens, the cap)")
    parser.add_argument("--image-size", default=f"{IMAGE_HW[1]}x{IMAGE_HW[0]}",
                        help="WIDTHxHEIGHT of an image, for the families whose image tokens depend on it")
    parser.add_argument("--answer-logits", action=argparse.BooleanOptionalAction, default=ANSWER_LOGITS_DEFAULT,
                        help="DPO's log-softmax over answer positions only")
    args, rest = parser.parse_known_args(argv)  # overrides may come after the options too
    unknown = [a for a in rest if a.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        check_args(args)
        image_hw = parse_image_size(args.image_size)
        counts = parse_devices(args.devices) if args.devices else None
        cfg = compose([*args.overrides, *rest])
        counts = counts or [max(int(cfg.trainer.devices), 1)]
        family = get_family(cfg.model.family)  # once: every part of the plan is of this family
        print(render(cfg, family, counts, args.gpu_gib, args.prompt_tokens, args.answer_tokens, args.answer_logits, image_hw))
    except (CSRError, HydraException, OmegaConfBaseException) as err:  # a bad option, override or config
        message = " ".join(str(err).split()).split(" Config search path:")[0]  # Hydra lists its search path
        print(f"csr-plan: error: {message}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
