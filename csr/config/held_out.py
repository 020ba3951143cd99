"""Which evaluators can score a held-out split besides the one they report, and the start check of
`eval.select` (csr/run/selection.py does the scoring and the choice): a selection is refused at start
when it would choose on the reported split or the training one."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import OmegaConf

from csr.config.choices import SHAPESWORLD_SPLITS
from csr.core.errors import CSRError


@dataclass(frozen=True)
class HeldOut:
    eval_key: str  # the key that names the split the evaluator scores (and the run reports)
    training_key: str  # the key that names the split the loop trains on
    splits: tuple[str, ...]


# The evaluators that can score another split than the one they report: only these can select.
HELD_OUT = {"shapesworld": HeldOut("eval.shapesworld.split", "data.shapesworld.split", SHAPESWORLD_SPLITS)}


def metric_parts(metric: str) -> tuple[str, str]:
    """"shapesworld/chair_s" -> ("shapesworld", "chair_s")."""
    name, _, key = metric.partition("/")
    return name, key


def check_selection(cfg) -> None:
    """At start: the metric names a selecting evaluator of the run, on a split that is neither the
    reported one nor the training one."""
    s = cfg.eval.select
    if s is None:
        return
    if s.patience is not None and s.patience < 1:
        raise CSRError(f"config key 'eval.select.patience': {s.patience!r} must be >= 1 or null (run every iteration)")
    name, key = metric_parts(s.metric)
    where = "config key 'eval.select.metric'"
    if not key:
        raise CSRError(f"{where}: {s.metric!r} must be '<evaluator>/<metric>', e.g. shapesworld/chair_s")
    if name not in cfg.eval.evaluators:
        raise CSRError(f"{where}: evaluator {name!r} is not in eval.evaluators {list(cfg.eval.evaluators)}: "
                       "add it there, or set eval.select=null (no selection)")
    if name not in HELD_OUT:
        raise CSRError(f"{where}: evaluator {name!r} has no held-out split besides the one it reports, and a "
                       f"number chosen on the split it is reported on is not a held-out result; evaluators that "
                       f"can select: {sorted(HELD_OUT)}")
    held = HELD_OUT[name]
    if s.split not in held.splits:
        raise CSRError(f"config key 'eval.select.split': {s.split!r} is not one of {list(held.splits)}")
    if s.split == OmegaConf.select(cfg, held.eval_key):
        raise CSRError(f"config key 'eval.select.split': {s.split!r} is the split the run reports ({held.eval_key}): "
                       "select on another held-out split (e.g. val), never on the reported one")
    if s.split == OmegaConf.select(cfg, held.training_key):
        raise CSRError(f"config key 'eval.select.split': {s.split!r} is the split the run trains on "
                       f"({held.training_key}): select on a held-out split (e.g. val)")
