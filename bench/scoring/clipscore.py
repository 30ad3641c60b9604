"""CLIPScore and RefCLIPScore (Hessel et al. 2021), as in their reference code (jmhessel/clipscore).

What the reference code does, and this module mirrors:
- every text, candidate AND reference, is encoded as ``prefix + text`` with
  ``prefix = 'A photo depicts'`` made to end in one space (`CLIPCapDataset`);
- images are decoded and transformed exactly as the reference's torchvision pipeline, with PIL
  and numpy (`bench.scoring.clip_inputs.reference_pixels`), never with the captioning loader or
  transformers' image processor; texts are cleaned as OpenAI's tokenizer cleans them
  (`clip_inputs.clean_text`: ftfy, html.unescape twice, whitespace, lower-case) before BPE;
- texts are cut to CLIP's 77 tokens (``clip.tokenize(..., truncate=True)``: start token, the
  first 75 text tokens, end token) and pooled at the end token;
- features are L2-normalised; CLIP-S = w * max(cos(image, candidate), 0) with w = 2.5;
- the text side of RefCLIP-S is max over references of cos(candidate, reference), with NO weight;
  RefCLIP-S = 2 a b / (a + b) of a = CLIP-S and b = that text side.
The one place we follow the paper (Eq. 2: ``max(max_r cos(c, r), 0)``) over the code, which does
not clip the text side: b is clipped at 0 (the same as clipping each candidate-reference pair and
taking the max). For real CLIP models text-text cosines are positive, so the two agree; the
clipping only matters for a negative b, where the code's harmonic mean is negative or NaN.
We run float32 everywhere (the paper's GPU runs used float16 for images; its README documents the
CPU/GPU difference as ~1e-4).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.config import DEFAULT_CLIP_MODEL  # re-exported by bench.scoring
from bench.device import resolve_device
from bench.errors import BenchError
from bench.scoring.clip_inputs import ClipTokens, reference_pixels

CLIP_PREFIX = "A photo depicts"
CLIP_WEIGHT = 2.5


def prefixed(text: str, prefix: str = CLIP_PREFIX) -> str:
    """The reference code's `CLIPCapDataset`: prefix made to end with a space, then the text."""
    if prefix and prefix[-1] != " ":
        prefix += " "
    return prefix + text


def l2_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.sqrt(np.sum(x**2, axis=1, keepdims=True))


def clip_s(image_feats: np.ndarray, cand_feats: np.ndarray, w: float = CLIP_WEIGHT) -> np.ndarray:
    """Per-image CLIP-S = w * max(cos, 0) of row-aligned, already normalised features."""
    return w * np.clip(np.sum(image_feats * cand_feats, axis=1), 0, None)


def ref_text_side(cand_feats: np.ndarray, ref_feats: Sequence[np.ndarray]) -> np.ndarray:
    """max over references of the cosine, clipped at 0 (paper Eq. 2); ref_feats[i] is (n_refs_i, d)."""
    return np.array([max(float(np.max(refs @ cand)), 0.0) for cand, refs in zip(cand_feats, ref_feats)])


def harmonic_mean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """2ab/(a+b), and 0 where a + b == 0 (both clipped to 0), instead of NaN."""
    total = a + b
    safe = np.where(total > 0, total, 1.0)
    return np.where(total > 0, 2 * a * b / safe, 0.0)


@dataclass
class ClipScores:
    clip_s: np.ndarray  # per image, 0..2.5
    refclip_s: np.ndarray  # per image
    n_truncated: int  # texts (candidates and references) longer than CLIP's context


ProgressHook = Callable[[str, int], Callable[[int], None]]  # (description, total) -> advance(n)


