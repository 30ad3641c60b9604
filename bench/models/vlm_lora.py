"""LoRA / QLoRA on a zero-shot VLM (any `AutoModelForImageTextToText`-style model); not a backend.

`VlmLoraMixin` gives a zero-shot VLM captioner the Captioner LoRA interface that `bench.training`
drives (add_lora, train_collate, loss, save_adapter, load_adapter). The backend class provides
`self.model`, `self.processor`, `self.prompt_text` (the prompt rendered by the model's own chat
template, exactly what captioning feeds the model), `self.dtype` and `self.device`.

One training example is laid out exactly as at inference, plus the answer:

    input_ids  = processor(image, prompt_text)   caption tokens   end-of-turn token   padding
    labels     = -100 ... (bos, text, image)     caption tokens   end-of-turn token   -100 ...

so the loss counts only the caption and the token that ends the model's turn (the first eos id of
its generation config: `</s>` for llava-1.5, `<|im_end|>` for chat-ML models), never the prompt
or an image token. Rows are right-padded (every prompt keeps the positions it has when captioned
alone). LoRA goes on the language model only (`attn` / `attn_ffn` presets resolved to the module
names this family has), plus the projector's Linear layers when `targets` lists "projector"; the
vision tower is always frozen. QLoRA: `quantization = "4bit"` on CUDA loads the language model in
NF4 and keeps the vision tower, projector and lm_head in full precision (`keep_vlm_parts_full`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.config import LoraConfig
from bench.data import load_image
from bench.models.adapters import AdapterMixin
from bench.models.lora_targets import add_peft, peft_lora_config, resolve_targets
from bench.errors import BenchError

IGNORE = -100  # label of a token the loss skips (transformers' CrossEntropy ignore_index)
MAX_CAPTION_TOKENS = 128  # longer references are cut, then ended with the end-of-turn token
PROJECTOR = "projector"  # the target name that adds the projector's Linear layers
# Module names, per family, of the language model's attention and MLP projections (Llama, Mistral,
# Qwen2, Gemma: q/k/v/o + gate/up/down; Phi-3: qkv_proj + gate_up_proj; GPT-style: fc1/fc2).
_ATTN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "self_attn.qkv_proj")
_FFN = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "mlp.gate_up_proj", "mlp.fc1", "mlp.fc2")
PRESETS: dict[str, tuple[str, ...]] = {"attn": _ATTN, "attn_ffn": _ATTN + _FFN}
# What QLoRA keeps out of 4-bit: vision towers and projectors of the common families, and lm_head.
# transformers matches each `llm_int8_skip_modules` entry as a regex from the START of a module name
# up to a dot, so each part is allowed anywhere in the tree ("model.vision_tower.…").
_FULL_PRECISION_NAMES = (
    "vision_tower", "visual", "vision_model", "vision_encoder",
    "multi_modal_projector", "mm_projector", "connector", "lm_head",
)
FULL_PRECISION_PARTS = tuple(rf"(?:.*\.)?{name}" for name in _FULL_PRECISION_NAMES)
_PROJECTOR_NAMES = ("multi_modal_projector", "mm_projector", "connector", "merger")


# --- where things are in the model ------------------------------------------------------------------

def _module_name(model: torch.nn.Module, target: torch.nn.Module | None) -> str | None:
    if target is None:
        return None
    return next((name for name, module in model.named_modules() if module is target), None)


def language_model_scope(model: torch.nn.Module) -> str:
    """Regex prefix of the language model's modules (`model\\.language_model\\.` for llava in v5)."""
    lm = getattr(model, "language_model", None)
    if not isinstance(lm, torch.nn.Module) and hasattr(model, "get_decoder"):
        lm = model.get_decoder()
    name = _module_name(model, lm if isinstance(lm, torch.nn.Module) else None)
    if not name:
        raise BenchError(f"lora: cannot find the language model inside {type(model).__name__}")
    return re.escape(name) + r"\."


def projector_layers(model: torch.nn.Module) -> list[str]:
    """Full names of the Linear layers of the vision-to-text projector."""
    names = [n for n, m in model.named_modules() if n.split(".")[-1] in _PROJECTOR_NAMES]
    return [
        full for full, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and any(full.startswith(p + ".") for p in names)
    ]


