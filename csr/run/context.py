"""What every stage is given: one signature, `run(ctx: StageContext) -> dict` (its stats, which the
loop writes into the stage's marker and MLflow). The loop builds the context and sequences the
stages; it knows nothing of what a stage does."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from csr.core.errors import CSRError

if TYPE_CHECKING:  # the run layer sits below models: the loop resolves the family and hands it in
    from csr.models.families.base import Family


@dataclass
class StageContext:
    cfg: DictConfig  # the run's whole, validated config
    k: int  # the iteration (0: the base model's evaluation)
    iter_dir: Path  # iter_<k>/, where the stage writes
    model_path: str  # the policy iteration k starts from (the base model, then iter_<k-1>/merged)
    evaluated_path: str  # the model iteration k produced, which its evaluation scores (k = 0: the base model)
    trainer_kwargs: dict[str, Any]  # Lightning Trainer arguments for predict calls (device, ranks, precision)
    family: Family  # model.family, resolved once per run (csr/loop.py): every stage's model is of this family
    policy: Callable[[str], tuple[Any, Any]]  # path -> (model, processor), loaded once and shared
    scorer: Callable[[], Any]  # the CLIP reward model (csr/models/clip.ClipScorer), loaded once
    release_policy: Callable[[], None]  # frees the shared policy (DPO loads its own trainable copy)
    logger: Callable[[], Any]  # the iteration's Lightning logger (MLflow) or None, made when asked
    evaluators: Mapping[str, Any]  # name -> csr/eval/registry.Evaluator: the benchmarks' and the worlds' (csr.worlds)

    def require(self, name: str) -> Path:
        """iter_<k>/name, which an earlier stage wrote; a clear error when it did not."""
        path = self.iter_dir / name
        if not path.exists():
            raise CSRError(f"{path} does not exist: run the stage that writes it first (or stage=all)")
        return path
