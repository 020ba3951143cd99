"""Ranks, barriers and the trainer config -> Lightning strategy mapping.

Under `trainer.devices > 1` each rank (one process per device) runs the whole loop. The rules that
keep the ranks in step:
- every rank takes part in the Lightning calls (search, reward and eval predict; DPO fit) and in
  csr's own collectives (`barrier`, `rank_zero_value`), in the same order;
- only global rank 0 writes shared files (configs, markers, pairs, merged models), cleans the run
  directory and talks to MLflow; what the others act on (the batches still to do, whether a stage is
  to run) is rank 0's answer, broadcast: a file rank 0 has just written may not show yet on another
  node, and a rank that decided alone could take other batches than the sampler deals it.
Two ways ranks start:
- srun, torchrun or plain RANK/LOCAL_RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT start every rank at once:
  `start_ranks` joins them in a process group (Lightning's own choice of environment, rank and
  address) before any of them reads the run directory, and Lightning later finds it made;
- Lightning's launcher (one node, `csr` started once) starts the other ranks only inside rank 0's
  first Lightning call: until then rank 0 is alone, the collectives are no-ops, and the others,
  started from the top, read the files rank 0 wrote before that call and nothing it writes later.
"""

from __future__ import annotations

import atexit
import os
import time
from contextlib import nullcontext
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from pytorch_lightning.utilities.rank_zero import rank_zero_only
from torch.distributed.constants import default_pg_timeout

from csr.core.errors import CSRError

STRATEGIES = ("auto", "ddp", "deepspeed")
RANK_ZERO_POLL_S = 2.0  # how often the other ranks look whether rank 0 has finished its stage
T = TypeVar("T")
# csr's own barriers and broadcasts carry Python objects between CPUs: gloo, also beside NCCL.
_coordination: dict[str, Any] = {}


def _joined() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_global_zero() -> bool:
    # Without a process group: Lightning's guess from the launcher's environment (RANK, LOCAL_RANK,
    # SLURM_PROCID, ...) at import, which it sets again when a strategy assigns the ranks.
    return dist.get_rank() == 0 if _joined() else rank_zero_only.rank == 0


def _group():
    """The default group when it is gloo, else a gloo group made on first use (every rank calls
    barrier / rank_zero_value at the same points, so every rank makes it at the same point)."""
    if dist.get_backend() == "gloo":
        return None
    if "gloo" not in _coordination:
        _coordination["gloo"] = dist.new_group(backend="gloo", timeout=default_pg_timeout)
    return _coordination["gloo"]


def barrier() -> None:
    if _joined():
        dist.barrier(group=_group())


def rank_zero_done(name: str) -> None:
    """After a stage only rank 0 runs (pairs, merge): rank 0 says it is done, the others wait for it
    with no deadline. A 13B merge (float32 on the CPU, its check, a 50 GB write) can outlast any
    collective's timeout (30 minutes by default), so the others poll the process group's key-value
    store instead of waiting in a barrier; should rank 0 die, the store's connection fails and they
    stop with it (under torchrun, whose agent holds the store, the agent stops them). Every rank calls
    it at the same points; a no-op without a process group."""
    if not _joined():
        return
    _coordination["waits"] = count = _coordination.get("waits", 0) + 1
    key = f"csr/rank_zero_done/{count}/{name}"
    store = dist.distributed_c10d._get_default_store()
    if dist.get_rank() == 0:
        store.set(key, "1")
        return
    while not store.check([key]):  # check() returns at once; wait() would log every timed-out poll
        time.sleep(RANK_ZERO_POLL_S)


def rank_zero_value(value: T) -> T:
    """Rank 0's `value` on every rank (what the others pass is ignored); a process without a process
    group keeps its own. Every rank must call it: it is also a barrier behind rank 0's work before."""
    if not _joined():
        return value
    box = [value if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0, group=_group())
    return box[0]


def _launcher():
    """The cluster environment of a launcher that starts every rank at once, chosen as Lightning
    chooses it (torchelastic first: torchrun also runs inside SLURM jobs); None for one process and
    under Lightning's own launcher (whose ranks carry LOCAL_RANK but never RANK)."""
    from pytorch_lightning.plugins.environments import (
        LightningEnvironment,
        SLURMEnvironment,
        TorchElasticEnvironment,
    )

    if TorchElasticEnvironment.detect():
        return TorchElasticEnvironment()
    if SLURMEnvironment.detect():
        return SLURMEnvironment()
    if {"RANK", "LOCAL_RANK", "WORLD_SIZE"} <= os.environ.keys():
        env = LightningEnvironment()
        env.set_world_size(int(os.environ["WORLD_SIZE"]))
        env.set_global_rank(int(os.environ["RANK"]))
        return env
    return None


def _uses_cuda(trainer_cfg) -> bool:
    return trainer_cfg.accelerator in ("gpu", "cuda") or (trainer_cfg.accelerator == "auto" and torch.cuda.is_available())


def start_ranks(trainer_cfg) -> None:
    """Join the ranks srun / torchrun / RANK+WORLD_SIZE started together, before any of them touches the
    run directory: the process group Lightning would make (same backend, rank, address, timeout),
    which its strategies then use as they find it. A no-op for one process, under Lightning's own
    launcher and once joined."""
    if not multi_process(trainer_cfg) or not dist.is_available() or _joined():
        return
    env = _launcher()
    if env is None:
        if trainer_cfg.num_nodes > 1:
            raise CSRError(f"config key 'trainer.num_nodes': {trainer_cfg.num_nodes} nodes need their ranks started "
                           "together: one `csr` per device with srun or torchrun (or RANK, LOCAL_RANK, WORLD_SIZE, "
                           "MASTER_ADDR, MASTER_PORT set); Lightning's own launcher starts only one node's ranks")
        return
    if env.world_size() < 2:
        return
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = env.main_address, str(env.main_port)
    backend = "nccl" if _uses_cuda(trainer_cfg) else "gloo"
    dist.init_process_group(backend, rank=env.global_rank(), world_size=env.world_size(),
                            timeout=default_pg_timeout)
    rank_zero_only.rank = env.global_rank()
    # A group left at exit: NCCL warns (Lightning destroys it too), and gloo's threads, destroyed
    # while still joinable, can abort the process ("terminate called without an active exception",
    # exit -6 after a finished run; seen in 1 of ~10 two-rank test runs).
    atexit.register(_destroy_group)


def _destroy_group() -> None:
    if _joined():
        dist.destroy_process_group()


def check_ranks(trainer) -> None:
    """Lightning deals batches and names part files by its own rank: it must be the process group's."""
    if _joined() and (trainer.global_rank, trainer.world_size) != (dist.get_rank(), dist.get_world_size()):
        raise CSRError(f"Lightning counts this process rank {trainer.global_rank} of {trainer.world_size}, the launcher "
                       f"rank {dist.get_rank()} of {dist.get_world_size()}: set trainer.devices and trainer.num_nodes "
                       "to the launcher's (RANK must be NODE_RANK * devices + LOCAL_RANK)")


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
