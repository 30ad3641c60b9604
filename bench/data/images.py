"""Decoding images safely: RGB, EXIF-rotated, bounded memory, one-line errors.

`load_image` is a plain module-level function so DataLoader workers can call it (it pickles by
name). Every captioner resizes to a few hundred pixels, so very large images are decoded at a
reduced scale (JPEG DCT scaling via `Image.draft`) instead of at full size.
"""

from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin

from bench.errors import BenchError

DEFAULT_MAX_SIDE = 2048
_JPEG_MAGIC = b"\xff\xd8\xff"
# What Pillow raises for undecodable data, besides OSError.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError)


def safe_image_path(images_dir: str | Path, name: str, *, context: str = "") -> Path:
    """images_dir/name, resolved; refuses names that lead outside images_dir (.., absolute, symlinks).

    `context` (e.g. "captions.txt line 7") is put in front of the error message.
    """
    where = f"{context}: " if context else ""
    if not isinstance(name, str) or not name.strip():
        raise BenchError(f"{where}image name is empty")
    if "\x00" in name:
        raise BenchError(f"{where}image name {name!r} contains a NUL byte")
    if os.path.isabs(name) or name.startswith(("/", "\\")):
        raise BenchError(f"{where}image path {name!r} is absolute; it must be relative to {images_dir}")
    base = Path(images_dir).resolve()
    # resolve() follows symlinks, so a link inside images_dir pointing elsewhere is caught too.
    target = (base / name).resolve()
    if not target.is_relative_to(base):
        raise BenchError(f"{where}image path {name!r} leads outside the images folder {base}")
    return target


def open_header(path: Path) -> Image.Image:
    """Open (header only). JPEGs bypass Pillow's global pixel limit: we draft them down instead."""
    with path.open("rb") as f:
        magic = f.read(3)
    if magic == _JPEG_MAGIC:
        return JpegImagePlugin.JpegImageFile(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(path)


def _draft_box(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    width, height = size
    longest = max(width, height)
    return max(1, width * max_side // longest), max(1, height * max_side // longest)


def _high_bit_depth_to_l(im: Image.Image) -> Image.Image:
    """16-bit / 32-bit / float greyscale -> 8-bit L by scaling (Pillow's convert clips at 255)."""
    arr = np.asarray(im)
    if im.mode.startswith("I;16"):
        arr = arr.astype(np.float32) / 257.0
    elif im.mode == "F":
        arr = arr.astype(np.float32)
        arr = arr * 255.0 if arr.size and float(np.nanmax(arr)) <= 1.0 else arr
    else:  # "I": 16-bit PNGs may come as I; scale only when values exceed 8 bits
        arr = arr.astype(np.float64)
        arr = arr / 257.0 if arr.size and arr.max() > 255 else arr
    return Image.fromarray(np.clip(np.nan_to_num(arr), 0, 255).round().astype(np.uint8), mode="L")


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB; transparent pixels are composited on white."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        return _high_bit_depth_to_l(im).convert("RGB")
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        im.mode in ("P", "L", "RGB") and "transparency" in im.info
    )
    if has_alpha:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def load_image(
    path: str | Path, *, max_pixels: int = 40_000_000, max_side: int | None = DEFAULT_MAX_SIDE
) -> Image.Image:
    """Decode one image: RGB, EXIF-rotated, longest side <= max_side (None: full size).

    Raises BenchError naming the file if it is missing, not an image, corrupt or truncated, or
    would need more than `max_pixels` pixels in memory to decode.
    """
    path = Path(path)
    try:
        with open_header(path) as im:
            if max_side and max(im.size) > max_side and isinstance(im, JpegImagePlugin.JpegImageFile):
                # Decode at 1/2, 1/4 or 1/8 scale: memory follows the reduced size.
                im.draft(im.mode, _draft_box(im.size, max_side))
            width, height = im.size
            if width * height > max_pixels:
                raise BenchError(
                    f"{path}: image is {width}x{height} = {width * height} pixels, more than the "
                    f"{max_pixels} bench decodes (convert it to JPEG or shrink it)"
                )
            im.load()  # decode now, so a truncated file fails here and not in a worker later
            out = ImageOps.exif_transpose(im)
            out = to_rgb(out)
    except BenchError:
        raise
    except FileNotFoundError:
        raise BenchError(f"{path}: image file not found") from None
    except IsADirectoryError:
        raise BenchError(f"{path}: is a folder, not an image file") from None
    except Image.DecompressionBombError as exc:
        raise BenchError(f"{path}: image is too large to decode ({exc})") from None
    except Image.UnidentifiedImageError:
        raise BenchError(f"{path}: not an image file Pillow can read") from None
    except _DECODE_ERRORS as exc:
        raise BenchError(f"{path}: corrupt or truncated image ({exc})") from None
    if max_side and max(out.size) > max_side:
        out.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    if out is im:  # exif_transpose/to_rgb returned the file-backed object; detach it
        out = out.copy()
    return out
