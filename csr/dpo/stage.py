"""DPO stage: pairs.jsonl + the iteration's starting model -> a LoRA adapter."""

from __future__ import annotations

import copy
import logging
import math
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.precision import DeepSpeedPrecision
from pytorch_lightning.strategies import DeepSpeedStrategy
from torch.utils.data import DataLoader, DistributedSampler

from csr.core.distributed import fit_strategy, predict_strategy
from csr.core.io import read_jsonl
from csr.core.progress import bar_callbacks
from csr.core.signals import StopOnSignal
from csr.dpo.checkpoint import SaveAdapter, trainable_params
from csr.dpo.data import PairDataset, check_images, collate
from csr.dpo.lora import wrap_lora
from csr.dpo.module import DPOModule
from csr.dpo.reference import pair_key, precompute_reference, reference_settings
from csr.models.checkpoint import load_model
from csr.models.families.base import Family
from csr.run.context import StageContext

log = logging.getLogger(__name__)
# What the reference pass takes from DPO's trainer arguments (not its strategy, logger or callbacks;
# the precision goes through reference_trainer_kwargs).
PREDICT_KEYS = ("accelerator", "devices", "num_nodes", "deterministic", "enable_progress_bar")
# The dtype of each 16-bit precision: "-true" plugins convert the module to it (parameters and
# buffers), DeepSpeed's engine casts the parameters to it under "-mixed" too.
HALF_DTYPES = {"bf16-mixed": torch.bfloat16, "bf16-true": torch.bfloat16,
               "16-mixed": torch.float16, "16-true": torch.float16}


def _deepspeed(trainer_kwargs: dict) -> bool:
    return isinstance(trainer_kwargs.get("strategy"), DeepSpeedStrategy) or trainer_kwargs.get("strategy") == "deepspeed"


def reference_precision(trainer_kwargs: dict) -> str:
    """The fit's numerics as the reference cache keys them: its precision, and whether DeepSpeed runs it
    (which computes bf16-mixed as bf16 weights without autocast, not as DDP's autocast)."""
    precision = str(trainer_kwargs.get("precision", "32-true"))  # Lightning's default, named
    return f"deepspeed {precision}" if _deepspeed(trainer_kwargs) else precision


def reference_trainer_kwargs(trainer_kwargs: dict) -> dict:
    """The fit's accelerator, ranks and numerics for the reference pass, with plain DDP over the
    ranks as search uses (inference needs no ZeRO partitioning).

    The numerics are the fit's precision plugin, so the reference computes as the policy's training
    forward does and the log-ratio is 0 at step 0: the plugin Lightning gives the fit's strategy
    (DeepSpeedPrecision under DeepSpeed: no autocast; the MixedPrecision a DDP trainer would get for
    the same precision string autocasts), with the weights cast as DeepSpeed's engine casts them
    (cast_as_fit)."""
    kwargs = {k: trainer_kwargs[k] for k in PREDICT_KEYS if k in trainer_kwargs}
    precision = str(trainer_kwargs.get("precision", "32-true"))
    if _deepspeed(trainer_kwargs):
        kwargs["plugins"] = [DeepSpeedPrecision(precision)]
    else:
        kwargs["precision"] = precision
    ranks = SimpleNamespace(devices=kwargs.get("devices", 1), num_nodes=kwargs.get("num_nodes", 1))
    return {**kwargs, "strategy": predict_strategy(ranks)}


def cast_as_fit(model: torch.nn.Module, trainer_kwargs: dict) -> None:
    """Give `model` the dtypes the fit gives it before its first step, so the reference pass computes
    with the weights the policy trains from (and the fit's own conversion then changes nothing):
    - a "-true" 16-bit precision: its plugin converts the module (parameters and buffers);
    - DeepSpeed with a "-mixed" one: its engine casts every parameter (not the buffers, such as
      rotary frequencies: DeepSpeed 0.19) and computes without autocast.
    DPOModule.on_train_start checks that the fit changed no dtype after this."""
    precision = str(trainer_kwargs.get("precision"))
    dtype = HALF_DTYPES.get(precision)
    if dtype is None:
        return
    if precision.endswith("-true"):
        model.to(dtype=dtype)
    elif _deepspeed(trainer_kwargs):
        for param in model.parameters():
            if param.is_floating_point() and param.dtype != dtype:
                param.data = param.data.to(dtype)


def reference_pass(model: torch.nn.Module, dataset: PairDataset, keys: list[str], *, model_path: str, model_cfg,
                   batch_size: int, trainer_kwargs: dict, cache_path: Path) -> list[tuple[float, float]]:
    """The precomputed reference's log-probs (chosen, rejected) of every pair of `dataset`, float32
    values, computed with the numerics `trainer_kwargs` (the fit's) train with, through the cache
    at `cache_path`. Casts `model` as the fit will (cast_as_fit)."""
    cast_as_fit(model, trainer_kwargs)
    settings = reference_settings(model_path, model_cfg.dtype, model_cfg.attn_implementation,
                                  reference_precision(trainer_kwargs))
    pad_id = dataset.processor.tokenizer.pad_token_id
    return precompute_reference(model, dataset, keys, settings, pad_id, batch_size, cache_path,
                                reference_trainer_kwargs(trainer_kwargs))