def vlm_target_regex(model: torch.nn.Module, targets: str | Sequence[str], backend: str) -> str:
    """peft `target_modules` regex: language-model layers of a preset or of module names, plus the
    projector's Linear layers when the list holds "projector" (a list may also hold preset names)."""
    scope = language_model_scope(model)
    if isinstance(targets, str):
        return resolve_targets(model, targets, scope=scope, presets=PRESETS, backend=backend)
    names = [str(t).strip() for t in targets]
    parts = [resolve_targets(model, n, scope=scope, presets=PRESETS, backend=backend) for n in names if n in PRESETS]
    modules = tuple(n for n in names if n not in PRESETS and n != PROJECTOR)
    if modules:
        parts.append(resolve_targets(model, modules, scope=scope, presets=PRESETS, backend=backend))
    if PROJECTOR in names:
        layers = projector_layers(model)
        if not layers:
            raise BenchError(f"lora.targets: {PROJECTOR!r} matches no layer of this {backend} model")
        parts.append("|".join(re.escape(n) for n in layers))
    if not parts:
        raise BenchError("lora.targets: the list of target modules is empty")
    return "|".join(f"(?:{p})" for p in parts)


# --- QLoRA ----------------------------------------------------------------------------------------------

def keep_vlm_parts_full(quantization_config: Any) -> Any:
    """A bitsandbytes config that leaves the vision tower, projector and lm_head unquantized
    (QLoRA quantizes the language model only); None stays None."""
    if quantization_config is None:
        return None
    quantization_config.llm_int8_skip_modules = list(FULL_PRECISION_PARTS)
    return quantization_config


