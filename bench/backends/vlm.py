"""Zero-shot captioning with any vision-language model transformers loads natively.

One backend for every model `AutoModelForImageTextToText` loads (LLaVA, LLaVA-NeXT/OneVision,
Qwen2-VL/2.5-VL, Idefics3/SmolVLM, PaliGemma, Gemma 3, BLIP, BLIP-2, ...), never with remote
code. The family is the config's `model_type` (`bench.models.vlm_families`): the prompt file's
instruction goes into the processor's chat template with one image, or through the family's own
rule where the checkpoint has no template (PaliGemma's `caption en`, BLIP's text prefix).

Batches are LEFT-padded so that every row's new tokens start at the same column, and only those
new tokens are decoded. Dynamic-resolution families (Qwen2-VL's variable patch grids, Idefics3's
image splitting, LLaVA-NeXT's anyres tiles) give rows of different prompt lengths; left padding
keeps each row's captions equal to batch size 1 (tested per family, greedy, fp32 on CPU).

Decoding is the setting's alone: the checkpoint's `generation_config.json` contributes its token
ids (bos/eos/pad) and nothing else (no sampling, temperature, top-k or length from the file).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from bench.models.caption_text import postprocess_caption
from bench.models.vlm_families import Family, family_for, image_mode
from bench.models.quantization import pick_dtype, quantization_config
from bench.backends.base import Batch, Captioner
from bench.config import GenerationConfig, ModelConfig
from bench.data import load_image
from bench.errors import BenchError
from bench.model_source import image_processor_loader, load_files, load_model
from bench.prompts import PromptTemplate, load_prompt

DEFAULT_PROMPT = "brief"
OPTION_VALUES: dict[str, tuple[str, ...] | type] = {
    "attn_implementation": ("sdpa", "eager"),
    "image_mode": ("auto", "pad", "crop", "native"),
    "text_prefix": str,
}


def check_options(options: dict[str, object], field: str) -> dict[str, object]:
    # attn_implementation unset: transformers' choice (sdpa where the family has it; BLIP has not)
    resolved: dict[str, object] = {"attn_implementation": None, "image_mode": "auto", "text_prefix": ""}
    for key, value in options.items():
        allowed = OPTION_VALUES.get(key)
        if allowed is None:
            raise BenchError(f"{field}.options: unknown key {key!r} (allowed: {', '.join(OPTION_VALUES)})")
        if isinstance(allowed, tuple) and value not in allowed:
            raise BenchError(f"{field}.options.{key} must be {' or '.join(repr(v) for v in allowed)}, got {value!r}")
        if allowed is str and not isinstance(value, str):
            raise BenchError(f"{field}.options.{key} must be a string, got {value!r}")
        resolved[key] = value
    return resolved


# --- prompt and images ------------------------------------------------------------------------------

def render_prompt(processor: Any, template: PromptTemplate, family: Family | None = None, text_prefix: str = "") -> str | None:
    """The text of every row: the chat template, else the family's rule; None: image only (BLIP)."""
    rule = family.prompt_rule if family is not None else "chat"
    if rule == "task_prefix":
        return family.task_prefix if family is not None else None
    if rule == "text_prefix":
        return text_prefix or None
    chat_template = getattr(processor, "chat_template", None)
    if rule == "chat" and chat_template:
        parts: list[dict[str, str]] = [{"type": "text", "text": template.text}]
        parts.insert(0 if template.image_first else 1, {"type": "image"})
        conversation = [{"role": "user", "content": parts}]
        return processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    # LLaVA-1.5 converted without a chat template: its own conversation format.
    image_token = getattr(processor, "image_token", None) or "<image>"
    return f"USER: {template.render(image_token)} ASSISTANT:"


def pad_to_square(image: Any, colour: tuple[int, ...]) -> Any:
    """LLaVA-1.5's `expand2square` (llava/mm_utils.py): the image centred on a square of `colour`
    (the processor's image_mean in 0-255), offsets rounded down."""
    from PIL import Image

    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new(image.mode, (side, side), colour)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


def pad_colour(processor: Any) -> tuple[int, ...]:
    mean = getattr(getattr(processor, "image_processor", None), "image_mean", None) or (0.5, 0.5, 0.5)
    return tuple(int(x * 255) for x in mean)


