"""Running a LightningModule's predict_step over records, appending its output to JSONL as it goes.

Search, reward scoring and evaluation all go through here, so they resume and shard the same way:
the items are cut into fixed batches; under several devices Lightning's distributed sampler deals
the batches out to the ranks, each rank appends its records to its own part file
(`<out>.part<rank>`), and rank 0 merges the parts into `<out>` in item order, so the file is the
one a single process writes. Records already in the output (or in parts a crash left) are not redone:
rank 0 merges what is there and sends every rank the same list of batches to do, and the output is
complete (every item's record, once) before the call returns, or it raises naming what is missing.
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

from csr.core import signals
from csr.core.distributed import barrier, check_ranks, is_global_zero, rank_zero_value
from csr.core.errors import CSRError
from csr.core.io import JsonlWriter, atomic_write_text, read_jsonl
from csr.core.progress import bar_callbacks

log = logging.getLogger(__name__)


class RecordPredictor(pl.LightningModule):
    """Base of the predict-only modules: batches are lists of records (dataclasses or dicts) that
    predict_step turns into tensors itself, so Lightning must not try to move them to a device."""

    counts = "batches"  # what the progress bar counts (csr/core/progress.py)

    def transfer_batch_to_device(self, batch: Any, device: Any, dataloader_idx: int) -> Any:
        return batch


class RankShare(pl.LightningDataModule):
    """This rank's share of the batches: batch i goes to rank i mod world size, as Lightning's sampler
    deals them, except that a rank may get none (fewer batches left than ranks; Lightning's
    unrepeated sampler asserts every rank gets one). Dealt when Lightning asks, once the ranks are known."""

    def __init__(self, batches: list[list]) -> None:
        super().__init__()
        self.batches = batches
        self.allow_zero_length_dataloader_with_multiple_devices = True  # the rank without a batch still joins in

    def predict_dataloader(self) -> DataLoader:
        # batch_size=None: each element already is a batch (a list of records)
        return DataLoader(self.batches[self.trainer.global_rank :: self.trainer.world_size], batch_size=None)


def part_path(out_path: Path, rank: int) -> Path:
    return out_path.with_name(f"{out_path.name}.part{rank}")


class JsonlPredictionWriter(BasePredictionWriter):
    """Appends each batch's records (a list of dicts) to this rank's part file, fsynced per batch.

    One writer is opened for the whole stage (on the first batch; its tail is checked once) and
    closed at its end, so writing a stage costs O(records), never a re-read per batch. A batch is
    the unit of resume (a half-written one is redone whole), so one fsync per batch keeps
    every finished batch durable."""

    def __init__(self, out_path: Path) -> None:
        super().__init__(write_interval="batch")
        self.out_path = out_path
        self.written = 0
        self._writer: JsonlWriter | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        check_ranks(trainer)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        if self._writer is None:
            self._writer = JsonlWriter(part_path(self.out_path, trainer.global_rank), durable=False).__enter__()
        for record in prediction:
            self._writer.write(record)
        self._writer.sync()
        self.written += len(prediction)
        signals.check(f"{self.out_path.name}: {self.written} records written by this start")  # batch whole on disk

    def close(self) -> None:
        if self._writer is not None:
            self._writer.__exit__(None, None, None)
            self._writer = None

    def on_predict_end(self, trainer, pl_module) -> None:
        self.close()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.close()


def _key(item: Any, key: str) -> str:
    return str(item[key] if isinstance(item, dict) else getattr(item, key))


def consolidate(out_path: Path, batch_keys: list[list[str]], key: str) -> set[str]:
    """Fold the part files into `out_path`: the records of whole batches, in item order; returns the
    keys the file now holds.

    A batch is redone whole if a crash left only part of it: batched float arithmetic depends on the
    batch's composition, so this is what makes a resumed run write exactly what an uninterrupted one
    would have. Records of items no longer asked for (e.g. a lower data.limit) are kept, after.
    """
    parts = sorted(out_path.parent.glob(f"{out_path.name}.part*"))
    by_key: dict[str, dict] = {}
    for path in [out_path, *parts]:  # repair=True drops a torn last line left by a crash
        for lineno, record in enumerate(read_jsonl(path, repair=True), start=1):
            if key not in record:
                raise CSRError(f"{path}: record on line {lineno} has no {key!r} field")
            by_key.setdefault(str(record[key]), record)
    wanted = {k for keys in batch_keys for k in keys}
    whole = [k for keys in batch_keys if all(k in by_key for k in keys) for k in keys]
    kept = whole + [k for k in by_key if k not in wanted]
    text = "".join(json.dumps(by_key[k], ensure_ascii=False) + "\n" for k in kept)
    if not out_path.exists() or out_path.read_text(encoding="utf-8") != text:
        atomic_write_text(out_path, text)
    for path in parts:  # only once their records are safely in out_path
        path.unlink()
    return set(kept)


def pending(written: set[str], batch_keys: list[list[str]]) -> list[int]:
    """The batches (indices) not wholly in the output."""
    return [i for i, keys in enumerate(batch_keys) if not written.issuperset(keys)]


def missing_message(out_path: Path, written: set[str], batch_keys: list[list[str]], shown: int = 10) -> str | None:
    """None when every item has its record in the output, else the error naming the missing ones."""
    expected = [k for keys in batch_keys for k in keys]
    missing = [k for k in expected if k not in written]
    if not missing:
        return None
    more = f" and {len(missing) - shown} more" if len(missing) > shown else ""
    return (f"{out_path}: {len(missing)} of {len(expected)} records missing after every rank finished "
            f"({', '.join(missing[:shown])}{more}); the stage is not marked done: rerun to do them")


def predict_to_jsonl(
    module: pl.LightningModule,
    items: Sequence[Any],
    out_path: str | Path,
    *,
    batch_size: int,
    trainer_kwargs: dict[str, Any],
    key: str = "id",
) -> int:
    """Run `module.predict_step` on the batches not yet in `out_path`; returns how many records this
    rank wrote. Every rank must call it, with the same items; a CSRError names the items that have no
    record once every rank is done."""
    out_path = Path(out_path)
    batches = [list(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
    batch_keys = [[_key(it, key) for it in b] for b in batches]
    todo_ids = None
    if is_global_zero():  # alone: the others wait for its list (they never read a file it is rewriting)
        written = consolidate(out_path, batch_keys, key)
        todo_ids = pending(written, batch_keys)
        if written:
            log.info("%s: %d records already written, %d batches to go", out_path, len(written), len(todo_ids))
    todo_ids = rank_zero_value(todo_ids)
    if todo_ids is None:  # no process group: a rank Lightning's launcher started inside rank 0's first call
        todo_ids = pending({str(r[key]) for r in read_jsonl(out_path)}, batch_keys)
    if not todo_ids:  # the same answer on every rank: none of them goes on to the collectives below
        return 0
    todo = [batches[i] for i in todo_ids]
    writer = JsonlPredictionWriter(out_path)
    trainer = pl.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[writer, *bar_callbacks(trainer_kwargs, module.counts)],
        use_distributed_sampler=False,  # RankShare deals the batches
        **trainer_kwargs,
    )
    with signals.deferred():  # a SIGTERM / SIGINT stops the loop after the batch it came in
        try:
            trainer.predict(module, datamodule=RankShare(todo), return_predictions=False)
        finally:
            writer.close()
    barrier()  # every rank's part file is complete
    problem = missing_message(out_path, consolidate(out_path, batch_keys, key), batch_keys) if is_global_zero() else None
    problem = rank_zero_value(problem)  # also the barrier before every rank reads the merged file
    if problem:
        raise CSRError(problem)
    return writer.written
