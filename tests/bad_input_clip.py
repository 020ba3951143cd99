"""Troubleshooting-table cases for images (orientation, float and wide integer samples, unusable
paths) and the CLIP weights; merged into tests/test_bad_input.py's CASES.

Pillow identifies a file by its content, not its extension: the files of error rows are named
*.png because test_bad_input checks that an image error names a .png file.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from csr.config.schema import validate

if TYPE_CHECKING:
    from scratch_prompts import Ctx


def _record(image: str) -> dict:
    return {"id": "r1", "image": image, "input": "Describe the image.\n<image>"}


def write_tiff(path: Path, samples: list[int], bits: int, sample_format: int) -> None:
    """A one-row uncompressed grayscale TIFF (Pillow cannot write signed 16-bit samples itself)."""
    fmt = {(16, 2): "h", (16, 1): "H", (32, 2): "i"}[bits, sample_format]
    data = struct.pack(f"<{len(samples)}{fmt}", *samples)
    tags = [(256, 3, len(samples)), (257, 3, 1), (258, 3, bits), (259, 3, 1), (262, 3, 1),
            (273, 4, 8), (277, 3, 1), (278, 3, 1), (279, 4, len(data)), (339, 3, sample_format)]
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", t, k, 1, v) for t, k, v in tags)
    path.write_bytes(b"II*\0" + struct.pack("<I", 8 + len(data)) + data + ifd + b"\0\0\0\0")


def _exif_rotated(ctx: Ctx) -> str:
    img = Image.new("RGB", (2, 1))
    img.putpixel((0, 0), (255, 0, 0))
    img.putpixel((1, 0), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation 6: stored row 0 is the right side, column 0 the top
    img.save(ctx.images / "r.png", exif=exif)
    out = ctx.image("r.png")
    assert out.size == (1, 2) and [out.getpixel((0, y)) for y in range(2)] == [(255, 0, 0), (0, 0, 255)]
    return out.mode


def _float(ctx: Ctx) -> str:
    img = Image.new("F", (4, 1))
    for x, v in enumerate([0.0, 0.25, 0.5, 1.0]):
        img.putpixel((x, 0), v)
    img.save(ctx.images / "f.tif")
    out = ctx.image("f.tif")
    assert [out.getpixel((x, 0))[0] for x in range(4)] == [0, 64, 128, 255]  # rint(v * 255)
    return out.mode


def _float_out_of_range(ctx: Ctx) -> object:
    img = Image.new("F", (2, 1))
    img.putpixel((1, 0), 3.5)  # an HDR value
    img.save(ctx.images / "hdr.png", format="TIFF")
    return ctx.image("hdr.png")


def _int32(ctx: Ctx) -> object:
    write_tiff(ctx.images / "i32.png", [0, 70000], 32, 2)
    return ctx.image("i32.png")


def _signed16(ctx: Ctx) -> str:
    write_tiff(ctx.images / "s16.png", [0, 128 * 128, 32767], 16, 2)
    out = ctx.image("s16.png")
    assert [out.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]
    return out.mode


def _pgm16(ctx: Ctx) -> str:
    (ctx.images / "g.pgm").write_bytes(b"P5 3 1 65535\n" + bytes([0, 0, 128, 0, 255, 255]))
    out = ctx.image("g.pgm")
    assert [out.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]
    return out.mode


def _fits(ctx: Ctx) -> object:
    cards = ["SIMPLE  = T", "BITPIX  = 32", "NAXIS   = 2", "NAXIS1  = 1", "NAXIS2  = 1", "END"]
    header = "".join(c.ljust(80) for c in cards).ljust(2880).encode()
    (ctx.images / "fits.png").write_bytes(header + (7).to_bytes(4, "big").ljust(2880, b"\0"))
    return ctx.image("fits.png")


def _symlink_loop(ctx: Ctx) -> dict[str, int]:
    os.symlink(ctx.images / "loop2.png", ctx.images / "loop1.png")
    os.symlink(ctx.images / "loop1.png", ctx.images / "loop2.png")
    return ctx.prompts([_record("loop1.png")])


def _null_weights(ctx: Ctx) -> object:
    from compose_config import compose_config

    return validate(compose_config("reward.clip.weights=null"))


CASES: dict[tuple[str, str], Callable[[Ctx], object]] = {
    ("image", "EXIF orientation"): _exif_rotated,
    ("image", "float samples in [0, 1]"): _float,
    ("image", "float samples outside [0, 1] (HDR, depth map, NaN)"): _float_out_of_range,
    ("image", "32-bit integer samples"): _int32,
    ("image", "signed 16-bit TIFF"): _signed16,
    ("image", "16-bit PGM"): _pgm16,
    ("image", "integer samples of no declared range (FITS)"): _fits,
    ("image", "path with a NUL byte"): lambda ctx: ctx.prompts([_record("good.png\0.png")]),
    ("image", "path with a lone surrogate"): lambda ctx: ctx.prompts([_record("\ud800.png")]),
    ("image", "symlink loop"): _symlink_loop,
    ("config", "reward.clip.weights null"): _null_weights,
}
