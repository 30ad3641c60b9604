"""The captioner interface every backend implements.

A backend is one module in this package that defines one `Captioner` subclass plus its row in
`bench.backends.table` (name, class, defaults: what planning reads without torch). Test-only
builders (tiny random models) live beside the demo and tests that use them, not here.

Life of a backend in a run: `load()` the model (hub id or local dir), optionally `add_lora()` and
train through `bench.training` using `train_collate` + `loss`, then caption: a DataLoader whose
workers run `caption_collate` (image decoding and the processor, in parallel with the model), and
`generate` on each batch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from bench.config import GenerationConfig, LoraConfig, ModelConfig
from bench.errors import BenchError
from bench.models.adapters import AdapterMixin
from bench.models.collate import PixelCaptionCollate
from bench.models.decoding import clean_captions, generation_kwargs
from bench.models.lora_targets import add_peft, peft_lora_config, resolve_targets

Batch = dict[str, Any]


@dataclass
class AttentionTrace:
    """Where each generated token looked, for `bench attend`.

    `maps[t]` is (heads, layers, grid_h * grid_w) attention of generated token t over the image
    patches, each row summing to 1 over the patches before any aggregation (renormalised over the
    image positions for decoders that also attend to text).
    """

    caption: str
    tokens: list[str]
    maps: list[torch.Tensor]
    grid: tuple[int, int]


class Captioner(ABC):
    # The backend's row in bench.backends.table, which holds its defaults and capabilities.
    name: ClassVar[str]
    # The LoRA settings of the adapter added by `add_lora` (part of a training run's fingerprint).
    lora_config: LoraConfig | None = None
    # What turns images into model inputs (its image_mean/std let `bench attend` undo them).
    processor: Any = None

    def __init__(self, model_cfg: ModelConfig, device: torch.device, prompt: str | None = None) -> None:
        self.model_cfg = model_cfg
        self.device = device
        self.prompt = prompt
        # One flag per caption of the last `generate` call: True where generation stopped at
        # max_new_tokens without an end token (a fragment). Set by backends (`hit_token_limit`).
        self.last_truncated: list[bool] = []

    # --- loading ---------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def load(
        cls, model_cfg: ModelConfig, device: torch.device, prompt: Any = None, *, for_lora: bool = False,
    ) -> "Captioner":
        """The captioner, ready to caption: weights from a hub id or local directory (safetensors,
        no remote code). `prompt` (a prompt name or template) is for prompted backends;
        `for_lora`: the model is about to be LoRA-trained (a VLM LoRA run)."""

    # --- captioning --------------------------------------------------------------------------
    @abstractmethod
    def caption_collate(self) -> Callable[[Sequence[Any]], Batch]:
        """A picklable function run in DataLoader workers: list of `bench.data.Sample` -> batch.

        The batch keeps `image_ids` (list[str]) next to the tensors.
        """

    @abstractmethod
    def generate(self, batch: Batch, gen: GenerationConfig) -> list[str]:
        """One caption per image in the batch, post-processed to plain text; sets
        `self.last_truncated` (see `hit_token_limit`) so the run can count cut-off captions."""

    # --- LoRA training (backends with supports_lora) -------------------------------------------
    def add_lora(self, lora: LoraConfig) -> None:
        raise BenchError(f"backend {self.name!r} does not support LoRA training")

    def train_collate(self) -> Callable[[Sequence[Any]], Batch]:
        """Picklable: list of (Sample, caption) -> batch with labels."""
        raise BenchError(f"backend {self.name!r} does not support LoRA training")

    def loss(self, batch: Batch) -> torch.Tensor:
        raise BenchError(f"backend {self.name!r} does not support LoRA training")

    def save_adapter(self, out_dir: Path) -> None:
        raise BenchError(f"backend {self.name!r} does not support LoRA training")

    def load_adapter(self, adapter_dir: Path) -> None:
        raise BenchError(f"backend {self.name!r} does not support LoRA training")

    def trainable_parameters(self) -> tuple[int, int]:
        """(trainable, total) parameter counts."""
        model = self.torch_module()
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return trainable, total

    @abstractmethod
    def torch_module(self) -> torch.nn.Module:
        """The nn.Module that training optimises and accelerate wraps."""

    def resolved_options(self) -> dict[str, object] | None:
        """What a zero-shot run resolved from its options (family, image mode), for results.json."""
        return None

    # --- attention maps ------------------------------------------------------------------------
    def generate_with_attention(self, batch: Batch, gen: GenerationConfig) -> list[AttentionTrace]:
        raise BenchError(f"backend {self.name!r} cannot produce attention maps")


def hit_token_limit(new_tokens: torch.Tensor, end_ids: Sequence[int], max_new_tokens: int) -> list[bool]:
    """Per row of generated tokens (prompt or decoder start removed): True when the row reached
    `max_new_tokens` and holds none of `end_ids` (the cap stopped it, not the model). Rows that
    ended earlier carry an end token followed by padding; a batch shorter than the cap has none."""
    rows = new_tokens.shape[0]
    if new_tokens.shape[1] < max_new_tokens:
        return [False] * rows
    ends = torch.isin(new_tokens, torch.tensor(sorted(set(int(i) for i in end_ids)), device=new_tokens.device))
    return [not bool(row_ends) for row_ends in ends.any(dim=1).tolist()]


class PixelLoraCaptioner(AdapterMixin, Captioner):
    """What the two LoRA backends share: an image processor feeding `pixel_values` to a
    seq2seq-style model, a tokenizer, and a LoRA adapter added by `add_lora` (saved and loaded by
    `AdapterMixin`)."""

    def __init__(self, model_cfg: ModelConfig, device: torch.device, model: Any, tokenizer: Any, processor: Any) -> None:
        super().__init__(model_cfg, device)
        self.model = model
        self.tokenizer = tokenizer
        self.processor = processor
        self.peft_model: Any | None = None
        self.lora_config: LoraConfig | None = None

    # Where LoRA goes, per backend: the part of `lora_base()` targets are resolved in, the
    # presets ("attn", "attn_ffn") and whether the layers store weights transposed (GPT-2's Conv1D).
    lora_scope: ClassVar[str]
    lora_presets: ClassVar[dict[str, tuple[str, ...]]]
    lora_fan_in_fan_out: ClassVar[bool] = False

    @classmethod
    def refuse_quantization(cls, model_cfg: ModelConfig) -> None:
        if model_cfg.quantization != "none":
            raise BenchError(f"model quantization {model_cfg.quantization!r}: backend {cls.name!r} loads full precision only")

    def caption_collate(self) -> PixelCaptionCollate:
        return PixelCaptionCollate(self.processor)

    def add_lora(self, lora: LoraConfig) -> None:
        if self.peft_model is not None:
            raise BenchError("lora: this model already has a LoRA adapter")
        base = self.lora_base()
        regex = resolve_targets(base, lora.targets, scope=self.lora_scope, presets=self.lora_presets, backend=self.name)
        # peft freezes what it wraps except the LoRA layers (clip-flan-t5's projection, outside it, trains).
        self.peft_model = add_peft(base, peft_lora_config(lora, regex, fan_in_fan_out=self.lora_fan_in_fan_out))
        self.lora_config = lora

    def decode_generated(self, ids: torch.Tensor, gen: GenerationConfig) -> list[str]:
        """Captions of generated decoder ids (the start token first); flags `last_truncated`."""
        limit = generation_kwargs(gen)["max_new_tokens"]
        self.last_truncated = hit_token_limit(ids[:, 1:], [int(self.tokenizer.eos_token_id)], limit)
        return clean_captions(self.tokenizer, ids)

    def torch_module(self) -> torch.nn.Module:
        return self.model
