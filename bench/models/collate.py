"""Batches of the LoRA captioners: samples -> pixel values (+ labels for training).

The collate classes run in DataLoader workers (top-level classes, so they pickle) and decode
images through `bench.data.load_image`, the one safe loader (validation, size limits).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from bench.data import load_image


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """Tensors moved to `device` (non-blocking from pinned memory); other entries kept as they are."""
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
    }


def labels_from(tokenizer: Any, captions: Sequence[str], eos_id: int, max_len: int) -> torch.Tensor:
    """Label ids `caption + eos` (at most max_len), padded with -100.

    Padding is masked by -100, not by token id, so a pad token equal to eos (GPT-2) still teaches
    the model to stop.
    """
    enc = tokenizer(list(captions), add_special_tokens=False)
    rows = [ids[: max_len - 1] + [eos_id] for ids in enc["input_ids"]]
    width = max(len(r) for r in rows)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, row in enumerate(rows):
        labels[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return labels


@dataclass
class PixelCaptionCollate:
    """Samples -> pixel values; runs in DataLoader workers (a top-level class, so it pickles)."""

    processor: Any

    def __call__(self, samples: Sequence[Any]) -> dict[str, Any]:
        images = [load_image(s.path) for s in samples]
        pixel_values = self.processor(images=images, return_tensors="pt")["pixel_values"]
        return {"image_ids": [s.image_id for s in samples], "pixel_values": pixel_values}


@dataclass
class PixelTrainCollate:
    """(Sample, caption) pairs -> pixel values + labels (`caption eos`, padding = -100)."""

    processor: Any
    tokenizer: Any
    eos_id: int
    max_len: int

    def __call__(self, pairs: Sequence[tuple[Any, str]]) -> dict[str, Any]:
        batch = PixelCaptionCollate(self.processor)([s for s, _ in pairs])
        batch["labels"] = labels_from(self.tokenizer, [c for _, c in pairs], self.eos_id, self.max_len)
        return batch