def is_quantized(model: torch.nn.Module) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def cast_adapters(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """LoRA weights in `dtype` (QLoRA on a bf16 GPU); the frozen base is untouched."""
    for name, param in model.named_parameters():
        if "lora_" in name and param.dtype != dtype:
            param.data = param.data.to(dtype)


# --- training batches -------------------------------------------------------------------------------

def end_of_turn_id(model: Any, tokenizer: Any) -> int:
    """The token that ends the model's answer at inference: generation's first eos id."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(eos, (list, tuple)):
        eos = eos[0] if eos else None
    eos = eos if eos is not None else tokenizer.eos_token_id
    if eos is None:
        raise BenchError("lora: the model has no end-of-turn (eos) token to end a caption with")
    return int(eos)


@dataclass
class VlmTrainCollate:
    """(Sample, caption) pairs -> input_ids, attention_mask, labels, the processor's image tensors.

    Picklable (runs in DataLoader workers). `max_length` bounds prompt + caption + end token (the
    language model's positions); captions are cut to `max_caption_tokens` first.
    """

    processor: Any
    prompt_text: str
    end_id: int
    image_token_id: int | None
    max_caption_tokens: int = MAX_CAPTION_TOKENS
    max_length: int | None = None

    def __call__(self, pairs: Sequence[tuple[Any, str]]) -> dict[str, Any]:
        images = [load_image(Path(sample.path)) for sample, _ in pairs]
        tok = self.processor.tokenizer
        check_image_slot(tok, self.prompt_text, self.image_token_id)
        tok.padding_side = "left"  # as captioning encodes; padding is stripped per row below
        try:
            enc = dict(self.processor(images=images, text=[self.prompt_text] * len(pairs), return_tensors="pt", padding=True))
        except ValueError as exc:  # the processor's own checks (image count, sizes): one line
            raise BenchError(f"prompt: the processor refused the rendered prompt ({str(exc).splitlines()[0]})") from exc
        ids, mask = enc.pop("input_ids"), enc.pop("attention_mask")
        per_token = {k: enc.pop(k) for k in list(enc) if isinstance(enc[k], torch.Tensor) and enc[k].shape[:2] == ids.shape}
        captions = tok([c for _, c in pairs], add_special_tokens=False)["input_ids"]
        rows, labels, keeps = [], [], []
        for i, caption in enumerate(captions):
            keep = mask[i].bool()
            prompt = ids[i][keep].tolist()
            room = self.max_caption_tokens if self.max_length is None else min(self.max_caption_tokens, self.max_length - len(prompt) - 1)
            if room < 1:
                raise BenchError(f"lora: the prompt takes {len(prompt)} tokens, no room for a caption within {self.max_length}")
            answer = list(caption[:room]) + [self.end_id]
            rows.append(prompt + answer)
            labels.append([IGNORE] * len(prompt) + answer)
            keeps.append(keep)
        width = max(len(r) for r in rows)
        pad = tok.pad_token_id if tok.pad_token_id is not None else self.end_id
        batch = {
            "input_ids": _right_pad(rows, width, pad),
            "attention_mask": _right_pad([[1] * len(r) for r in rows], width, 0),
            "labels": _right_pad(labels, width, IGNORE),
        }
        for key, value in per_token.items():  # e.g. token_type_ids: prompt part, zeros after
            batch[key] = _right_pad([value[i][keeps[i]].tolist() for i in range(len(rows))], width, 0)
        return {"image_ids": [s.image_id for s, _ in pairs], **batch, **enc}


def _right_pad(rows: Sequence[Sequence[int]], width: int, value: int) -> torch.Tensor:
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(list(row), dtype=torch.long)
    return out


def image_token_id(model: Any, processor: Any) -> int | None:
    config = getattr(model, "config", None)
    for key in ("image_token_id", "image_token_index"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    token = getattr(processor, "image_token", None)
    return processor.tokenizer.convert_tokens_to_ids(token) if token else None


def max_positions(model: Any) -> int | None:
    config = getattr(model, "config", None)
    text = getattr(config, "text_config", None) or config
    value = getattr(text, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) else None


def caption_loss(model: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the caption and end tokens (transformers' causal-LM loss).

    Only the positions that predict a counted token go through lm_head (`logits_to_keep` as a
    boolean mask): with ~600 prompt and image tokens per row and a 32k vocabulary, full-sequence
    logits would dominate training memory (README: fine-tuning a VLM).
    """
    labels = inputs.pop("labels")
    targets = labels[:, 1:]
    predicts = torch.zeros_like(labels, dtype=torch.bool)
    predicts[:, :-1] = targets != IGNORE  # position k predicts token k + 1
    logits = model(**inputs, logits_to_keep=predicts).logits
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets[targets != IGNORE])


# --- the Captioner side -------------------------------------------------------------------------------

class VlmLoraMixin(AdapterMixin):
    """LoRA training methods for a zero-shot VLM captioner (see the module docstring)."""

    model: Any
    processor: Any
    prompt_text: str
    dtype: torch.dtype
    device: torch.device
    name: str
    peft_model: Any = None
    lora_config: LoraConfig | None = None

    def add_lora(self, lora: LoraConfig) -> None:
        if self.peft_model is not None:
            raise BenchError("lora: this model already has a LoRA adapter")
        check_image_slot(self.processor.tokenizer, self.prompt_text, image_token_id(self.model, self.processor))
        regex = vlm_target_regex(self.model, lora.targets, self.name)
        self.model.requires_grad_(False)  # vision tower, projector and LM frozen; LoRA layers train
        self.peft_model = add_peft(self.model, peft_lora_config(lora, regex))
        if is_quantized(self.model) and self.dtype == torch.bfloat16:
            cast_adapters(self.model, torch.bfloat16)
        self.lora_config = lora

    def train_collate(self) -> Callable[[Sequence[Any]], dict[str, Any]]:
        return VlmTrainCollate(
            self.processor, self.prompt_text, end_of_turn_id(self.model, self.processor.tokenizer),
            image_token_id(self.model, self.processor), MAX_CAPTION_TOKENS, max_positions(self.model),
        )

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        inputs: dict[str, torch.Tensor] = {}
        for key, value in batch.items():
            if isinstance(value, torch.Tensor):
                value = value.to(self.model.device, non_blocking=True)
                inputs[key] = value.to(self.dtype) if value.is_floating_point() else value
        return caption_loss(self.model, inputs)

    def after_adapter_load(self) -> None:
        if not is_quantized(self.model):  # quantized weights stay where they were loaded
            self.model.to(self.device)


def check_image_slot(tokenizer: Any, prompt_text: str, image_token: int | None) -> None:
    """A prompt whose chat rendering lost the image is an error before training starts."""
    if image_token is not None and image_token not in tokenizer(prompt_text, add_special_tokens=False)["input_ids"]:
        raise BenchError(
            "prompt: the rendered prompt has no image slot (no image token after the chat template); "
            "the model would be trained without seeing the image"
        )
