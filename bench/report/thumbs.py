"""Small JPEG thumbnails of a report's images, written once and cached by image content.

A thumbnail is `<figures>/thumbs/<sha256 of the image file, 16 hex>.jpg`: the same photo used by
several runs, sections or reports is decoded once, and a re-built report re-reads only the bytes
to hash them. Images are decoded by bench's safe loader (bounded memory, JPEG draft scaling).
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from bench.data.images import load_image
from bench.errors import BenchError
from bench.io import atomic_write_bytes

THUMB_SIDE = 128  # longest side in pixels: a table row stays short and the files stay ~4 KB
JPEG_QUALITY = 70


def content_hash(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def thumbnail(image: Path | None, thumb_dir: Path) -> Path | None:
    """The cached thumbnail of `image`, writing it if it is missing; None when the image is
    absent or cannot be decoded (the explorer then shows the row without a picture)."""
    if image is None or not image.is_file():
        return None
    out = thumb_dir / f"{content_hash(image)}.jpg"
    if out.is_file():
        return out
    try:
        im = load_image(image, max_side=THUMB_SIDE)
    except BenchError:
        return None
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    atomic_write_bytes(out, buf.getvalue())
    return out
