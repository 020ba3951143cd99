"""A few synthetic prompts and images in the reference format, for smoke runs with the tiny models."""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

from csr.core.io import atomic_write_json

_COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40)}
_PROMPTS = [
    "Describe the following image.\n<image>",
    "<image>\nWhat is in this picture?",
    "Provide a detailed description of the image.\n<image>",
]


def write_tiny_prompts(out_dir: str | Path, n: int = 8, seed: int = 0) -> Path:
    """Write `n` images (coloured circles and squares) and prompts.json under out_dir; returns its path."""
    out_dir = Path(out_dir)
    images = out_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    records = []
    for i in range(n):
        img = Image.new("RGB", (64, 64), (128, 128, 128))
        draw = ImageDraw.Draw(img)
        for _ in range(rng.randint(1, 3)):
            colour = _COLOURS[rng.choice(sorted(_COLOURS))]
            x, y = rng.randint(4, 40), rng.randint(4, 40)
            shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
            shape((x, y, x + 18, y + 18), fill=colour)
        name = f"{i:06d}.png"
        img.save(images / name)
        records.append({"id": f"{i:06d}", "image": name, "input": _PROMPTS[i % len(_PROMPTS)]})
    path = out_dir / "prompts.json"
    atomic_write_json(path, records)
    return path
