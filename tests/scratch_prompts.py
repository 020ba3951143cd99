"""A scratch directory with a good image and a prompt-file writer, for the bad-input tests."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from csr.data.images import load_image
from csr.data.prompts import load_prompts


class Ctx:
    """A scratch directory with a good image and a prompt-file writer; `on_error` as data.on_error."""

    def __init__(self, tmp_path: Path, tiny_models, on_error: str):
        self.tmp, self.tiny, self.on_error = tmp_path, tiny_models, on_error
        self.images = tmp_path / "images"
        self.images.mkdir(parents=True)
        Image.new("RGB", (8, 8), (10, 20, 30)).save(self.images / "good.png")

    def write(self, records, raw: bytes | None = None) -> str:
        """Write the prompt file: `raw` bytes, or `records` after one good record (so a bad record
        is found mid-file and a skip leaves something usable); returns its path."""
        path = self.tmp / "prompts.json"
        if raw is None:
            good = [{"id": "ok", "image": "good.png", "input": "Describe.\n<image>"}]
            raw = json.dumps(good + records if isinstance(records, list) and records else records).encode()
        path.write_bytes(raw)
        return str(path)

    def prompts(self, records, raw: bytes | None = None) -> dict[str, int]:
        """Load a prompt file holding `records` (or the bytes `raw`); returns the skip counts."""
        return load_prompts(self.write(records, raw), str(self.images), on_error=self.on_error)[1]

    def image(self, name: str) -> Image.Image:
        return load_image(str(self.images), name)
