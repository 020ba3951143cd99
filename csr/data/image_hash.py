"""Content hashes of image files: the search records what it read, DPO refuses a file changed since."""

from __future__ import annotations

import hashlib
import os

from csr.data.prompts import resolve_image_path

CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def image_sha256(image_root: str, rel: str) -> str:
    """sha256 of the file `rel` names under `image_root` (the same resolution load_image uses)."""
    return file_sha256(resolve_image_path(image_root, rel))
