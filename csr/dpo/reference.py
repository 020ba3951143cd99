"""Reference log-probs, computed once per pair and cached in ref_logps.json keyed by what they depend on.

A cached value is reused only for a pair with the same content (prompt, image path, image bytes,
chosen and rejected text) under the same reference model (its resolved directory and every file:
by content up to 256 MiB, by size and mtime above) and the same settings (dtype, attention
implementation).
Anything else is recomputed and the log says how many and why. Batch composition can move a value
in its last float digits (padding); that is rounding, not a change of content, and is not keyed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from csr.dpo.data import PairDataset, collate
from csr.dpo.module import concatenated_logps
from csr.io import atomic_write_json, read_json

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


def reference_settings(model_path: str, dtype: str, attn_implementation: str | None) -> dict:
    """What, besides a pair's content, the reference log-probs depend on."""
    return {"format": CACHE_FORMAT, "model_dir": str(model_directory(model_path)), "dtype": dtype,
            "attn_implementation": attn_implementation, "model_files": model_fingerprint(model_path)}


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


def _compute(model, dataset: PairDataset, indices: list[int], pad_id: int, batch_size: int) -> list[tuple[float, float]]:
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, collate_fn=partial(collate, pad_id=pad_id))
    out = []
    model.eval()
    with torch.inference_mode():
        for batch in loader:
            chosen, rejected = concatenated_logps(model, batch)
            out += list(zip(chosen.tolist(), rejected.tolist(), strict=True))
    return out


def precompute_reference(model, dataset: PairDataset, keys: list[str], settings: dict, pad_id: int,
                         batch_size: int, cache_path: Path) -> list[tuple[float, float]]:
    """Reference log-probs of every pair before the policy changes (no second model in memory)."""
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
        known.update(zip([keys[i] for i in stale], _compute(model, dataset, stale, pad_id, batch_size), strict=True))
    entries = [{"id": p["id"], "key": k, "chosen": known[k][0], "rejected": known[k][1]}
               for p, k in zip(dataset.pairs, keys, strict=True)]
    record = {"settings": settings, "pairs": entries}
    if record != cached:  # the file always describes exactly the current pairs
        atomic_write_json(cache_path, record)
    return [known[k] for k in keys]
