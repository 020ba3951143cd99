"""Content hashes of image files: the search records what it read, DPO refuses a file changed since."""

from __future__ import annotations

from csr.core.identity import file_sha256
from csr.data.prompts import resolve_image_path


def image_sha256(image_root: str, rel: str) -> str:
    """sha256 of the file `rel` names under `image_root` (the same resolution load_image uses)."""
    return file_sha256(resolve_image_path(image_root, rel))
