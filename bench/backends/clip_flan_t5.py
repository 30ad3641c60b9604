"""`clip-flan-t5`: frozen CLIP ViT patch features -> trainable projection -> Flan-T5, LoRA on T5's decoder.

The image is the whole T5 encoder input: CLIP's last hidden state (CLS + every patch token, 197
tokens for ViT-B/16 at 224 px; no text prompt) goes through LayerNorm + Linear to T5's d_model and
enters the T5 encoder as `inputs_embeds`. The CLIP tower and all T5 weights are frozen; the
projection and the LoRA layers on the decoder (presets `attn` = SelfAttention + EncDecAttention
q,k,v,o; `attn_ffn` = those + DenseReluDense wi/wi_0/wi_1/wo) are trained.

Models: `ModelConfig(model=<T5 id or folder>, options={"vision_model": <CLIP id or folder>})`,
defaults `google/flan-t5-base` and `openai/clip-vit-base-patch16`. A bundle folder with `t5/` and
`vision/` subfolders (what `build_tiny` writes) may be given as `model` alone; an explicit
`vision_model` option still wins.

Adapter folder: peft's `adapter_config.json` + `adapter_model.safetensors` and the projection as
`projection.safetensors`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from bench.backends.base import PixelLoraCaptioner
from bench.models.collate import PixelTrainCollate, to_device
from bench.models.decoding import generation_kwargs
from bench.model_source import CLIP_TEXT_HALF, image_processor_loader, load_files, load_model
from bench.backends.base import AttentionTrace, Batch
from bench.backends.table import backend_spec
from bench.config import GenerationConfig, ModelConfig
from bench.errors import BenchError

DEFAULT_VISION = "openai/clip-vit-base-patch16"
PROJECTION_FILE = "projection.safetensors"
KNOWN_OPTIONS = ("vision_model",)
# Names are dotted suffixes of T5 modules inside `decoder.` (relative to the T5 model).
DECODER_SCOPE = r"decoder\."
ATTN_TARGETS = tuple(f"{block}.{p}" for block in ("SelfAttention", "EncDecAttention") for p in "qkvo")
PRESETS: dict[str, tuple[str, ...]] = {
    "attn": ATTN_TARGETS,
    "attn_ffn": ATTN_TARGETS + tuple(f"DenseReluDense.{w}" for w in ("wi", "wi_0", "wi_1", "wo")),
}
MAX_LABEL_TOKENS = 128
PROJECTION_SEED = 0  # the untrained projection is the same on every load


class ClipT5(nn.Module):
    """CLIP vision tower (frozen, always in eval mode) + projection + T5."""

    def __init__(self, vision: nn.Module, t5: nn.Module) -> None:
        super().__init__()
        self.vision = vision
        width, d_model = vision.config.hidden_size, t5.config.d_model
        self.projection = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, d_model))
        generator = torch.Generator().manual_seed(PROJECTION_SEED)
        nn.init.xavier_uniform_(self.projection[1].weight, generator=generator)
        nn.init.zeros_(self.projection[1].bias)
        self.t5 = t5

    def train(self, mode: bool = True) -> "ClipT5":
        super().train(mode)
        self.vision.eval()  # frozen: no dropout / batch statistics in the tower, ever
        return self

    def encode_image(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """T5 encoder input embeddings (batch, 1 + patches, d_model) and their attention mask."""
        with torch.no_grad():
            features = self.vision(pixel_values=pixel_values).last_hidden_state
        embeds = self.projection(features)
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        return embeds, mask

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        embeds, mask = self.encode_image(pixel_values)
        return self.t5(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss

    def generate(self, pixel_values: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        embeds, mask = self.encode_image(pixel_values)
        return self.t5.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)






def model_sources(model_cfg: ModelConfig, default_t5: str) -> tuple[str, str]:
    """(T5 id/folder, CLIP id/folder) from the model config, resolving a `t5/` + `vision/` bundle."""
    unknown = [k for k in model_cfg.options if k not in KNOWN_OPTIONS]
    if unknown:
        raise BenchError(f"model options: unknown key {unknown[0]!r} for backend 'clip-flan-t5' (known: {', '.join(KNOWN_OPTIONS)})")
    vision = model_cfg.options.get("vision_model")
    if vision is not None and (not isinstance(vision, str) or not vision.strip()):
        raise BenchError(f"model options: 'vision_model' must be a non-empty string, got {vision!r}")
    t5 = model_cfg.model or default_t5
    bundle = Path(t5).expanduser()
    if (bundle / "t5").is_dir():
        return str(bundle / "t5"), vision or str(bundle / "vision")
    return t5, vision or DEFAULT_VISION


class ClipFlanT5Captioner(PixelLoraCaptioner):
    name: ClassVar[str] = "clip-flan-t5"  # its row in bench.backends.table holds the defaults
    lora_scope: ClassVar[str] = DECODER_SCOPE
    lora_presets: ClassVar[dict[str, tuple[str, ...]]] = PRESETS

    # --- loading -------------------------------------------------------------------------------
    @classmethod
    def load(
        cls, model_cfg: ModelConfig, device: torch.device, prompt: Any = None, *, for_lora: bool = False,
    ) -> "ClipFlanT5Captioner":
        from transformers import AutoTokenizer, CLIPImageProcessorPil, CLIPVisionModel
        from transformers import GenerationConfig as HFGenerationConfig
        from transformers import T5ForConditionalGeneration

        cls.refuse_quantization(model_cfg)
        t5_id, vision_id = model_sources(model_cfg, backend_spec(cls.name).default_model)
        t5_field, vision_field = "models.clip-flan-t5.model", "models.clip-flan-t5.options.vision_model"
        t5 = load_model(T5ForConditionalGeneration, t5_id, "clip-flan-t5 T5 model", t5_field)
        tokenizer = load_files(AutoTokenizer.from_pretrained, t5_id, "clip-flan-t5 T5 tokenizer", t5_field)
        # The vision tower of a full CLIP checkpoint (openai/clip-vit-base-patch16): its text half
        # and projections are expected leftovers, not a problem worth a warning.
        vision = load_model(
            CLIPVisionModel, vision_id, "clip-flan-t5 vision_model", vision_field,
            expected_unexpected=CLIP_TEXT_HALF,
        )
        processor = load_files(
            image_processor_loader(CLIPImageProcessorPil), vision_id, "clip-flan-t5 vision_model image processor", vision_field
        )
        # Only bench's GenerationConfig decides decoding; hub defaults must not leak in.
        t5.generation_config = HFGenerationConfig(
            decoder_start_token_id=t5.config.decoder_start_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        vision.requires_grad_(False)
        t5.requires_grad_(False)
        model = ClipT5(vision, t5)  # the projection stays trainable
        model.to(device).eval()
        return cls(model_cfg, device, model, tokenizer, processor)

    # --- captioning ----------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, batch: Batch, gen: GenerationConfig) -> list[str]:
        self.model.eval()
        pixel_values = batch["pixel_values"].to(self.device, dtype=self.model.vision.dtype, non_blocking=True)
        ids = self.model.generate(pixel_values, **generation_kwargs(gen))
        return self.decode_generated(ids, gen)

    # --- attention maps ------------------------------------------------------------------------
    def generate_with_attention(self, batch: Batch, gen: GenerationConfig) -> list[AttentionTrace]:
        """T5 decoder cross-attention (EncDecAttention) of each caption token over the CLIP patches.

        T5's encoder positions are the projected CLIP tokens one to one (CLS, then the patches in
        row-major order), so encoder position 1 + k is patch k. CLS is dropped and each row
        renormalised over the patches. `batch["captions"]` (optional): trace those texts.
        """
        from bench.models.attention import captions_of, cross_attention_traces

        self.model.eval()
        pixel_values = batch["pixel_values"].to(self.device, dtype=self.model.vision.dtype)
        n = pixel_values.shape[0]
        captions = captions_of(batch, n)
        with torch.inference_mode():
            generated = self.model.generate(pixel_values, **generation_kwargs(gen)).tolist()
        vision_cfg = self.model.vision.config
        side = vision_cfg.image_size // vision_cfg.patch_size
        n_patches = side * side
        t5 = self.model.t5
        start = int(t5.config.decoder_start_token_id)
        stop = {int(self.tokenizer.eos_token_id), int(self.tokenizer.pad_token_id)}
        layers = [block.layer[1].EncDecAttention for block in t5.decoder.block]

        def forward(row: int, inputs: torch.Tensor) -> None:
            embeds, mask = self.model.encode_image(pixel_values[row : row + 1])
            t5(inputs_embeds=embeds, attention_mask=mask, decoder_input_ids=inputs)

        return cross_attention_traces(
            self.tokenizer, generated, captions, start=start, stop=stop, forward=forward, eager_model=t5,
            layers=layers, weights_index=-1, grid=(side, side), device=self.device,  # T5Attention: weights last
            where=f"T5 cross-attention over {n_patches} projected CLIP patches (CLS dropped, renormalised)",
        )

    # --- LoRA training -------------------------------------------------------------------------
    def train_collate(self) -> Callable[[Sequence[Any]], Batch]:
        return PixelTrainCollate(self.processor, self.tokenizer, self.tokenizer.eos_token_id, MAX_LABEL_TOKENS)

    def loss(self, batch: Batch) -> torch.Tensor:
        b = to_device(batch, self.device)
        return self.model(b["pixel_values"].to(self.model.vision.dtype), b["labels"])

    # --- the adapter folder (bench.models.adapters) ---------------------------------------------
    def lora_base(self) -> torch.nn.Module:
        return self.model.t5  # LoRA adapts the decoder; the projection is trained in full

    def adapter_extras(self) -> dict[str, torch.nn.Module]:
        return {PROJECTION_FILE: self.model.projection}
