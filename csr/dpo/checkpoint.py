"""Saving the trained adapter from inside the fit, while DeepSpeed still holds the parameters.

Lightning tears the strategy down at the end of `fit` (the model is moved to the CPU, the engine
dropped) and only then returns; under ZeRO-3 each rank then holds a slice of every parameter and
gathering it needs the engine. `on_train_end` runs before that teardown, on every rank, so the
gather (a collective) and rank 0's save happen there.
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch

from csr.core.distributed import gathered_parameters
from csr.dpo.lora import save_adapter


def numel(param: torch.nn.Parameter) -> int:
    """A parameter's full size: ZeRO-3 leaves an empty tensor in its place and the size in ds_numel."""
    return getattr(param, "ds_numel", param.numel())


def trainable_params(model: torch.nn.Module) -> int:
    return sum(numel(p) for p in model.parameters() if p.requires_grad)


class SaveAdapter(pl.Callback):
    """Writes the policy's adapter to `adapter_dir` when training ends, before Lightning's teardown.

    A fit stopped by an exception (a NaN loss, a signal) never reaches on_train_end: nothing
    half-trained is saved."""

    def __init__(self, policy: torch.nn.Module, adapter_dir: Path) -> None:
        self.policy, self.adapter_dir = policy, adapter_dir

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        params = [p for p in self.policy.parameters() if p.requires_grad]
        with gathered_parameters(trainer.strategy, params):
            if trainer.is_global_zero:  # every rank holds the same weights after the step's all-reduce
                save_adapter(self.policy, self.adapter_dir)
        trainer.strategy.barrier("adapter saved")
