"""Ranks, barriers and the trainer config -> Lightning strategy mapping.

Under `trainer.devices > 1` Lightning's DDP and DeepSpeed strategies start the `csr` command once
per device (rank), and each rank runs the whole loop. The rules that keep the ranks in step:
- every rank takes part in the Lightning calls (search, reward and eval predict; DPO fit);
- only global rank 0 writes shared files (configs, markers, pairs, merged models) and talks to
  MLflow; the others wait at a barrier before they read what rank 0 wrote.
Before the first Lightning call no process group exists and the other ranks have not started
yet, so the barriers are no-ops then.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from omegaconf import OmegaConf
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from csr.errors import CSRError

STRATEGIES = ("auto", "ddp", "deepspeed")


def is_global_zero() -> bool:
    # Lightning sets this from the launcher's environment (LOCAL_RANK, SLURM_PROCID, ...) at import
    # and again when a strategy assigns the ranks.
    return rank_zero_only.rank == 0


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def multi_process(trainer_cfg) -> bool:
    return trainer_cfg.devices != 1 or trainer_cfg.num_nodes > 1


def predict_strategy(trainer_cfg) -> str:
    """Generation, scoring and evaluation shard prompts with plain DDP under every training strategy:
    each rank holds a whole model for inference, and ZeRO partitioning would only add traffic."""
    return "ddp" if multi_process(trainer_cfg) else "auto"


def fit_strategy(trainer_cfg) -> Any:
    """The Lightning strategy DPO trains with: a name Lightning knows, or a DeepSpeedStrategy built
    from the `trainer.deepspeed` JSON config (the ZeRO presets in conf/trainer/)."""
    if trainer_cfg.strategy != "deepspeed":
        return trainer_cfg.strategy
    from pytorch_lightning.strategies import DeepSpeedStrategy

    config = trainer_cfg.deepspeed
    return DeepSpeedStrategy(config=OmegaConf.to_container(config, resolve=True) if OmegaConf.is_config(config) else dict(config))


def check_trainer(trainer_cfg) -> None:
    """Fail at start, with the key's name, on a strategy that cannot run (not at DPO, an hour in)."""
    strategy = trainer_cfg.strategy
    if strategy not in STRATEGIES:
        raise CSRError(f"config key 'trainer.strategy': {strategy!r} is not one of {list(STRATEGIES)}")
    if strategy != "deepspeed":
        if trainer_cfg.deepspeed is not None:
            raise CSRError("config key 'trainer.deepspeed' is set but 'trainer.strategy' is not deepspeed")
        return
    if trainer_cfg.accelerator == "cpu":
        raise CSRError("config key 'trainer.accelerator': Lightning's DeepSpeed strategy runs on CUDA GPUs only "
                       "(use trainer=gpu or trainer=ddp on CPU)")
    if not trainer_cfg.deepspeed or "zero_optimization" not in trainer_cfg.deepspeed:
        raise CSRError("config key 'trainer.deepspeed': strategy=deepspeed needs a DeepSpeed config with a "
                       "zero_optimization section (see conf/trainer/deepspeed_zero2.yaml)")
    if "gradient_accumulation_steps" in trainer_cfg.deepspeed:
        raise CSRError("config key 'trainer.deepspeed.gradient_accumulation_steps': set dpo.grad_accumulation "
                       "instead (Lightning passes it to DeepSpeed)")
    try:
        from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
    except ImportError:
        raise CSRError("trainer.strategy=deepspeed needs DeepSpeed: pip install -e '.[deepspeed]' "
                       "(DS_BUILD_OPS=0 builds no CUDA ops at install time)") from None
    zero = OmegaConf.to_container(trainer_cfg.deepspeed.zero_optimization, resolve=True)
    try:  # DeepSpeed's own schema: an unknown or mistyped ZeRO key fails here
        DeepSpeedZeroConfig(**zero)
    except ValueError as err:
        raise CSRError(f"config key 'trainer.deepspeed.zero_optimization': {err}") from None
    fit_strategy(trainer_cfg)  # Lightning's own argument checks


def gathered_parameters(strategy, params: list[torch.nn.Parameter]):
    """ZeRO-3 keeps a slice of every parameter on each rank: gather the full tensors to save them.
    Every other strategy holds whole parameters already."""
    config = getattr(strategy, "config", None) or {}
    if config.get("zero_optimization", {}).get("stage") != 3:
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
