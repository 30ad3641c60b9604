"""CLIPScore's inputs exactly as Hessel et al.'s reference code (jmhessel/clipscore) builds them.

Images (`CLIPImageDataset._transform_test`, torchvision on a PIL image), in this order:
  1. `Image.open(path)`: no EXIF rotation, no downscaling, no alpha compositing;
  2. torchvision `Resize(n_px, BICUBIC)`: the short side becomes n_px, the long side
     `int(n_px * long / short)`, with PIL's own `Image.resize` (so PIL's per-mode rules apply:
     "P" and "1" resize with NEAREST, RGBA/LA are resized premultiplied);
  3. `CenterCrop(n_px)`: offsets `int(round((size - n_px) / 2.0))` (Python's round: half to even);
  4. `convert("RGB")` (PIL's conversions of P, L, I;16, CMYK, RGBA: alpha is dropped, not composited);
  5. `ToTensor()` (uint8 / 255 in float32) and `Normalize` with OpenAI CLIP's mean and std.
This is done here with PIL and numpy, so the pixels never depend on whether torchvision is
installed or on which image-processor backend transformers picks.

Texts (OpenAI CLIP's `SimpleTokenizer.encode`, before BPE): `ftfy.fix_text`, `html.unescape`
twice, strip, runs of whitespace -> one space, strip, lower-case.
"""

from __future__ import annotations

import html
import logging
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from bench.data.images import open_header
from bench.errors import BenchError

log = logging.getLogger("bench")

# OpenAI CLIP's normalisation constants, hard-coded in the reference's transform.
CLIP_MEAN = np.asarray((0.48145466, 0.4578275, 0.40821073), dtype=np.float32)
CLIP_STD = np.asarray((0.26862954, 0.26130258, 0.27577711), dtype=np.float32)
# Full-size decoding is part of the reference; this bounds the memory one image can take.
MAX_PIXELS = 40_000_000
_WHITESPACE = re.compile(r"\s+")
# What Pillow raises for undecodable data, besides OSError.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError)


def clean_text(text: str) -> str:
    """OpenAI CLIP's basic_clean + whitespace_clean + lower(), the text its BPE sees."""
    import ftfy

    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return _WHITESPACE.sub(" ", text).strip().lower()


def resized_size(width: int, height: int, n_px: int) -> tuple[int, int]:
    """torchvision Resize(n_px) of a PIL image: short side n_px, long side int(n_px * long / short)."""
    if width <= height:
        return n_px, int(n_px * height / width)
    return int(n_px * width / height), n_px


def crop_box(width: int, height: int, n_px: int) -> tuple[int, int, int, int]:
    """torchvision CenterCrop(n_px) box (left, top, right, bottom): offsets rounded, not floored."""
    top = int(round((height - n_px) / 2.0))
    left = int(round((width - n_px) / 2.0))
    return left, top, left + n_px, top + n_px


def _drafted(im: Any, path: Path, size: tuple[int, int]) -> Any:
    """A JPEG over MAX_PIXELS decoded at the smallest DCT scale still at least `size` (bounded
    memory: a 20000x20000 photo is read at 1/8). The reference decodes it whole, so its CLIP-S
    may differ slightly; said once per image. Other formats that large are refused."""
    if im.format != "JPEG":
        raise BenchError(f"{path}: image is {im.width}x{im.height} pixels, more than the {MAX_PIXELS} bench decodes")
    width, height = im.size
    im.draft(im.mode, size)
    log.warning("%s: %dx%d pixels; decoded at reduced size for CLIPScore (bounded memory), so its CLIP-S may "
                "differ slightly from the reference code's", path, width, height)
    return im


def reference_pixels(path: str | Path, n_px: int) -> np.ndarray:
    """(3, n_px, n_px) float32 pixels of one image file, as the reference code computes them.

    A missing, corrupt or truncated file, or one over MAX_PIXELS, is a BenchError naming it.
    """
    from PIL import Image

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with open_header(path) as im:  # a huge JPEG is not refused here: _drafted reads it at reduced size
                width, height = im.size
                if width * height > MAX_PIXELS:
                    im = _drafted(im, path, resized_size(width, height, n_px))
                im = im.resize(resized_size(width, height, n_px), Image.Resampling.BICUBIC)
        im = im.crop(crop_box(im.width, im.height, n_px)).convert("RGB")
    except BenchError:
        raise
    except FileNotFoundError:
        raise BenchError(f"{path}: image file not found") from None
    except (Image.DecompressionBombError, *_DECODE_ERRORS) as exc:
        raise BenchError(f"{path}: cannot decode image ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    arr = np.asarray(im, dtype=np.uint8).astype(np.float32) / np.float32(255.0)
    return ((arr - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1).copy()


class ClipTokens:
    """Token ids of texts as OpenAI's `clip.tokenize(text, truncate=True)` gives them.

    Texts are cleaned here (`clean_text`); the BPE is the loaded tokenizer's own, run on a private
    copy of its `tokenizers` backend with the normaliser switched off, because that normaliser
    (NFC, whitespace, lower-case) is not OpenAI's cleaning: it would compose the accents that
    `html.unescape` leaves decomposed.
    """

    def __init__(self, tokenizer, context_length: int) -> None:
        from tokenizers import Tokenizer

        self.context_length = context_length
        self.sot_id = int(tokenizer.bos_token_id)
        self.eot_id = int(tokenizer.eos_token_id)
        pad = tokenizer.pad_token_id
        self.pad_id = self.eot_id if pad is None else int(pad)
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._backend = None
        self._tokenizer = tokenizer
        self._add_specials = False
        if backend is not None:
            self._backend = Tokenizer.from_str(backend.to_str())
            self._backend.normalizer = None
            self._backend.no_padding()
            probe = self._backend.encode("a").ids
            # Start and end tokens come from the post-processor (CLIP's does); else add them here.
            self._add_specials = not (probe[:1] == [self.sot_id] and probe[-1:] == [self.eot_id])
            # One token past the context tells "was truncated" without tokenizing 10,000 characters.
            self._backend.enable_truncation(max_length=context_length + (-1 if self._add_specials else 1))

    def _ids(self, cleaned: list[str]) -> list[list[int]]:
        if self._backend is not None:
            ids = [e.ids for e in self._backend.encode_batch(cleaned)]
            return [[self.sot_id, *x, self.eot_id] for x in ids] if self._add_specials else ids
        # A tokenizer without a `tokenizers` backend: its own normalisation applies on top.
        return self._tokenizer(cleaned, truncation=True, max_length=self.context_length + 1)["input_ids"]

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, int]:
        """(ids, attention mask), both (n, context) int64, and how many texts were cut."""
        n_ctx = self.context_length
        ids = np.full((len(texts), n_ctx), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(texts), n_ctx), dtype=np.int64)
        n_truncated = 0
        for row, tokens in enumerate(self._ids([clean_text(t) for t in texts])):
            if len(tokens) > n_ctx:
                # start token, the first n_ctx - 2 text tokens, end token (clip.tokenize(truncate=True))
                tokens = list(tokens[: n_ctx - 1]) + [self.eot_id]
                n_truncated += 1
            ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
        return ids, mask, n_truncated
