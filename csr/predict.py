"""Running a LightningModule's predict_step over records, appending its output to JSONL as it goes.

Search, reward scoring and evaluation all go through here, so they resume the same way (records
already in the output are not redone) and later shard across devices the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader

from csr.io import JsonlWriter, completed_ids

log = logging.getLogger(__name__)


class RecordPredictor(pl.LightningModule):
    """Base of the predict-only modules: batches are lists of records (dataclasses or dicts) that
    predict_step turns into tensors itself, so Lightning must not try to move them to a device."""

    def transfer_batch_to_device(self, batch: Any, device: Any, dataloader_idx: int) -> Any:
        return batch


class JsonlPredictionWriter(BasePredictionWriter):
    """Appends each batch's records (a list of dicts) to one JSONL file, fsynced per record."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(write_interval="batch")
        self.path = Path(path)
        self.written = 0

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        with JsonlWriter(self.path) as writer:
            for record in prediction:
                writer.write(record)
        self.written += len(prediction)


def _as_list(batch: list[Any]) -> list[Any]:
    return batch


def predict_to_jsonl(
    module: pl.LightningModule,
    items: Sequence[Any],
    out_path: str | Path,
    *,
    batch_size: int,
    trainer_kwargs: dict[str, Any],
    key: str = "id",
) -> int:
    """Run `module.predict_step` on the items not yet in `out_path`; returns how many were new.

    Items must have an attribute (or key) `key`, matched against the same field of the records.
    """
    done = completed_ids(out_path, key=key)  # also repairs a torn last line left by a crash
    todo = [it for it in items if str(getattr(it, key, None) or it[key]) not in done]
    if done:
        log.info("%s: %d records already written, %d to go", out_path, len(done), len(todo))
    if not todo:
        return 0
    writer = JsonlPredictionWriter(out_path)
    trainer = pl.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[writer],
        **trainer_kwargs,
    )
    loader = DataLoader(todo, batch_size=batch_size, shuffle=False, collate_fn=_as_list)
    trainer.predict(module, dataloaders=loader, return_predictions=False)
    return writer.written