def encode(processor: Any, images: Sequence[Any], texts: Sequence[str] | None, nested: bool = False) -> dict[str, Any]:
    """Processor output for a batch, LEFT-padded so that generation appends at the same column."""
    processor.tokenizer.padding_side = "left"
    kwargs: dict[str, Any] = {"images": [[i] for i in images] if nested else list(images), "return_tensors": "pt"}
    if texts is not None:
        kwargs.update(text=list(texts), padding=True)
    out = dict(processor(**kwargs))
    out.pop("labels", None)  # PaliGemma's processor adds labels for training; generation takes none
    return out


@dataclass
class VlmCollate:
    """Picklable DataLoader collate: Samples -> {"image_ids", input_ids, attention_mask, pixel_values, ...}."""

    processor: Any
    prompt_text: str | None
    nested_images: bool = False
    square_colour: tuple[int, ...] | None = None  # image_mode "pad": LLaVA-1.5's square padding

    def __call__(self, samples: Sequence[Any]) -> Batch:
        images = [load_image(Path(s.path)) for s in samples]
        if self.square_colour is not None:
            images = [pad_to_square(i, self.square_colour) for i in images]
        texts = None if self.prompt_text is None else [self.prompt_text] * len(samples)
        return {"image_ids": [s.image_id for s in samples], **encode(self.processor, images, texts, self.nested_images)}


# --- loading ------------------------------------------------------------------------------------------

def load_processor(model: str, model_type: str, what: str, field: str) -> Any:
    """AutoProcessor, or the family's class without its video half where torchvision is missing."""
    from transformers import AutoProcessor

    from bench.models.processors import image_only, needs_image_only, processor_class_for

    processor_class = processor_class_for(model_type)
    if processor_class is None or not needs_image_only(processor_class):
        return load_files(AutoProcessor.from_pretrained, model, what, field)
    # a transformers class, never remote code: the loader passes local_files_only alone
    return load_files(image_processor_loader(image_only(processor_class)), model, what, field)


def model_class_for(config: Any, field: str) -> Any:
    """The class `AutoModelForImageTextToText` maps this config to (BLIP and BLIP-2 included),
    taken from transformers' own table, so that loading asks for no adapter files of the Auto path."""
    from transformers import AutoModelForImageTextToText

    try:
        return AutoModelForImageTextToText._model_mapping[type(config)]
    except KeyError:
        raise BenchError(
            f"{field}.model: model_type {config.model_type!r} is not an image-text-to-text model transformers "
            "loads natively (AutoModelForImageTextToText)"
        ) from None


def token_ids_only(generation_config: Any) -> Any:
    """A generation config carrying only the checkpoint's bos/eos/pad ids: sampling, temperature,
    top-k/p, lengths and beams in a hub `generation_config.json` never reach generation."""
    from transformers import GenerationConfig as HFGenerationConfig

    keep = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
    return HFGenerationConfig(**{k: getattr(generation_config, k, None) for k in keep})


@dataclass(frozen=True)
class RowEnd:
    """How one caption's generation ended: new tokens generated, and whether an eos token came."""

    new_tokens: int
    ended_with_eos: bool