def run_dpo(*, model_path: str, family: Family, pairs_path: Path, adapter_dir: Path, image_root: str, model_cfg,
            dpo_cfg, trainer_kwargs: dict, logger) -> dict:
    pairs = read_jsonl(pairs_path)
    if not pairs:
        log.warning("%s holds no pairs: this iteration trains nothing and keeps the model", pairs_path)
        return {"pairs": 0, "steps": 0}
    digests = check_images(pairs, image_root)  # before any model loads: a changed image stops here
    pl.seed_everything(dpo_cfg.seed, workers=True)
    model, processor = load_model(model_path, family, dtype=model_cfg.dtype,
                                  attn_implementation=model_cfg.attn_implementation)
    pad_id = processor.tokenizer.pad_token_id
    ref_model, ref_logps = None, None
    if dpo_cfg.reference == "precomputed":
        ref_logps = reference_pass(model, PairDataset(pairs, processor, image_root, family),
                                   [pair_key(p, d) for p, d in zip(pairs, digests, strict=True)],
                                   model_path=model_path, model_cfg=model_cfg, batch_size=dpo_cfg.batch_size,
                                   trainer_kwargs=trainer_kwargs, cache_path=adapter_dir.parent / "ref_logps.json")
    elif dpo_cfg.reference == "frozen_copy":
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    model.train()
    # Seeded again here: the reference pass's DataLoader draws from the global RNG only when the
    # log-probs were not cached, and LoRA's random init must not depend on that (a resumed or
    # multi-process DPO would otherwise start from other weights).
    pl.seed_everything(dpo_cfg.seed, workers=True, verbose=False)
    if dpo_cfg.gradient_checkpointing:
        # Each decoder layer's activations are recomputed in backward instead of held (-62 % step
        # memory, +72 % step time on experiments/bench_dpo's mid model).
        # Non-reentrant: gradients reach LoRA's weights without the inputs requiring grad.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = dpo_cfg.lora
    targets = lora.target_modules or family.lora_targets()
    policy = wrap_lora(model, lora.r, lora.alpha, lora.dropout, targets, family.projector if dpo_cfg.train_projector else None)
    dataset = PairDataset(pairs, processor, image_root, family, ref_logps)
    kwargs = dict(trainer_kwargs)  # a caller's callbacks (a benchmark's timer) run beside csr's own
    callbacks = [StopOnSignal(), SaveAdapter(policy, adapter_dir), *bar_callbacks(kwargs, "pair batches"),
                 *kwargs.pop("callbacks", [])]
    trainer = pl.Trainer(
        max_epochs=dpo_cfg.epochs, accumulate_grad_batches=dpo_cfg.grad_accumulation,
        gradient_clip_val=dpo_cfg.max_grad_norm, logger=logger if logger is not None else False,
        enable_checkpointing=False, enable_model_summary=False, callbacks=callbacks, **kwargs,
    )
    world_size = trainer.num_devices * trainer.num_nodes  # trainer.world_size is only set once fit starts
    # One pair order for every world size: under DDP Lightning deals out a DistributedSampler seeded
    # with PL_GLOBAL_SEED (= dpo.seed, from seed_everything), rank r taking every world_size-th pair
    # (padded to equal length); one process uses the same sampler with one replica. So N devices at
    # batch b train on the pairs one device sees at batch b * N (or with N-fold accumulation).
    sampler = None if world_size > 1 else DistributedSampler(dataset, num_replicas=1, rank=0, seed=dpo_cfg.seed)
    loader = DataLoader(dataset, batch_size=dpo_cfg.batch_size, shuffle=sampler is None, sampler=sampler,
                        collate_fn=partial(collate, pad_id=pad_id))
    per_rank = math.ceil(math.ceil(len(dataset) / world_size) / dpo_cfg.batch_size)
    steps = math.ceil(per_rank / dpo_cfg.grad_accumulation) * dpo_cfg.epochs
    module = DPOModule(
        policy, dpo_cfg.reference, ref_model, family, beta=dpo_cfg.beta, loss=dpo_cfg.loss,
        label_smoothing=dpo_cfg.label_smoothing, ipo_form=dpo_cfg.ipo_form, lr=dpo_cfg.lr,
        weight_decay=dpo_cfg.weight_decay, scheduler=dpo_cfg.scheduler, warmup_ratio=dpo_cfg.warmup_ratio, total_steps=steps,
    )
    trainer.fit(module, loader)  # SaveAdapter writes adapter_dir at the end of training, before teardown
    # The last step's values as `last/<key>`; the plain keys are the last epoch's means over its pairs.
    metrics = {f"last/{k}": float(v) for k, v in trainer.logged_metrics.items()}
    metrics.update(module.epoch_means)
    trainable = trainable_params(policy)
    return {"pairs": len(pairs), "steps": trainer.global_step, "trainable_params": trainable, **metrics}


def run(ctx: StageContext) -> dict:
    """DPO stage: pairs.jsonl -> adapter/ (LoRA against the iteration's starting model)."""
    ctx.release_policy()  # DPO loads its own trainable copy; free the inference one
    t = ctx.cfg.trainer  # DPO fits under the training strategy; predict calls use plain DDP
    fit_kwargs = {**ctx.trainer_kwargs, "strategy": fit_strategy(t), "log_every_n_steps": t.log_every_n_steps}
    return run_dpo(model_path=ctx.model_path, family=ctx.family, pairs_path=ctx.require("pairs.jsonl"),
                   adapter_dir=ctx.iter_dir / "adapter", image_root=ctx.cfg.data.image_root, model_cfg=ctx.cfg.model,
                   dpo_cfg=ctx.cfg.dpo, trainer_kwargs=fit_kwargs, logger=ctx.logger())
