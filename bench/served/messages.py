"""What an endpoint run sends: one image as a data URL, and the prompt file as chat messages.

The image goes as the file's own bytes (base64), so the server sees what an in-process run
decodes; it is re-encoded (JPEG, quality 95) only where the server cannot take the format, or
resized only when the setting gives `max_side`. The prompt file's `<image>` position decides
whether the image part comes before or after the text part, as for the in-process backends.
"""

from __future__ import annotations

import base64
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.prompts import PromptTemplate

# Formats every OpenAI-compatible VLM server decodes (OpenAI's documented set; vLLM and llama.cpp
# decode through Pillow / stb and take these too).
ACCEPTED_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}
REENCODE_QUALITY = 95


@dataclass(frozen=True)
class SentImage:
    """One image as sent: the data URL and what was done to the file's bytes."""

    url: str
    mime: str
    n_bytes: int
    sha256: str  # of the bytes sent
    re_encoded: bool  # False: the file's own bytes
    size: tuple[int, int]  # width, height of what was sent


def image_payload(path: Path, max_side: int | None = None) -> SentImage:
    """The data URL of `path`: its own bytes unless the format or `max_side` needs re-encoding."""
    from PIL import Image

    path = Path(path)
    try:
        raw = path.read_bytes()
        with Image.open(io.BytesIO(raw)) as im:
            fmt, size = im.format or "", im.size
            too_big = max_side is not None and max(size) > max_side
            if fmt in ACCEPTED_FORMATS and not too_big:
                return _payload(raw, ACCEPTED_FORMATS[fmt], False, size)
            from bench.data import load_image

            image = load_image(path, max_side=max_side)
    except FileNotFoundError:
        raise BenchError(f"{path}: image file not found") from None
    except OSError as exc:
        raise BenchError(f"{path}: not an image file Pillow can read ({exc})") from None
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=REENCODE_QUALITY)
    return _payload(buffer.getvalue(), "image/jpeg", True, image.size)


def _payload(data: bytes, mime: str, re_encoded: bool, size: tuple[int, int]) -> SentImage:
    url = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    return SentImage(url, mime, len(data), hashlib.sha256(data).hexdigest(), re_encoded, (int(size[0]), int(size[1])))


def chat_messages(template: PromptTemplate, image_url: str, system: str | None = None) -> list[dict[str, Any]]:
    """The chat of one caption request: [system,] user with the image and text parts in the
    template's order (image first when nothing precedes `<image>`)."""
    parts: list[dict[str, Any]] = [{"type": "text", "text": template.text}]
    parts.insert(0 if template.image_first else 1, {"type": "image_url", "image_url": {"url": image_url}})
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": parts})
    return messages
