"""Decoding settings and generated-text clean-up shared by the LoRA captioners."""

from __future__ import annotations

from typing import Any

import torch

from bench.config import GenerationConfig


def generation_kwargs(gen: GenerationConfig) -> dict[str, Any]:
    """transformers `generate` arguments for bench's GenerationConfig (deterministic: no sampling)."""
    beams = max(1, gen.num_beams) if gen.strategy == "beam" else 1
    return {
        "do_sample": False,
        "num_beams": beams,
        "max_new_tokens": gen.for_kind(zero_shot=False).max_new_tokens,
        "no_repeat_ngram_size": gen.no_repeat_ngram_size,
        "repetition_penalty": gen.repetition_penalty,
        "early_stopping": beams > 1,
    }


def clean_captions(tokenizer: Any, ids: torch.Tensor) -> list[str]:
    """Decode generated ids to one plain line each (special tokens dropped, whitespace collapsed)."""
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return [" ".join(t.split()) for t in texts]