class VlmCaptioner(Captioner):
    # No default model (bench.backends.table): a `vlm` setting names its model
    # (`bench run --prompt P --model ID_OR_DIR`).
    name: ClassVar[str] = "vlm"

    model: Any
    processor: Any
    family: Family
    template: PromptTemplate
    prompt_text: str | None
    image_mode: str
    dtype: torch.dtype
    last_rows: list[RowEnd]

    @classmethod
    def load(
        cls, model_cfg: ModelConfig, device: torch.device, prompt: str | PromptTemplate | None = None,
        *, for_lora: bool = False,
    ) -> "VlmCaptioner":
        """`for_lora` (a VLM LoRA run) changes nothing here: 4-/8-bit loading already keeps the
        vision tower, projector and lm_head in full precision (the family's quant_skip_modules),
        which is what QLoRA needs."""
        from transformers import AutoConfig

        field = f"models.{cls.name}"
        template = prompt if isinstance(prompt, PromptTemplate) else load_prompt(prompt or DEFAULT_PROMPT)
        options = check_options(dict(model_cfg.options), field)
        config = load_files(AutoConfig.from_pretrained, model_cfg.model, f"{cls.name} model", f"{field}.model")
        processor = load_processor(model_cfg.model, config.model_type, f"{cls.name} processor", f"{field}.model")
        family = family_for(config.model_type, bool(getattr(processor, "chat_template", None)), f"{field}.model {model_cfg.model!r}")
        mode = image_mode(family, options, f"{field}.options")
        model = cls._load_model(model_cfg, device, family, options["attn_implementation"], model_class_for(config, field))
        processor.tokenizer.padding_side = "left"

        self = cls(model_cfg, device, template.name)
        self.model, self.processor, self.family, self.template = model, processor, family, template
        self.prompt_text = render_prompt(processor, template, family, str(options["text_prefix"]))
        self.image_mode = mode
        self.dtype = pick_dtype(device)
        self.last_rows = []
        return self

    @classmethod
    def _load_model(cls, model_cfg: ModelConfig, device: torch.device, family: Family, attn: Any, model_class: Any) -> Any:
        field = f"models.{cls.name}"
        quant = quantization_config(model_cfg.quantization, device, family.quant_skip_modules, field)
        kwargs: dict[str, Any] = {"dtype": pick_dtype(device)}
        if attn is not None:
            kwargs["attn_implementation"] = attn
        if quant is not None:
            kwargs["quantization_config"] = quant
        if device.type == "cuda":
            # Load straight onto the GPU (quantized weights cannot be moved afterwards).
            index = device.index if device.index is not None else torch.cuda.current_device()
            kwargs["device_map"] = {"": index}
        model = load_model(model_class, model_cfg.model, f"{cls.name} model", f"{field}.model", **kwargs)
        if device.type != "cuda":
            model = model.to(device)
        model.generation_config = token_ids_only(model.generation_config)
        return model.eval()

    def torch_module(self) -> torch.nn.Module:
        return self.model

    def caption_collate(self) -> VlmCollate:
        colour = pad_colour(self.processor) if self.image_mode == "pad" else None
        return VlmCollate(self.processor, self.prompt_text, self.family.nested_images, colour)

    def resolved_options(self) -> dict[str, object]:
        """What the run used, for results.json: family, prompt rule and image mode."""
        return {"model_type": self.family.model_type, "prompt_rule": self.family.prompt_rule, "image_mode": self.image_mode}

    def _stop_ids(self) -> set[int]:
        tok = self.processor.tokenizer
        eos = self.model.generation_config.eos_token_id
        ids = set(eos) if isinstance(eos, (list, tuple)) else {eos}
        return {int(i) for i in (*ids, tok.eos_token_id) if isinstance(i, int)}

    def _generation_config(self, gen: GenerationConfig) -> Any:
        from transformers import GenerationConfig as HFGenerationConfig

        tok = self.processor.tokenizer
        eos = self.model.generation_config.eos_token_id
        return HFGenerationConfig(
            do_sample=False,
            num_beams=gen.num_beams if gen.strategy == "beam" else 1,
            max_new_tokens=gen.for_kind(zero_shot=True).max_new_tokens,  # a run's plan always sets it
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
        with torch.inference_mode():
            out = self.model.generate(**inputs, generation_config=self._generation_config(gen))
        # Left padding: every row's new tokens start right after the (common) prompt length.
        # BLIP's text decoder returns its prefix too: the caption is prefix + continuation.
        prompt_len = inputs["input_ids"].shape[1] if "input_ids" in inputs else 0
        if self.family.output_has_prompt:  # BLIP: [bos] + prefix without its [SEP], then the new tokens
            texts = self.processor.batch_decode(out, skip_special_tokens=True)
            generated = out[:, max(prompt_len - 1, 1):]
        else:
            texts = self.processor.batch_decode(out[:, prompt_len:], skip_special_tokens=True)
            generated = out[:, prompt_len:]
        self.last_rows = [self._row_end(row) for row in generated.tolist()]
        # Cut by max_new_tokens without an end token: counted per run (bench.captioning).
        limit = gen.for_kind(zero_shot=True).max_new_tokens or 0
        self.last_truncated = [not r.ended_with_eos and r.new_tokens >= limit for r in self.last_rows]
        return [postprocess_caption(t, self.template.sentences) for t in texts]

    def _row_end(self, tokens: list[int]) -> RowEnd:
        stop = self._stop_ids()
        for i, token in enumerate(tokens):
            if token in stop:
                return RowEnd(i + 1, True)
        return RowEnd(len(tokens), False)
