"""`vit-gpt2`: a ViT encoder + GPT-2 decoder captioner (`VisionEncoderDecoderModel`) with LoRA on GPT-2.

Default model `nlpconnect/vit-gpt2-image-captioning`. Like that model, GPT-2 pads with its eos token
and starts decoding from it. LoRA (peft) adapts only decoder modules: presets `attn` (self- and
cross-attention projections) and `attn_ffn` (those + the MLP), or an explicit list of module names
such as `["c_attn", "crossattention.q_attn"]` (a name matches a dotted suffix inside the decoder).
The ViT encoder is always frozen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch

from bench.backends.base import PixelLoraCaptioner
from bench.models.collate import PixelTrainCollate, to_device
from bench.models.decoding import generation_kwargs
from bench.model_source import image_processor_loader, load_files, load_model
from bench.backends.base import AttentionTrace, Batch
from bench.backends.table import backend_spec
from bench.config import GenerationConfig, ModelConfig
from bench.errors import BenchError

# Names are dotted suffixes of GPT-2 modules inside `decoder.` (never the ViT encoder).
DECODER_SCOPE = r"decoder\."
ATTN_TARGETS = ("attn.c_attn", "attn.c_proj", "crossattention.c_attn", "crossattention.q_attn", "crossattention.c_proj")
PRESETS: dict[str, tuple[str, ...]] = {
    "attn": ATTN_TARGETS,
    "attn_ffn": ATTN_TARGETS + ("mlp.c_fc", "mlp.c_proj"),
}
MAX_LABEL_TOKENS = 128


class VitGpt2Captioner(PixelLoraCaptioner):
    name: ClassVar[str] = "vit-gpt2"  # its row in bench.backends.table holds the defaults
    lora_scope: ClassVar[str] = DECODER_SCOPE
    lora_presets: ClassVar[dict[str, tuple[str, ...]]] = PRESETS
    lora_fan_in_fan_out: ClassVar[bool] = True  # GPT-2's Conv1D stores weights transposed

    # --- loading -------------------------------------------------------------------------------
    @classmethod
    def load(
        cls, model_cfg: ModelConfig, device: torch.device, prompt: Any = None, *, for_lora: bool = False,
    ) -> "VitGpt2Captioner":
        from transformers import AutoTokenizer, GenerationConfig as HFGenerationConfig
        from transformers import ViTImageProcessorPil, VisionEncoderDecoderModel

        cls.refuse_quantization(model_cfg)
        if model_cfg.options:
            raise BenchError(f"model options: backend 'vit-gpt2' takes none, got {', '.join(map(repr, model_cfg.options))}")
        model_id = model_cfg.model or backend_spec(cls.name).default_model
        field = "models.vit-gpt2.model"
        model = load_model(VisionEncoderDecoderModel, model_id, "vit-gpt2 model", field)
        tokenizer = load_files(AutoTokenizer.from_pretrained, model_id, "vit-gpt2 tokenizer", field)
        processor = load_files(image_processor_loader(ViTImageProcessorPil), model_id, "vit-gpt2 image processor", field)
        # GPT-2 has no pad token: pad with eos and start decoding from it, as nlpconnect's model does.
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        eos = tokenizer.eos_token_id
        model.config.decoder_start_token_id = _first_id(model.config, "decoder_start_token_id", tokenizer.bos_token_id, eos)
        model.config.pad_token_id = _first_id(model.config, "pad_token_id", eos)
        model.config.eos_token_id = eos
        # A clean generation config: the hub's defaults (e.g. num_beams=4, max_length=16) must not
        # leak into runs; bench's GenerationConfig is the only source of decoding settings.
        model.generation_config = HFGenerationConfig(
            decoder_start_token_id=model.config.decoder_start_token_id,
            bos_token_id=model.config.decoder_start_token_id,
            eos_token_id=eos,
            pad_token_id=model.config.pad_token_id,
        )
        model.requires_grad_(False)  # frozen until add_lora; the encoder stays frozen for good
        model.to(device).eval()
        return cls(model_cfg, device, model, tokenizer, processor)

    # --- captioning ----------------------------------------------------------------------------
    @torch.inference_mode()
    @torch.inference_mode()  # as a bare script would: no autograd bookkeeping while generating
    def generate(self, batch: Batch, gen: GenerationConfig) -> list[str]:
        self.model.eval()
        pixel_values = batch["pixel_values"].to(self.device, dtype=self.model.dtype, non_blocking=True)
        ids = self.model.generate(pixel_values=pixel_values, **generation_kwargs(gen))
        return self.decode_generated(ids, gen)

    # --- attention maps ------------------------------------------------------------------------
    def generate_with_attention(self, batch: Batch, gen: GenerationConfig) -> list[AttentionTrace]:
        """GPT-2 cross-attention of each caption token over the ViT patches (see `bench.models.attention`).

        `batch["captions"]` (optional) are the run's captions: the traces are for those texts.
        The ViT's CLS position is dropped and each row renormalised over the patches.
        """
        from bench.models.attention import captions_of, cross_attention_traces

        self.model.eval()
        pixel_values = batch["pixel_values"].to(self.device, dtype=self.model.dtype)
        n = pixel_values.shape[0]
        captions = captions_of(batch, n)
        with torch.inference_mode():
            generated = self.model.generate(pixel_values=pixel_values, **generation_kwargs(gen)).tolist()
        grid = _patch_grid(self.model.config.encoder)
        n_patches = grid[0] * grid[1]
        start = int(self.model.config.decoder_start_token_id)
        stop = {int(self.tokenizer.eos_token_id), int(self.model.config.pad_token_id)}
        layers = [block.crossattention for block in self.model.decoder.transformer.h]

        def forward(row: int, inputs: torch.Tensor) -> None:
            self.model(pixel_values=pixel_values[row : row + 1], decoder_input_ids=inputs)

        return cross_attention_traces(
            self.tokenizer, generated, captions, start=start, stop=stop, forward=forward, eager_model=self.model,
            layers=layers, weights_index=1, grid=grid, device=self.device,  # ViT: CLS first
            where=f"GPT-2 cross-attention over {n_patches} ViT patches (CLS dropped, renormalised)",
        )

    # --- LoRA training -------------------------------------------------------------------------
    def _max_label_tokens(self) -> int:
        return min(MAX_LABEL_TOKENS, int(getattr(self.model.config.decoder, "n_positions", MAX_LABEL_TOKENS)))

    def train_collate(self) -> Callable[[Sequence[Any]], Batch]:
        return PixelTrainCollate(self.processor, self.tokenizer, self.tokenizer.eos_token_id, self._max_label_tokens())

    def loss(self, batch: Batch) -> torch.Tensor:
        b = to_device(batch, self.device)
        return self.model(pixel_values=b["pixel_values"].to(self.model.dtype), labels=b["labels"]).loss


def _token_id(config: Any, name: str) -> int | None:
    """`config.<name>`, None when undefined: transformers 5's VisionEncoderDecoderConfig raises
    AttributeError for a token id the checkpoint's config.json does not define."""
    value = getattr(config, name, None)
    return None if value is None else int(value)


def _first_id(config: Any, name: str, *fallbacks: int | None) -> int:
    """The id from the top-level config, else the decoder's config, else the first fallback set."""
    for value in (_token_id(config, name), _token_id(getattr(config, "decoder", None), name), *fallbacks):
        if value is not None:
            return int(value)
    raise BenchError(f"config.json: field {name!r} is undefined and the tokenizer has no eos token to use instead")


def _patch_grid(encoder_config: Any) -> tuple[int, int]:
    """(rows, cols) of ViT patches for the configured input size."""
    size, patch = encoder_config.image_size, encoder_config.patch_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)
    return height // ph, width // pw
