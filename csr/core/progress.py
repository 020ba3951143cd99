"""csr's progress bars: Lightning's Rich bar, named by the stage and what it counts
("iteration 1 eval pope: answer batches"), without the logger version (v_num) Lightning adds.

The loop says which stage runs (`with stage("iteration 1 search")`, nested labels join with a
space); each Lightning call adds a `StageBar` naming what its batches are.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from pytorch_lightning.callbacks import RichProgressBar

_labels: list[str] = []


@contextmanager
def stage(label: str) -> Iterator[None]:
    _labels.append(label)
    try:
        yield
    finally:
        _labels.pop()


def current() -> str:
    return " ".join(_labels) or "csr"


class StageBar(RichProgressBar):
    def __init__(self, counts: str) -> None:
        super().__init__()
        self.counts = counts

    @property
    def predict_description(self) -> str:
        return f"{current()}: {self.counts}"

    def _get_train_description(self, current_epoch: int) -> str:
        return f"{current()}: epoch {current_epoch + 1}/{self.trainer.max_epochs}, {self.counts}"

    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the MLflow run's id prefix: nothing about the training
        return metrics


def bar_callbacks(trainer_kwargs: dict, counts: str) -> list:
    """[StageBar(counts)] unless the caller turned the bar off (enable_progress_bar=False)."""
    return [StageBar(counts)] if trainer_kwargs.get("enable_progress_bar", True) else []
