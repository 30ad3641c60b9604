"""The backend table: every backend's name, class and the facts the planner needs, without torch.

Planning a run (`bench run`, `bench list`, settings validation) must answer in well under 2 s, so
it reads this table and never imports a backend module; only running a model imports the class,
through `backend_class`. Adding a backend is its module (one `Captioner` subclass) plus one row
here, as lm-evaluation-harness registers tasks lazily by name.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from bench.config import LORA_MAX_NEW_TOKENS, ZERO_SHOT_MAX_NEW_TOKENS
from bench.errors import BenchError

# Images the VLM processors get as the family's evaluation code gives them (bench.backends.vlm).
_VLM_OPTIONS: Mapping[str, Any] = MappingProxyType({"image_mode": "auto"})


@dataclass(frozen=True)
class BackendSpec:
    name: str
    target: str  # "module:Class", imported only when a model runs
    # "lora": a captioner every LoRA setting fine-tunes; "zero-shot": a VLM prompted as is.
    kind: Literal["lora", "zero-shot"]
    # None: a setting must name the model (`vlm` runs whichever VLM `--model` gives).
    default_model: str | None
    default_max_new_tokens: int  # generation.max_new_tokens when a setting leaves it unset
    default_options: Mapping[str, Any] = field(default_factory=dict)  # recorded in config.json
    # A zero-shot VLM that a prompt setting with its own [lora] table LoRA-trains first.
    supports_vlm_lora: bool = False

    @property
    def supports_lora(self) -> bool:
        return self.kind == "lora"

    @property
    def module(self) -> str:
        return self.target.partition(":")[0]


# The row order is the run order: "a LoRA setting applies to both LoRA backends" runs vit-gpt2
# first, and `bench list` shows them in this order.
BACKENDS: dict[str, BackendSpec] = {
    spec.name: spec
    for spec in (
        BackendSpec("vit-gpt2", "bench.backends.vit_gpt2:VitGpt2Captioner", "lora",
                    "nlpconnect/vit-gpt2-image-captioning", LORA_MAX_NEW_TOKENS),
        BackendSpec("clip-flan-t5", "bench.backends.clip_flan_t5:ClipFlanT5Captioner", "lora",
                    "google/flan-t5-base", LORA_MAX_NEW_TOKENS),
        BackendSpec("llava", "bench.backends.llava:LlavaCaptioner", "zero-shot",
                    "llava-hf/llava-1.5-7b-hf", ZERO_SHOT_MAX_NEW_TOKENS, _VLM_OPTIONS, supports_vlm_lora=True),
        BackendSpec("vlm", "bench.backends.vlm:VlmCaptioner", "zero-shot",
                    None, ZERO_SHOT_MAX_NEW_TOKENS, _VLM_OPTIONS),
        # Any OpenAI-compatible endpoint (vLLM, SGLang, llama.cpp, Ollama, hosted APIs): docs/served.md.
        BackendSpec("openai", "bench.backends.served:ServedCaptioner", "zero-shot",
                    None, ZERO_SHOT_MAX_NEW_TOKENS),
    )
}


def backend_table() -> Mapping[str, BackendSpec]:
    return BACKENDS


def _unknown(name: str) -> BenchError:
    return BenchError(f"unknown backend {name!r}; available: {', '.join(sorted(BACKENDS))}")


def backend_spec(name: str) -> BackendSpec:
    try:
        return BACKENDS[name]
    except KeyError:
        raise _unknown(name) from None


def backend_class(name: str) -> Any:
    """The `Captioner` subclass of a backend, imported now (this is where torch gets loaded)."""
    spec = backend_spec(name)
    module, _, cls_name = spec.target.partition(":")
    cls = getattr(importlib.import_module(module), cls_name)
    if getattr(cls, "name", None) != name:  # the class speaks for its row (messages, adapter files)
        raise RuntimeError(f"{spec.target}: name is {getattr(cls, 'name', None)!r}, its table row says {name!r}")
    return cls


def ordered_backends(names: list[str]) -> tuple[str, ...]:
    """Names in table order; names the table lacks last, by name."""
    rank = {n: i for i, n in enumerate(BACKENDS)}
    return tuple(sorted(names, key=lambda n: (rank.get(n, len(rank)), n)))


def lora_backends() -> tuple[str, ...]:
    return ordered_backends([b.name for b in BACKENDS.values() if b.supports_lora])


def zero_shot_backends() -> tuple[str, ...]:
    """Zero-shot backends a setting with a prompt runs when it names none: those with a default
    model (`vlm` has none: it runs the models a setting or `--model` names)."""
    return ordered_backends([b.name for b in BACKENDS.values() if not b.supports_lora and b.default_model])


def is_lora_backend(name: str) -> bool:
    return backend_spec(name).supports_lora
