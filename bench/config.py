"""Typed configuration of an experiment ("setting"). Loading and validation live in bench.settings.

Every field has a default so that `settings/base.toml` only states what differs; every setting
file extends the base, and unknown keys, wrong types and impossible values are errors naming the
file and the key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from bench.scoring.metrics import default_families

Precision = Literal["auto", "fp32", "bf16", "fp16"]
Quantization = Literal["none", "4bit", "8bit"]


# Default caption length cap per kind of run when a setting gives none: a LoRA captioner learns
# to stop after a Flickr/COCO-length caption; a zero-shot VLM's answers run longer (the
# key_objects prompt often passes 30 tokens), and lmms-eval captions with 64.
LORA_MAX_NEW_TOKENS = 30
ZERO_SHOT_MAX_NEW_TOKENS = 64

# The CLIP that CLIPScore/RefCLIPScore use unless a setting or `bench score --clip-model` names
# another: the ViT-B/32 of Hessel et al., so scores compare with the paper's.
DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"


@dataclass(frozen=True)
class GenerationConfig:
    strategy: Literal["greedy", "beam"] = "greedy"
    num_beams: int = 1
    # None: the backend's default (its row in bench.backends.table), fixed in config.json
    max_new_tokens: int | None = None
    no_repeat_ngram_size: int = 0
    repetition_penalty: float = 1.0
    batch_size: int = 16

    def for_kind(self, zero_shot: bool) -> "GenerationConfig":
        """max_new_tokens filled in: the setting's own, else the constant of the kind above (for
        code that decodes outside a planned run; a plan fixes the backend row's value first)."""
        if self.max_new_tokens is not None:
            return self
        default = ZERO_SHOT_MAX_NEW_TOKENS if zero_shot else LORA_MAX_NEW_TOKENS
        return dataclasses.replace(self, max_new_tokens=default)


@dataclass(frozen=True)
class LoraConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    # A preset name the backend understands ("attn", "attn_ffn") or explicit module names.
    targets: str | tuple[str, ...] = "attn_ffn"


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 3
    lr: float = 1e-4
    batch_size: int = 16
    grad_accum: int = 1
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    train_size: int | None = None  # None: the whole train split
    precision: Precision = "auto"


@dataclass(frozen=True)
class DataConfig:
    # Name of a datasets/*.toml file (or a path to one). The split itself (val size, seed or id
    # list) is declared in that file, never in a setting, so every run of a dataset scores the
    # same images.
    dataset: str = "flickr8k-1k"
    limit: int | None = None  # caption only the first N validation images


@dataclass(frozen=True)
class ModelConfig:
    """Per-backend model choice; `model` is a hub id or a local directory."""

    model: str
    quantization: Quantization = "none"
    options: dict[str, object] = field(default_factory=dict)
    # A sweep (zero-shot backends): one run per model here, each with the options above.
    models: tuple[str, ...] = ()
    # The `openai` backend (bench.backends.served): the endpoint serving `model`, and the
    # environment variable holding its key (the key itself is never in a file). Empty otherwise.
    base_url: str = ""
    api_key_env: str = ""


# Where and how to reach an endpoint, not what it computes: a run's identity leaves them out, so
# a server on another port or a higher concurrency reuses the finished run.
TRANSPORT_FIELDS: tuple[str, ...] = ("base_url", "api_key_env")
TRANSPORT_OPTIONS: tuple[str, ...] = ("max_concurrency", "timeout_s", "max_retry_s")


@dataclass(frozen=True)
class CostConfig:
    """Prices that turn a run's tokens or time into $ per 1,000 captions (bench.cost); unset: no
    $ figure. Labels only: a price change never recomputes a run."""

    usd_per_million_input: float | None = None  # hosted APIs: per million prompt tokens
    usd_per_million_output: float | None = None  # per million completion tokens
    usd_per_hour: float | None = None  # local runs: the GPU (or CPU) machine's hourly price


@dataclass(frozen=True)
class ScoringConfig:
    clip_model: str = DEFAULT_CLIP_MODEL
    # The metric table's default rows (bench.scoring.metrics) unless a setting names its own.
    metrics: tuple[str, ...] = field(default_factory=default_families)
    clip_batch_size: int = 64


@dataclass(frozen=True)
class Setting:
    name: str
    source: str  # the file it came from, for error messages and the run record
    backends: tuple[str, ...]
    models: dict[str, ModelConfig]
    data: DataConfig = DataConfig()
    lora: LoraConfig = LoraConfig()
    train: TrainConfig = TrainConfig()
    generation: GenerationConfig = GenerationConfig()
    scoring: ScoringConfig = ScoringConfig()
    cost: CostConfig = CostConfig()
    prompt: str | None = None  # name of a prompts/*.toml file (zero-shot backends)
    prompts: tuple[str, ...] = ()  # a sweep: one run per prompt (bench.sweep expands it)
    seed: int = 0
    group: str = ""  # e.g. "report", "demo": lets `bench run --group demo` run a family
    description: str = ""
    # Not a key of the file: True when a prompt setting has its own [lora] table (in its files, not
    # base.toml), so the zero-shot VLM is LoRA-trained before it captions (bench.settings.checks).
    vlm_lora: bool = False
    # Not a key of the file: dotted key -> the `bench run` flag that set it ("--model"), so an
    # error about that value names the flag, not a settings file.
    flags: dict[str, str] = field(default_factory=dict)
