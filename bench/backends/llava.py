"""Zero-shot LLaVA captioning (default `llava-hf/llava-1.5-7b-hf`) through transformers.

The prompt comes from a `prompts/<name>.toml` template and is put into the model's own chat
format by the processor's chat template (for llava-1.5: "USER: <image>\\n<text> ASSISTANT:").
Batches are left-padded so that every row's new tokens start at the same position; captions of a
batch are then identical to those of batch size 1. The generated text is post-processed to one
caption: role prefixes and quotes stripped, the first `sentences` sentences of the prompt kept.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.backends.base import Batch, Captioner, register_backend
from bench.config import GenerationConfig, ModelConfig
from bench.errors import BenchError
from bench.model_source import load_files, load_model
from bench.precision import cuda_half_dtype
from bench.prompts import PromptTemplate, load_prompt

DEFAULT_PROMPT = "brief"
_OPTIONS = {"attn_implementation": ("sdpa", "eager")}


# --- device, precision, quantization -------------------------------------------------------------

def pick_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs that compute it natively, else fp16 on GPUs, fp32 on CPU."""
    if device.type == "cuda":
        return cuda_half_dtype()
    if device.type == "mps":
        return torch.float16
    return torch.float32


def quantization_config(quantization: str, device: torch.device) -> Any:
    """A `transformers.BitsAndBytesConfig` for "4bit"/"8bit", None for "none".

    bitsandbytes' quantized kernels are only used here on CUDA; anything else is a one-line error
    instead of a slow or broken fallback.
    """
    if quantization == "none":
        return None
    if quantization not in ("4bit", "8bit"):
        raise BenchError(f"models.llava.quantization must be 'none', '4bit' or '8bit', got {quantization!r}")
    if device.type != "cuda" or not torch.cuda.is_available():
        raise BenchError(
            f"models.llava.quantization = {quantization!r} needs a CUDA GPU (bitsandbytes), "
            f"but the device is {device.type}; use quantization = \"none\" here"
        )
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # an ImportError or a broken CUDA setup inside bitsandbytes
        raise BenchError(
            f"models.llava.quantization = {quantization!r} needs bitsandbytes, which cannot be "
            f"imported: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from exc
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=cuda_half_dtype(),
    )


def _check_options(options: dict[str, object]) -> dict[str, str]:
    resolved = {"attn_implementation": "sdpa"}
    for key, value in options.items():
        if key not in _OPTIONS:
            raise BenchError(
                f"models.llava.options: unknown key {key!r} (allowed: {', '.join(_OPTIONS)})"
            )
        if value not in _OPTIONS[key]:
            allowed = " or ".join(repr(v) for v in _OPTIONS[key])
            raise BenchError(f"models.llava.options.{key} must be {allowed}, got {value!r}")
        resolved[key] = str(value)
    return resolved


# --- prompt ----------------------------------------------------------------------------------------

def render_prompt(processor: Any, template: PromptTemplate) -> str:
    """The full text prompt: the processor's chat template, else llava-1.5's "USER: ... ASSISTANT:"."""
    chat_template = getattr(processor, "chat_template", None)
    if chat_template:
        parts: list[dict[str, str]] = [{"type": "text", "text": template.text}]
        parts.insert(0 if template.image_first else 1, {"type": "image"})
        conversation = [{"role": "user", "content": parts}]
        return processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    image_token = getattr(processor, "image_token", None) or "<image>"
    return f"USER: {template.render(image_token)} ASSISTANT:"


# --- post-processing ---------------------------------------------------------------------------------

_ROLE_PREFIX = re.compile(r"^\s*(?:ASSISTANT|USER|Assistant|User)\s*:\s*")
# A role marker later in the text starts a new (hallucinated) turn: the caption ends before it.
_NEXT_TURN = re.compile(r"\s*\b(?:ASSISTANT|USER)\s*:")
_QUOTES = "\"'\u201c\u201d\u2018\u2019`"
_QUOTE_PAIRS = {'"': '"', "\u201c": "\u201d", "'": "'", "\u2018": "\u2019", "`": "`"}
# End of a sentence: terminal punctuation, closing quotes/brackets, then whitespace.
_BOUNDARY = re.compile(rf"[.!?]+[{_QUOTES})\]]*\s+")
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr st jr sr prof rev gen col lt sgt mt ft vs etc e.g i.e cf approx no inc ltd co "
    "u.s u.k a.m p.m".split()
)


