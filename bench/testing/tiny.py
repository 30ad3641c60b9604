"""The tiny random model of each backend, by backend name: what tests and benchmarks build
instead of downloading weights (the demo builds its own, with its own tokenizer corpus).

Not on the production `Captioner` interface: the backends only load models, whoever needs a tiny
one asks here. Builders are named "module:function" and imported on demand, as the backend table
does.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from bench.errors import BenchError

TINY_BUILDERS: dict[str, str] = {
    "vit-gpt2": "bench.tiny.vit_gpt2:build_tiny_vit_gpt2",
    "clip-flan-t5": "bench.tiny.clip_flan_t5:build_tiny_clip_flan_t5",  # writes out/t5 and out/vision
    "llava": "bench.tiny.llava:build_tiny_llava",
    "vlm": "bench.tiny.llava:build_tiny_llava",  # the other VLM families: bench.testing.vlm
}


def build_tiny(backend: str, out_dir: Path, seed: int = 0) -> Path:
    """Write a tiny seeded random model of this backend (with a local tokenizer) to out_dir."""
    try:
        module, _, func = TINY_BUILDERS[backend].partition(":")
    except KeyError:
        raise BenchError(f"no tiny builder for backend {backend!r}; known: {', '.join(sorted(TINY_BUILDERS))}") from None
    return getattr(importlib.import_module(module), func)(Path(out_dir), seed)
