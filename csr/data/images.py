"""Loading one prompt image as 8-bit RGB, with every failure a CSRError naming the file.

Conversion rules (docs/troubleshooting.md's table lists them):
- EXIF orientation is applied, so the image is the one a viewer shows;
- transparency is composited on white;
- integer samples of up to 16 bits ('I;16*', 16-bit PNG and PGM/PPM, 12- and 16-bit TIFF) keep
  their top 8 bits: the declared range 0..2^b-1 is scaled to 0..255, never clipped;
- float samples ('F') are read as intensities in [0, 1] (the convention of scikit-image and
  OpenCV) and scaled to 0..255; other values (HDR, depth maps, NaN) are refused;
- 32-bit integer samples have no standard display range and are refused, as is any other mode
  without a faithful conversion;
- every other mode (1, L, P, CMYK, YCbCr, LAB, HSV) goes through Pillow's own conversion.

Only the formats of FORMATS are opened, whatever a file is named: Pillow identifies a file by its
content, and some of its plugins hand the file to an external program (EPS to Ghostscript), so every
place csr opens an image goes through `open_image`.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from csr.core.errors import CSRError
from csr.data.prompts import resolve_image_path

# Modes that carry transparency; they are composited on white, as a viewer would show them,
# instead of dropping alpha (which can reveal arbitrary colour hidden under transparent pixels).
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
_PILLOW_MODES = {"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
_TIFF_BITS, _TIFF_SAMPLE_FORMAT, _SIGNED = 258, 339, 2  # TIFF tags BitsPerSample, SampleFormat
# The image formats csr opens (Pillow's names; JPEG includes a camera's multi-picture MPO, PPM includes
# PGM, FITS is refused later for its undeclared sample range, but by name). Pillow's own decoders,
# nothing that runs another program: not EPS/PS (Ghostscript), PDF, PSD or the rarer plugins.
# A strip of 20000x1 passes max_pixels, then a processor that resizes the short side to 336 makes it
# 336x6.7M. No photograph or figure is this long and thin.
MAX_ASPECT = 50
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "PPM", "FITS")


class _Unconvertible(Exception):
    """A mode or sample range with no faithful 8-bit RGB conversion."""


def _first(value) -> int:
    return int(value[0] if isinstance(value, tuple) else value)


def _sample_bits(img: Image.Image) -> int:
    """Significant bits of an integer image's samples, as the file declares them."""
    if img.format == "TIFF":
        bits = _first(img.tag_v2.get(_TIFF_BITS, 32))
        signed = _first(img.tag_v2.get(_TIFF_SAMPLE_FORMAT, 1)) == _SIGNED
        if bits > 16:
            raise _Unconvertible(f"{bits}-bit integer samples have no standard display range (save it as 8 or 16 bits)")
        return bits - signed  # signed: 0..2^(b-1)-1, negatives are refused below
    if img.mode in _SIXTEEN_BIT_MODES or img.format == "PPM":
        return 16  # Pillow widens PGM/PPM samples with maxval > 255 to 0..65535
    raise _Unconvertible(f"mode 'I' (32-bit integer) from {f'a {img.format}' if img.format else 'an unknown'} file has no declared sample range")


def _grey(values: np.ndarray) -> Image.Image:
    return Image.fromarray(values.astype(np.uint8), mode="L").convert("RGB")


def _integer_to_rgb(img: Image.Image, bits: int) -> Image.Image:
    values = np.asarray(img).astype(np.int64)
    if values.min() < 0:
        raise _Unconvertible(f"mode {img.mode!r} with negative samples (min {values.min()}) has no display meaning")
    return _grey(np.minimum(values >> (bits - 8), 255))  # the top 8 of `bits` bits


def _float_to_rgb(img: Image.Image) -> Image.Image:
    values = np.asarray(img, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    if not (np.isfinite(values).all() and low >= 0.0 and high <= 1.0):
        raise _Unconvertible(
            f"mode 'F' samples in [{low}, {high}]: float images must hold intensities in [0, 1]"
        )
    return _grey(np.rint(values * 255.0))


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in _SIXTEEN_BIT_MODES or img.mode == "I":
        return _integer_to_rgb(img, _sample_bits(img))
    if img.mode == "F":
        return _float_to_rgb(img)
    if img.mode in _ALPHA_MODES or (img.mode in {"P", "L", "RGB"} and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode not in _PILLOW_MODES:
        raise _Unconvertible(f"mode {img.mode!r} has no faithful RGB conversion")
    return img.convert("RGB")  # Pillow's own conversions are correct for these


def open_image(path: str | os.PathLike) -> Image.Image:
    """Image.open restricted to FORMATS; a file of any other format is a CSRError naming it."""
    try:
        return Image.open(path, formats=FORMATS)
    except UnidentifiedImageError:
        raise CSRError(f"image {path}: not a recognised image file: csr opens only {', '.join(FORMATS)} "
                       "(convert it to PNG)") from None


def load_image(image_root: str, rel: str, max_pixels: int = 64_000_000) -> Image.Image:
    """Open `rel` under `image_root` and return a fully decoded RGB image, upright."""
    path = resolve_image_path(image_root, rel)
    if not path.is_file():
        raise CSRError(f"image {path}: file not found")
    if os.path.getsize(path) == 0:
        raise CSRError(f"image {path}: file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its limit and twice its limit; a bomb is never acceptable.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with open_image(path) as img:
                # Image.open reads only the header, so this check happens before any decoding.
                width, height = img.size
                if width * height > max_pixels:
                    raise CSRError(
                        f"image {path}: {width}x{height} = {width * height} pixels exceeds "
                        f"max_pixels={max_pixels} (possible decompression bomb)"
                    )
                if max(width, height) > MAX_ASPECT * min(width, height):
                    raise CSRError(
                        f"image {path}: {width}x{height} is more than {MAX_ASPECT}:1 (a model's processor scales "
                        "its short side up to its input size, which would make it gigapixels): crop or pad it"
                    )
                # Decoding is lazy; load() here is what surfaces truncated or corrupt data.
                img.load()
                # In place, so the file's format and tags (read by _to_rgb) stay with the image.
                ImageOps.exif_transpose(img, in_place=True)
                return _to_rgb(img)
    except _Unconvertible as exc:
        raise CSRError(f"image {path}: {exc}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise CSRError(f"image {path}: too many pixels (decompression bomb guard): {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow reports truncated/corrupt data as OSError (and occasionally the others).
        raise CSRError(f"image {path}: truncated or corrupt image data ({exc})") from None
