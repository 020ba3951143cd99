"""Running a LightningModule's predict_step over records, appending its output to JSONL as it goes.

Search, reward scoring and evaluation all go through here, so they resume the same way (records
already in the output are not redone) and later shard across devices the same way.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader

from csr.io import JsonlWriter, atomic_write_text, completed_ids, read_jsonl

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


def _key(item: Any, key: str) -> str:
    return str(item[key] if isinstance(item, dict) else getattr(item, key))


def predict_to_jsonl(
    module: pl.LightningModule,
    items: Sequence[Any],
    out_path: str | Path,
    *,
    batch_size: int,
    trainer_kwargs: dict[str, Any],
    key: str = "id",
) -> int:
    """Run `module.predict_step` on the batches not yet in `out_path`; returns how many records were new.

    Batches are cut from the full item list, always the same way, and a batch is redone whole if a
    crash left only part of it: batched float arithmetic depends on the batch's composition, so this
    is what makes a resumed run write exactly what an uninterrupted one would have.
    """
    out_path = Path(out_path)
    done = completed_ids(out_path, key=key)  # also repairs a torn last line left by a crash
    batches = [list(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
    partial = {_key(it, key) for b in batches for it in b if not all(_key(x, key) in done for x in b)} & done
    if partial:  # drop the records of half-written batches; they are redone below
        kept = [r for r in read_jsonl(out_path) if str(r[key]) not in partial]
        atomic_write_text(out_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
        done -= partial
    todo = [b for b in batches if not all(_key(it, key) in done for it in b)]
    if done:
        log.info("%s: %d records already written, %d batches to go", out_path, len(done), len(todo))
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
    # batch_size=None: each element already is a batch (a list of records).
    trainer.predict(module, dataloaders=DataLoader(todo, batch_size=None), return_predictions=False)
    return writer.written
