"""Loading one prompt image as 8-bit RGB, with every failure a CSRError naming the file."""

from __future__ import annotations

import os
import warnings

from PIL import Image, UnidentifiedImageError

from csr.data.prompts import resolve_image_path
from csr.errors import CSRError

# Modes that carry transparency; they are composited on white, as a viewer would show them,
# instead of dropping alpha (which can reveal arbitrary colour hidden under transparent pixels).
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa"}
_SIXTEEN_BIT_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N"}


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in _SIXTEEN_BIT_MODES:
        # convert("L") would clip every value above 255 to white; scale 0..65535 down to 0..255.
        # point() on mode "I" supports this linear map; convert("L") then clamps negatives to 0.
        scaled = img.convert("I").point(lambda v: v * (1 / 256))
        return scaled.convert("L").convert("RGB")
    if img.mode in _ALPHA_MODES or (img.mode in {"P", "L", "RGB"} and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    # L, 1, P, CMYK, YCbCr, LAB, HSV, F: Pillow's own conversions are correct for these.
    return img.convert("RGB")


def load_image(image_root: str, rel: str, max_pixels: int = 64_000_000) -> Image.Image:
    """Open `rel` under `image_root` and return a fully decoded RGB image."""
    path = resolve_image_path(image_root, rel)
    if not path.is_file():
        raise CSRError(f"image {path}: file not found")
    if os.path.getsize(path) == 0:
        raise CSRError(f"image {path}: file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its limit and twice its limit; a bomb is never acceptable.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                # Image.open reads only the header, so this check happens before any decoding.
                width, height = img.size
                if width * height > max_pixels:
                    raise CSRError(
                        f"image {path}: {width}x{height} = {width * height} pixels exceeds "
                        f"max_pixels={max_pixels} (possible decompression bomb)"
                    )
                # Decoding is lazy; load() here is what surfaces truncated or corrupt data.
                img.load()
                return _to_rgb(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise CSRError(f"image {path}: too many pixels (decompression bomb guard): {exc}") from None
    except UnidentifiedImageError:
        raise CSRError(f"image {path}: not a recognised image file") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow reports truncated/corrupt data as OSError (and occasionally the others).
        raise CSRError(f"image {path}: truncated or corrupt image data ({exc})") from None