class ClipScorer:
    """Loads one CLIP (lazily, once) and scores many caption sets with it."""

    def __init__(self, model: str = DEFAULT_CLIP_MODEL, device: str = "cpu", batch_size: int = 64) -> None:
        if batch_size < 1:
            raise BenchError(f"CLIP batch size must be >= 1, got {batch_size}")
        self.model_name = model
        self.device_request = device
        self.batch_size = batch_size
        self._model: Any = None
        self._processor: Any = None
        self._device: str | None = None
        self._tokens: ClipTokens | None = None

    # --- loading --------------------------------------------------------------------------
    def load(self) -> None:
        if self._model is not None:
            return
        self._model, self._processor = _from_pretrained(self.model_name)
        self._device = str(resolve_device(self.device_request))
        self._model = self._model.to(self._device).eval()

    @property
    def max_tokens(self) -> int:
        self.load()
        return int(self._model.config.text_config.max_position_embeddings)

    # --- encoding -------------------------------------------------------------------------
    def encode_texts(self, texts: Sequence[str], advance: Callable[[int], None] | None = None) -> tuple[np.ndarray, int]:
        """Normalised float32 features of prefixed texts, and how many were cut to 77 tokens."""
        import torch

        self.load()
        if self._tokens is None:
            self._tokens = ClipTokens(self._processor.tokenizer, self.max_tokens)
        full = [prefixed(t) for t in texts]
        feats: list[np.ndarray] = []
        n_truncated = 0
        for start in range(0, len(full), self.batch_size):
            batch = full[start : start + self.batch_size]
            # Padded to the full 77 as OpenAI's tokenizer does: each row's compute is identical
            # whatever the batch, so scores do not depend on the batch size.
            ids, mask, cut = self._tokens.encode(batch)
            n_truncated += cut
            with torch.inference_mode():
                out = self._model.get_text_features(
                    input_ids=torch.from_numpy(ids).to(self._device), attention_mask=torch.from_numpy(mask).to(self._device)
                )
            feats.append(_pooled(out).float().cpu().numpy())
            if advance:
                advance(len(batch))
        dim = int(self._model.config.projection_dim)
        arr = np.vstack(feats) if feats else np.zeros((0, dim), dtype=np.float32)
        return l2_normalize(arr), n_truncated

    def encode_images(self, paths: Sequence[Path], advance: Callable[[int], None] | None = None) -> np.ndarray:
        """Normalised float32 image features of image files, decoded as the reference code does
        (`reference_pixels`) in threads (PIL frees the GIL)."""
        import torch

        self.load()
        n_px = int(self._model.config.vision_config.image_size)
        feats: list[np.ndarray] = []
        with ThreadPoolExecutor(max_workers=4) as pool:
            for start in range(0, len(paths), self.batch_size):
                pixels = np.stack(list(pool.map(lambda p: reference_pixels(p, n_px), paths[start : start + self.batch_size])))
                with torch.inference_mode():
                    out = self._model.get_image_features(pixel_values=torch.from_numpy(pixels).to(self._device))
                feats.append(_pooled(out).float().cpu().numpy())
                if advance:
                    advance(len(pixels))
        dim = int(self._model.config.projection_dim)
        arr = np.vstack(feats) if feats else np.zeros((0, dim), dtype=np.float32)
        return l2_normalize(arr)

    # --- scoring --------------------------------------------------------------------------
    def score(
        self,
        candidates: Sequence[str],
        references: Sequence[Sequence[str]],
        image_paths: Sequence[Path],
        progress: ProgressHook | None = None,
    ) -> ClipScores:
        """Row-aligned candidates, reference lists and images -> per-image CLIP-S and RefCLIP-S."""
        if not (len(candidates) == len(references) == len(image_paths)):
            raise ValueError("candidates, references and images must be aligned")
        flat_refs = [r for refs in references for r in refs]
        n_texts = len(candidates) + len(flat_refs)
        img_adv = progress("CLIP images", len(image_paths)) if progress else None
        image_feats = self.encode_images(image_paths, img_adv)
        txt_adv = progress("CLIP texts", n_texts) if progress else None
        text_feats, n_truncated = self.encode_texts(list(candidates) + flat_refs, txt_adv)
        cand_feats = text_feats[: len(candidates)]
        ref_feats: list[np.ndarray] = []
        pos = len(candidates)
        for refs in references:
            ref_feats.append(text_feats[pos : pos + len(refs)])
            pos += len(refs)
        per_clip = clip_s(image_feats, cand_feats)
        per_ref = harmonic_mean(per_clip, ref_text_side(cand_feats, ref_feats))
        return ClipScores(clip_s=per_clip, refclip_s=per_ref, n_truncated=int(n_truncated))

    def close(self) -> None:
        self._model = None
        self._processor = None
        self._tokens = None


def _from_pretrained(name: str) -> tuple[Any, Any]:
    """CLIP model and processor through bench.model_source (a local folder or a hub id)."""
    import torch
    from transformers import AutoConfig, AutoProcessor, CLIPModel

    from bench.model_source import load_files, load_model

    what, field = "CLIP model", "scoring.clip_model (or --clip-model)"
    config = load_files(AutoConfig.from_pretrained, name, what, field)
    if config.model_type != "clip":
        raise BenchError(f"{what} {name!r}: config.json has model_type {config.model_type!r}, not 'clip'")
    # strict: a partial checkpoint would be filled with random weights and score silently wrong.
    model = load_model(CLIPModel, name, what, field, strict=True, dtype=torch.float32)
    processor = load_files(AutoProcessor.from_pretrained, name, f"{what} processor", field)
    return model, processor


def _pooled(out: Any):
    """transformers 5 returns a ModelOutput whose pooler_output is projected; older ones a tensor."""
    return out if hasattr(out, "float") else out.pooler_output
