"""DPO stage: pairs.jsonl + the iteration's starting model -> a LoRA adapter."""

from __future__ import annotations

import copy
import logging
import math
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytorch_lightning as pl
from torch.utils.data import DataLoader, DistributedSampler

from csr.context import StageContext
from csr.distributed import fit_strategy, predict_strategy
from csr.dpo.checkpoint import SaveAdapter, trainable_params
from csr.dpo.data import PairDataset, check_images, collate
from csr.dpo.lora import wrap_lora
from csr.dpo.module import DPOModule
from csr.dpo.reference import pair_key, precompute_reference, reference_settings
from csr.io import read_jsonl
from csr.models.checkpoint import load_model
from csr.models.families import get_family
from csr.progress import bar_callbacks
from csr.signals import StopOnSignal

log = logging.getLogger(__name__)
# What the reference pass takes from DPO's trainer arguments (not its strategy, logger or callbacks).
PREDICT_KEYS = ("accelerator", "devices", "num_nodes", "precision", "deterministic", "enable_progress_bar")


def reference_trainer_kwargs(trainer_kwargs: dict) -> dict:
    """The fit's accelerator, ranks and precision for the reference pass, with plain DDP over the
    ranks as search uses (inference needs no ZeRO partitioning)."""
    kwargs = {k: trainer_kwargs[k] for k in PREDICT_KEYS if k in trainer_kwargs}
    kwargs.setdefault("precision", "32-true")  # Lightning's default, named: the cache keys it
    ranks = SimpleNamespace(devices=kwargs.get("devices", 1), num_nodes=kwargs.get("num_nodes", 1))
    return {**kwargs, "strategy": predict_strategy(ranks)}


def run_dpo(*, model_path: str, pairs_path: Path, adapter_dir: Path, image_root: str, model_cfg, dpo_cfg,
            trainer_kwargs: dict, logger) -> dict:
    pairs = read_jsonl(pairs_path)
    if not pairs:
        log.warning("%s holds no pairs: this iteration trains nothing and keeps the model", pairs_path)
        return {"pairs": 0, "steps": 0}
    digests = check_images(pairs, image_root)  # before any model loads: a changed image stops here
    pl.seed_everything(dpo_cfg.seed, workers=True)
    family = get_family(model_cfg.family)
    model, processor = load_model(model_path, family=model_cfg.family, dtype=model_cfg.dtype,
                                  attn_implementation=model_cfg.attn_implementation)
    pad_id = processor.tokenizer.pad_token_id
    ref_model, ref_logps = None, None
    if dpo_cfg.reference == "precomputed":
        dataset = PairDataset(pairs, processor, image_root, family)
        keys = [pair_key(p, d) for p, d in zip(pairs, digests, strict=True)]
        predict_kwargs = reference_trainer_kwargs(trainer_kwargs)
        settings = reference_settings(model_path, model_cfg.dtype, model_cfg.attn_implementation,
                                      predict_kwargs["precision"])
        ref_logps = precompute_reference(model, dataset, keys, settings, pad_id, dpo_cfg.batch_size,
                                         adapter_dir.parent / "ref_logps.json", predict_kwargs)
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
    return run_dpo(model_path=ctx.model_path, pairs_path=ctx.require("pairs.jsonl"), adapter_dir=ctx.iter_dir / "adapter",
                   image_root=ctx.cfg.data.image_root, model_cfg=ctx.cfg.model, dpo_cfg=ctx.cfg.dpo,
                   trainer_kwargs=fit_kwargs, logger=ctx.logger())