def _strip_quotes(text: str) -> str:
    """Drop quotes around the whole text ('"A dog."', '\u201cA dog\u201d.'), never a quoted part of it
    ('"Stop" signs stand here' keeps its quotes)."""
    while len(text) >= 2 and text[0] in _QUOTE_PAIRS:
        opening, closing = text[0], _QUOTE_PAIRS[text[0]]
        body, tail = text[1:], ""
        if len(body) >= 2 and body[-1] in ".!?" and body[-2] == closing:
            body, tail = body[:-2], body[-1]
        elif body.endswith(closing):
            body = body[:-1]
        else:
            return text
        if opening == closing and opening == "'":
            # apostrophes inside words ("dog's") are fine; a quote at a word edge is another span
            inner = re.search(r"(^|\s)'|'(\s|$)", body) is not None
        else:
            inner = opening in body or closing in body
        if inner:
            return text
        text = (body.strip() + tail).strip()
    return text


def split_sentences(text: str) -> list[str]:
    """Split after . ! ? followed by whitespace, except after abbreviations ("Mr.", "e.g."),
    single-letter initials, or before a lowercase word; decimals ("3.5") never match."""
    sentences: list[str] = []
    start = 0
    for m in _BOUNDARY.finditer(text):
        end = m.end()
        if end < len(text) and text[end].islower():
            continue
        if text[m.start()] == ".":
            word = text[start:m.start()].split()[-1:] or [""]
            token = word[0].strip(_QUOTES + "(").lower()
            if token in _ABBREVIATIONS or (len(token) == 1 and token.isalpha()):
                continue
        sentences.append(text[start:m.end()].strip())
        start = end
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def postprocess_caption(text: str, sentences: int = 1) -> str:
    """One clean caption from generated text: no role prefix, one line, no surrounding quotes,
    the first `sentences` sentences (0 keeps all)."""
    while True:
        stripped = _ROLE_PREFIX.sub("", text, count=1)
        if stripped == text:
            break
        text = stripped
    m = _NEXT_TURN.search(text)
    if m:
        text = text[: m.start()]
    text = _strip_quotes(" ".join(text.split()))
    if sentences > 0:
        text = " ".join(split_sentences(text)[:sentences])
    return _strip_quotes(text)


# --- batching ---------------------------------------------------------------------------------------

def _load_image(path: Path) -> Any:
    # Imported here: DataLoader workers need only this, and bench.data decodes safely (RGB
    # conversion, size limits, one-line errors naming the file).
    from bench.data import load_image

    return load_image(path)


def encode(processor: Any, images: Sequence[Any], texts: Sequence[str]) -> dict[str, Any]:
    """Processor output for a batch, LEFT-padded so that generation appends at the same column."""
    processor.tokenizer.padding_side = "left"
    out = processor(images=list(images), text=list(texts), return_tensors="pt", padding=True)
    return dict(out)


@dataclass
class LlavaCollate:
    """Picklable DataLoader collate: Samples -> {"image_ids", input_ids, attention_mask, pixel_values}."""

    processor: Any
    prompt_text: str

    def __call__(self, samples: Sequence[Any]) -> Batch:
        images = [_load_image(Path(s.path)) for s in samples]
        batch = encode(self.processor, images, [self.prompt_text] * len(samples))
        return {"image_ids": [s.image_id for s in samples], **batch}


# --- the backend ------------------------------------------------------------------------------------

