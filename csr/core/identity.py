"""What a file or checkpoint directory is, by content: recorded when a run or stage reads it, compared
when it is read again, so that an input replaced at the same path is noticed (csr/run/inputs.py).

A checkpoint is gigabytes, read at every start: hashing it whole would cost a minute a start. Its
identity is instead the sha256 of every small file whole (config.json, tokenizer, processor) and, of
each safetensors file, its header (every tensor's name, dtype, shape and place), its size, and the
first and last 4 KiB of every tensor's bytes. That is enough for what happens to checkpoints: another
model has another header or other values, and a trained one (full, or a merged LoRA) moves nearly
every element of each tensor it changed, its first and last ones included; a tensor it left alone has
the same bytes anyway. What it does not see is an edit of bytes inside a tensor that keeps both its
ends: deliberate tampering, not a swap (csr never trusts a checkpoint to be anything but weights).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

CHUNK = 1 << 20
SAMPLE = 4096  # bytes read at each end of a tensor
WHOLE = 64 << 20  # files up to this size are hashed whole
_SPREAD = 16  # a large file that is not safetensors: this many samples spread over it


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _tensor_spans(f, size: int) -> list[tuple[int, int]] | None:
    """(start, end) in the file of each tensor's bytes, from the safetensors header; None if the file is
    not a well-formed safetensors file (then it is sampled as any large file; loading it names the fault)."""
    head = f.read(8)
    if len(head) < 8:
        return None
    (n,) = struct.unpack("<Q", head)
    if n > min(size - 8, 100 << 20):
        return None
    try:
        header = json.loads(f.read(n))
        spans = [(8 + n + int(t["data_offsets"][0]), 8 + n + int(t["data_offsets"][1]))
                 for name, t in header.items() if name != "__metadata__"]
    except (ValueError, TypeError, KeyError, IndexError):
        return None
    return [(0, 8 + n), *spans]  # the header whole, then the tensors


def _sampled(path: Path) -> str:
    size = path.stat().st_size
    digest = hashlib.sha256(f"size={size}".encode())
    with open(path, "rb") as f:
        spans = _tensor_spans(f, size) if path.suffix == ".safetensors" else None
        if spans is None:
            step = max(size // _SPREAD, 1)
            spans = [(at, min(at + SAMPLE, size)) for at in range(0, size, step)] + [(max(size - SAMPLE, 0), size)]
        for i, (start, end) in enumerate(spans):
            parts = [(start, end)] if i == 0 or end - start <= 2 * SAMPLE else \
                [(start, start + SAMPLE), (end - SAMPLE, end)]
            for a, b in parts:
                f.seek(a)
                digest.update(f.read(max(b - a, 0)))
    return digest.hexdigest()


def file_identity(path: str | os.PathLike[str]) -> str:
    """sha256 of a small file; the sampled identity (the module's docstring) of a large or safetensors one."""
    p = Path(path)
    return _sampled(p) if p.suffix == ".safetensors" or p.stat().st_size > WHOLE else file_sha256(p)


def path_identity(path: str | os.PathLike[str]) -> str:
    """The identity of a file, or of a directory from each of its files' (hidden ones, such as a cache
    or .git, left out: loading reads none of them)."""
    p = Path(path)
    if not p.is_dir():
        return file_identity(p)
    digest = hashlib.sha256()
    for file in sorted(f for f in p.rglob("*") if f.is_file()):
        rel = file.relative_to(p)
        if not any(part.startswith(".") for part in rel.parts):
            digest.update(f"{rel.as_posix()}\0{file_identity(file)}\n".encode())
    return digest.hexdigest()
