"""Reference log-probs, computed once per pair and cached in ref_logps.json keyed by what they depend on.

A cached value is reused only for a pair with the same content (prompt, image path, image bytes,
chosen and rejected text) under the same reference model (its resolved directory and every file:
by content up to 256 MiB, by size and mtime above) and the same settings (dtype, attention
implementation, trainer precision).
Anything else is recomputed and the log says how many and why. Batch composition and the device
can move a value in its last float digits (padding, kernels); that is rounding, not a change of
content, and is not keyed.

The pairs to compute go through csr.run.predict as the search does: on the trainer's accelerator, dealt
out to the ranks, with the numerics the policy trains with (the fit's own precision plugin and
weights as DeepSpeed casts them: csr.dpo.stage.reference_pass; the log-ratio is 0 at step 0),
appended batch by batch to ref_logps.pending.jsonl, which a stopped pass resumes. Rank 0 then writes
ref_logps.json and removes the pending file. The values are float32 and reach the loss as such
(csr.dpo.data.float32_bits).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from csr.core.distributed import barrier, is_global_zero
from csr.core.io import atomic_write_json, read_json, read_jsonl
from csr.dpo.data import PairDataset, collate, to_device
from csr.dpo.module import concatenated_logps
from csr.run.predict import RecordPredictor, predict_to_jsonl

log = logging.getLogger(__name__)

CACHE_FORMAT = 2  # 1: a bare list checked by pair id only
# Files up to this size are hashed (config, tokenizer, chat template, index, and the weights of the
# tiny and ShapesWorld models, so equal runs write equal caches); larger weights by size and mtime.
SMALL_FILE = 256 << 20


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def model_directory(model_path: str) -> Path:
    """The directory the checkpoint loads from: the path itself or its Hugging Face cache snapshot."""
    if Path(model_path).is_dir():
        return Path(model_path).resolve()
    from transformers.utils import cached_file

    return Path(cached_file(model_path, "config.json", local_files_only=True)).resolve().parent


def model_fingerprint(model_path: str) -> dict[str, list]:
    """Every file of the checkpoint: [size, sha256] up to SMALL_FILE, [size, mtime_ns] above.

    Hashing a 7B model's shards on every DPO would cost minutes; a rewritten weight file changes its
    mtime (a merge rewrites the next iteration's reference), and a copy with new mtimes only costs a
    recomputation. A large file replaced by another of the same size and mtime goes unnoticed.
    """
    root = model_directory(model_path)
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        stat = path.stat()
        if stat.st_size <= SMALL_FILE:
            files[path.relative_to(root).as_posix()] = [stat.st_size, hashlib.sha256(path.read_bytes()).hexdigest()]
        else:
            files[path.relative_to(root).as_posix()] = [stat.st_size, stat.st_mtime_ns]
    return files


def reference_settings(model_path: str, dtype: str, attn_implementation: str | None, precision: str) -> dict:
    """What, besides a pair's content, the reference log-probs depend on."""
    return {"format": CACHE_FORMAT, "model_dir": str(model_directory(model_path)), "dtype": dtype,
            "attn_implementation": attn_implementation, "precision": precision,
            "model_files": model_fingerprint(model_path)}


def pair_key(pair: dict, image_digest: str) -> str:
    """A pair's content as the reference model sees it: prompt, image (path and bytes), both answers."""
    content = [pair["prompt"], pair["image"], image_digest, pair["chosen"], pair["rejected"]]
    return _sha256_text(json.dumps(content, ensure_ascii=False))


def _changed_settings(old: dict, new: dict) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def _reusable(cached: object, settings: dict) -> tuple[dict[str, tuple[float, float]], str]:
    """Cached values by pair key, and why the others are stale."""
    if cached is None:
        return {}, "no cache yet"
    if not isinstance(cached, dict) or cached.get("settings", {}).get("format") != CACHE_FORMAT:
        return {}, "the cache was written by an older csr (keyed by pair id only)"
    changed = _changed_settings(cached["settings"], settings)
    if changed:
        return {}, f"reference model or settings changed ({', '.join(changed)})"
    return {e["key"]: (e["chosen"], e["rejected"]) for e in cached["pairs"]}, "pairs changed"


class ReferenceModule(RecordPredictor):
    counts = "reference pass batches"
    """The reference pass as a predict step: a batch of {"key", "index"} items (pairs of `dataset`) in,
    one {"key", "id", "chosen", "rejected"} record per pair out."""

    def __init__(self, model: torch.nn.Module, dataset: PairDataset, pad_id: int):
        super().__init__()
        self.model, self.dataset, self.pad_id = model, dataset, pad_id

    def predict_step(self, batch: list[dict], batch_idx: int = 0) -> list[dict]:
        tensors = collate([self.dataset[item["index"]] for item in batch], self.pad_id)
        chosen, rejected = concatenated_logps(self.model, to_device(tensors, self.device), self.dataset.family)
        return [{"key": item["key"], "id": self.dataset.pairs[item["index"]]["id"], "chosen": c, "rejected": r}
                for item, c, r in zip(batch, chosen.tolist(), rejected.tolist(), strict=True)]


def pending_path(cache_path: Path) -> Path:
    return cache_path.with_name(f"{cache_path.stem}.pending.jsonl")


def pending_key(settings: dict, key: str) -> str:
    """A pending record's key: settings and content, so what a pass stopped under other settings left
    is never reused."""
    return _sha256_text(json.dumps(settings, sort_keys=True) + key)


def _compute(model, dataset: PairDataset, keys: list[str], stale: list[int], settings: dict, pad_id: int,
             batch_size: int, cache_path: Path, trainer_kwargs: dict) -> list[tuple[float, float]]:
    """The stale pairs' log-probs through csr.run.predict (batches of the stale pairs in order, as before)."""
    items = [{"key": pending_key(settings, keys[i]), "index": i} for i in stale]
    pending = pending_path(cache_path)
    predict_to_jsonl(ReferenceModule(model, dataset, pad_id), items, pending, batch_size=batch_size,
                     trainer_kwargs=trainer_kwargs, key="key")
    done = {r["key"]: (r["chosen"], r["rejected"]) for r in read_jsonl(pending)}
    return [done[item["key"]] for item in items]


def precompute_reference(model, dataset: PairDataset, keys: list[str], settings: dict, pad_id: int,
                         batch_size: int, cache_path: Path, trainer_kwargs: dict) -> list[tuple[float, float]]:
    """Reference log-probs of every pair before the policy changes (no second model in memory).

    Every rank calls it; each reads the same cache, so all agree on which pairs are stale.
    """
    cached = read_json(cache_path) if cache_path.exists() else None
    known, reason = _reusable(cached, settings)
    stale = [i for i, key in enumerate(keys) if key not in known]
    if not stale:
        log.info("%d reference log-probs reused from %s", len(keys), cache_path)
    elif reason == "no cache yet":
        log.info("%d reference log-probs computed into %s", len(stale), cache_path)
    else:
        log.warning("%d of %d reference log-probs recomputed: %s", len(stale), len(keys), reason)
    if stale:
        values = _compute(model, dataset, keys, stale, settings, pad_id, batch_size, cache_path, trainer_kwargs)
        known.update(zip([keys[i] for i in stale], values, strict=True))
    entries = [{"id": p["id"], "key": k, "chosen": known[k][0], "rejected": known[k][1]}
               for p, k in zip(dataset.pairs, keys, strict=True)]
    record = {"settings": settings, "pairs": entries}
    barrier()  # every rank has read the pending file
    if is_global_zero():
        if record != cached:  # the file always describes exactly the current pairs
            atomic_write_json(cache_path, record)
        pending = pending_path(cache_path)
        for path in [pending, *pending.parent.glob(f"{pending.name}.part*")]:  # all now in cache_path
            path.unlink(missing_ok=True)
    return [known[k] for k in keys]