@register_backend("llava")
class LlavaCaptioner(Captioner):
    default_model = "llava-hf/llava-1.5-7b-hf"
    supports_lora = False

    model: Any
    processor: Any
    template: PromptTemplate
    prompt_text: str
    dtype: torch.dtype

    @classmethod
    def load(
        cls, model_cfg: ModelConfig, device: torch.device, prompt: str | PromptTemplate | None = None
    ) -> "LlavaCaptioner":
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        template = prompt if isinstance(prompt, PromptTemplate) else load_prompt(prompt or DEFAULT_PROMPT)
        options = _check_options(dict(model_cfg.options))
        quant = quantization_config(model_cfg.quantization, device)
        dtype = pick_dtype(device)
        kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": options["attn_implementation"]}
        if quant is not None:
            kwargs["quantization_config"] = quant
        if device.type == "cuda":
            # Load straight onto the GPU (quantized weights cannot be moved afterwards).
            index = device.index if device.index is not None else torch.cuda.current_device()
            kwargs["device_map"] = {"": index}
        field = "models.llava.model"
        model = load_model(LlavaForConditionalGeneration, model_cfg.model, "llava model", field, **kwargs)
        processor = load_files(AutoProcessor.from_pretrained, model_cfg.model, "llava processor", field)
        if device.type != "cuda":
            model = model.to(device)
        model.eval()
        processor.tokenizer.padding_side = "left"

        self = cls(model_cfg, device, template.name)
        self.model = model
        self.processor = processor
        self.template = template
        self.prompt_text = render_prompt(processor, template)
        self.dtype = dtype
        return self

    @staticmethod
    def build_tiny(out_dir: Path, seed: int = 0) -> Path:
        from bench.tiny.llava import build_tiny_llava

        return build_tiny_llava(Path(out_dir), seed)

    def torch_module(self) -> torch.nn.Module:
        return self.model

    def caption_collate(self) -> LlavaCollate:
        return LlavaCollate(self.processor, self.prompt_text)

    def _generation_config(self, gen: GenerationConfig) -> Any:
        from transformers import GenerationConfig as HFGenerationConfig

        tok = self.processor.tokenizer
        eos = self.model.generation_config.eos_token_id
        return HFGenerationConfig(
            do_sample=False,
            num_beams=gen.num_beams if gen.strategy == "beam" else 1,
            max_new_tokens=gen.max_new_tokens,
            no_repeat_ngram_size=gen.no_repeat_ngram_size,
            repetition_penalty=gen.repetition_penalty,
            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
            eos_token_id=eos if eos is not None else tok.eos_token_id,
            bos_token_id=tok.bos_token_id,
        )

    def _inputs(self, batch: Batch) -> dict[str, torch.Tensor]:
        inputs: dict[str, torch.Tensor] = {}
        for key, value in batch.items():
            if not isinstance(value, torch.Tensor):
                continue  # image_ids and other bookkeeping
            value = value.to(self.model.device, non_blocking=True)
            inputs[key] = value.to(self.dtype) if value.is_floating_point() else value
        return inputs

    def generate(self, batch: Batch, gen: GenerationConfig) -> list[str]:
        inputs = self._inputs(batch)
        prompt_len = inputs["input_ids"].shape[1]
        with torch.inference_mode():
            out = self.model.generate(**inputs, generation_config=self._generation_config(gen))
        # Left padding: every row's new tokens start right after the (common) prompt length.
        texts = self.processor.batch_decode(out[:, prompt_len:], skip_special_tokens=True)
        return [postprocess_caption(t, self.template.sentences) for t in texts]

    def generate_with_attention(self, batch: Batch, gen: GenerationConfig) -> list[Any]:
        """Attention of each caption token to the image-token positions, in every LLM layer.

        The prompt (with its image tokens) plus the caption tokens go through the model once with
        eager attention; the query row that predicts caption token t is kept and its weights over
        the image positions renormalised (the rest of the mass went to the text tokens; its share
        is reported as `image_mass`). `batch["captions"]` (optional): trace those texts.
        """
        from bench.backends._attention import (
            CapturedTrace, captions_of, choose_tokens, cut_at_eos, eager_attention, square_grid, token_strings,
            trace_forward,
        )

        inputs = self._inputs(batch)
        prompt_len = inputs["input_ids"].shape[1]
        n = inputs["input_ids"].shape[0]
        captions = captions_of(batch, n)
        with torch.inference_mode():
            generated = self.model.generate(**inputs, generation_config=self._generation_config(gen))[:, prompt_len:].tolist()
        tok = self.processor.tokenizer
        stop = {i for i in (tok.eos_token_id, tok.pad_token_id, self.model.generation_config.eos_token_id) if isinstance(i, int)}
        special = set(tok.all_special_ids)
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
            keep = [k for k, t in enumerate(ids) if t not in special]
            traces.append(
                CapturedTrace(
                    caption=captions[i] if captions[i] is not None else decode(ids),
                    tokens=token_strings(tok, [ids[k] for k in keep]),
                    maps=[maps[k] for k in keep],
                    grid=grid,
                    token_ids=[ids[k] for k in keep],
                    source=source,
                    image_mass=[mass[k] for k in keep],
                    positions=f"LLM self-attention to the {len(image_cols)} image tokens (renormalised over them)",
                )
            )
        return traces
