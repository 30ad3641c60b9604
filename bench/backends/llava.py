"""Zero-shot LLaVA (default `llava-hf/llava-1.5-7b-hf`): the `vlm` backend with LLaVA-1.5 defaults.

Everything but the defaults lives in `bench.backends.vlm`: the prompt goes through the
processor's chat template (llava-1.5: "USER: <image>\\n<text> ASSISTANT:"), batches are
left-padded, only new tokens are decoded, decoding is the setting's alone. LLaVA-1.5's own
defaults: images padded to a square with the processor's mean colour (`image_mode = "pad"`, as
LLaVA's evaluation does; "crop" is the llava-hf processor's resize + centre crop), at most 64 new
tokens, and 4-/8-bit loading that leaves the vision tower, projector and lm_head unquantized.
This module adds the per-token attention maps of `bench attend`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from bench.models.caption_text import postprocess_caption, split_sentences
from bench.models.quantization import pick_dtype, quantization_config
from bench.models.vlm_lora import VlmLoraMixin
from bench.backends.base import Batch
from bench.backends.vlm import DEFAULT_PROMPT, VlmCaptioner, VlmCollate, encode, render_prompt
from bench.config import GenerationConfig

__all__ = [
    "DEFAULT_PROMPT", "LlavaCaptioner", "VlmCollate", "encode", "pick_dtype", "postprocess_caption",
    "quantization_config", "render_prompt", "split_sentences",
]
LlavaCollate = VlmCollate  # the name earlier code used


class LlavaCaptioner(VlmLoraMixin, VlmCaptioner):
    # Defaults in bench.backends.table; VlmLoraMixin: LoRA/QLoRA on the VLM itself (tested on LLaVA-1.5).
    name: ClassVar[str] = "llava"

    def generate_with_attention(self, batch: Batch, gen: GenerationConfig) -> list[Any]:
        """Attention of each caption token to the image-token positions, in every LLM layer.

        The prompt (with its image tokens) plus the caption tokens go through the model once with
        eager attention; the query row that predicts caption token t is kept and its weights over
        the image positions renormalised (the rest of the mass went to the text tokens; its share
        is reported as `image_mass`). `batch["captions"]` (optional): trace those texts.
        """
        from bench.models.attention import (
            captions_of, choose_tokens, cut_at_eos, eager_attention, square_grid, trace_forward, trace_of,
        )

        inputs = self._inputs(batch)
        prompt_len = inputs["input_ids"].shape[1]
        n = inputs["input_ids"].shape[0]
        captions = captions_of(batch, n)
        with torch.inference_mode():
            generated = self.model.generate(**inputs, generation_config=self._generation_config(gen))[:, prompt_len:].tolist()
        tok = self.processor.tokenizer
        stop = {i for i in (tok.eos_token_id, tok.pad_token_id, self.model.generation_config.eos_token_id) if isinstance(i, int)}
        image_token = int(getattr(self.model.config, "image_token_id", None) or self.model.config.image_token_index)
        drop_cls = getattr(self.model.config, "vision_feature_select_strategy", "default") == "full"
        layers = [layer.self_attn for layer in self.model.model.language_model.layers]

        def decode(ids: Sequence[int]) -> str:
            return postprocess_caption(self.processor.decode(list(ids), skip_special_tokens=True), self.template.sentences)

        def tokenize(text: str) -> list[int]:
            return list(tok(text, add_special_tokens=False)["input_ids"])

        traces: list[Any] = []
        for i in range(n):
            ids, source = choose_tokens(cut_at_eos(generated[i], stop), captions[i], decode, tokenize)
            prompt = inputs["input_ids"][i][inputs["attention_mask"][i].bool()]  # left padding removed
            image_cols = (prompt == image_token).nonzero().flatten()
            if drop_cls:  # "full" feature strategy: the first image token is CLIP's CLS
                image_cols = image_cols[1:]
            grid = square_grid(len(image_cols), f"llava prompt of image {i}")
            maps: list[torch.Tensor] = []
            mass: list[float] = []
            if ids:
                # Query row len(prompt) - 1 + t predicts caption token t: feed prompt + tokens[:-1].
                full = torch.cat([prompt, torch.tensor(ids[:-1], dtype=prompt.dtype, device=prompt.device)])[None]
                rows = slice(len(prompt) - 1, len(prompt) - 1 + len(ids))

                def forward(full: torch.Tensor = full, row: int = i) -> None:
                    self.model(
                        input_ids=full, attention_mask=torch.ones_like(full),
                        pixel_values=inputs["pixel_values"][row : row + 1], logits_to_keep=1,
                    )

                with eager_attention(self.model):
                    maps, mass = trace_forward(forward, layers, 1, rows, image_cols, full.shape[1])
            caption = captions[i] if captions[i] is not None else decode(ids)
            where = f"LLM self-attention to the {len(image_cols)} image tokens (renormalised over them)"
            traces.append(trace_of(tok, caption, ids, maps, mass, grid, source, where))
        return traces
