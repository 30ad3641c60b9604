"""Helpers shared by the two LoRA backends (`vit-gpt2`, `clip-flan-t5`); not a backend itself.

- turning a LoRA target preset or name list into a peft regex restricted to the decoder, with an
  error that lists what exists when a target does not;
- saving an adapter folder atomically and loading it back from safetensors only;
- the small pieces both `generate`/collate paths need (image opening, generation kwargs, decoding).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from bench.backends.base import Captioner, hit_token_limit
from bench.config import GenerationConfig, LoraConfig, ModelConfig
from bench.errors import BenchError
from bench.model_source import error_line

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
BENCH_ADAPTER = "bench_adapter.json"
# Pickle files: never loaded as adapters; as base weights only through weights_only (model_loader).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


# --- LoRA targets --------------------------------------------------------------------------------

def lora_layer_names(model: torch.nn.Module, scope: str) -> list[str]:
    """Full names of the Linear / GPT-2 Conv1D modules whose name matches `scope` (a regex prefix)."""
    from transformers.pytorch_utils import Conv1D

    pattern = re.compile(scope)
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, (torch.nn.Linear, Conv1D)) and pattern.match(name)
    ]


def short_name(full: str, scope: str) -> str:
    """`decoder.transformer.h.0.attn.c_attn` -> `attn.c_attn`: what a user writes as a target."""
    match = re.match(scope, full)
    parts = full[match.end() if match else 0 :].split(".")
    return ".".join(parts[-2:]) if len(parts) >= 2 and not parts[-2].isdigit() else parts[-1]


def _target_regex(scope: str, target: str) -> str:
    # A target matches a whole dotted suffix of a module name inside the scope.
    return f"{scope}(?:.*\\.)?{re.escape(target)}"


def resolve_targets(
    model: torch.nn.Module,
    targets: str | Sequence[str],
    *,
    scope: str,
    presets: Mapping[str, Sequence[str]],
    backend: str,
) -> str:
    """The peft `target_modules` regex (full match) for a preset name or a list of module names.

    Matching is restricted to `scope` (the decoder), so encoder modules are never adapted. Every
    name of an explicit list must exist; a preset keeps the names this architecture has (GPT-2/T5
    variants differ: `wi` vs `wi_0`/`wi_1`).
    """
    layers = lora_layer_names(model, scope)
    available = list(dict.fromkeys(short_name(n, scope) for n in layers))
    if isinstance(targets, str):
        if targets not in presets:
            raise BenchError(
                f"lora.targets: unknown preset {targets!r} for backend {backend!r} "
                f"(presets: {', '.join(presets)}; or a list of module names: {', '.join(available)})"
            )
        wanted = [t for t in presets[targets] if any(re.fullmatch(_target_regex(scope, t), n) for n in layers)]
        if not wanted:
            raise BenchError(f"lora.targets: preset {targets!r} matches no module of this {backend} model")
    else:
        wanted = list(dict.fromkeys(str(t).strip() for t in targets))
        if not wanted:
            raise BenchError("lora.targets: the list of target modules is empty")
        for target in wanted:
            if not any(re.fullmatch(_target_regex(scope, target), n) for n in layers):
                raise BenchError(
                    f"lora.targets: module {target!r} does not exist in the {backend} decoder; "
                    f"available: {', '.join(available)}"
                )
    return f"{scope}(?:.*\\.)?(?:{'|'.join(re.escape(t) for t in wanted)})"


def peft_lora_config(lora: LoraConfig, target_regex: str, *, fan_in_fan_out: bool = False):
    """A peft LoraConfig from bench's LoraConfig (targets already resolved to a regex)."""
    import peft

    if lora.r < 1 or lora.alpha <= 0 or not 0.0 <= lora.dropout < 1.0:
        raise BenchError(f"lora: need r >= 1, alpha > 0, 0 <= dropout < 1 (got r={lora.r}, alpha={lora.alpha}, dropout={lora.dropout})")
    return peft.LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=target_regex,
        fan_in_fan_out=fan_in_fan_out,
        bias="none",
    )


def add_peft(model: torch.nn.Module, config: Any) -> Any:
    """Inject LoRA layers into `model` in place (base weights frozen); returns the PeftModel wrapper."""
    import warnings

    import peft

    with warnings.catch_warnings():  # peft calls a transformers method deprecated in v5; harmless
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return peft.get_peft_model(model, config)


# --- adapter folders -----------------------------------------------------------------------------

def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())


def write_dir_atomically(out_dir: Path, write: Callable[[Path], None]) -> None:
    """Run `write(tmp)` on a fresh temp folder beside `out_dir`, then rename it into place.

    A crash leaves either the previous folder or the new one, never a half-written one (a stale
    `.tmp` sibling at most, removed by the next save).
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.parent.glob(f".{out_dir.name}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        write(tmp)
        _fsync_tree(tmp)
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
            os.replace(out_dir, old / "old")
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BenchError(f"{out_dir}: cannot write the adapter ({exc.strerror or exc})") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_peft_adapter(peft_model: Any, folder: Path, backend: str) -> None:
    """peft's own layout (adapter_config.json + adapter_model.safetensors) plus a bench marker."""
    from bench.io import atomic_write_json

    # save_embedding_layers=False: peft's "auto" asks the hub whether the base model's config
    # exists (to compare vocab sizes) at every save when the base is a hub id; bench never
    # adapts or resizes embeddings (LoRA targets are decoder attention/FFN layers only).
    peft_model.save_pretrained(str(folder), safe_serialization=True, save_embedding_layers=False)
    (folder / "README.md").unlink(missing_ok=True)  # peft's model-card stub says nothing useful
    atomic_write_json(folder / BENCH_ADAPTER, {"backend": backend, "format": 1})


def check_adapter_dir(adapter_dir: Path, backend: str, extra_files: Sequence[str] = ()) -> None:
    """Refuse anything but a bench/peft adapter folder stored as safetensors (pickles can run code)."""
    from bench.io import read_json

    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        raise BenchError(f"{adapter_dir}: adapter folder not found")
    for name in (ADAPTER_WEIGHTS, *extra_files):
        if not (adapter_dir / name).is_file():
            pickles = sorted(p.name for p in adapter_dir.iterdir() if p.suffix in PICKLE_SUFFIXES)
            if pickles:
                raise BenchError(
                    f"{adapter_dir / pickles[0]}: pickle checkpoints are refused (loading one can run code); "
                    f"provide {name} (safetensors)"
                )
            raise BenchError(f"{adapter_dir / name}: missing (an adapter folder holds {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})")
    if not (adapter_dir / ADAPTER_CONFIG).is_file():
        raise BenchError(f"{adapter_dir / ADAPTER_CONFIG}: missing")
    marker = adapter_dir / BENCH_ADAPTER
    if marker.is_file():
        saved = read_json(marker).get("backend")
        if saved != backend:
            raise BenchError(f"{marker}: field 'backend' is {saved!r}, this is a {backend!r} model")


def load_peft_adapter(model: torch.nn.Module, peft_model: Any | None, adapter_dir: Path) -> Any:
    """Load `adapter_dir` into `peft_model` (or inject a new one from its config into `model`)."""
    import peft
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    if peft_model is None:
        try:
            config = peft.LoraConfig.from_pretrained(str(adapter_dir))
        except (ValueError, TypeError, OSError) as exc:
            raise BenchError(f"{adapter_dir / ADAPTER_CONFIG}: not a LoRA adapter config ({error_line(exc)})") from exc
        config.inference_mode = False
        peft_model = add_peft(model, config)
    try:
        state = load_file(str(adapter_dir / ADAPTER_WEIGHTS), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise BenchError(f"{adapter_dir / ADAPTER_WEIGHTS}: not a readable safetensors file ({error_line(exc)})") from exc
    try:
        result = peft.set_peft_model_state_dict(peft_model, state)
    except RuntimeError as exc:
        raise BenchError(f"{adapter_dir / ADAPTER_WEIGHTS}: does not fit this model's LoRA layers ({error_line(exc)})") from exc
    missing_lora = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or missing_lora:
        bad = (result.unexpected_keys or missing_lora)[0]
        raise BenchError(f"{adapter_dir / ADAPTER_WEIGHTS}: tensor {bad!r} does not match this model's LoRA layers")
    return peft_model


# --- captioning helpers --------------------------------------------------------------------------

def open_image(path: Path):
    """RGB PIL image through bench.data's loader (validation, size limits), PIL as a fallback."""
    try:
        from bench.data import load_image
    except ImportError:  # bench.data's loader not available: plain PIL
        from PIL import Image

        with Image.open(path) as image:
            return image.convert("RGB")
    return load_image(path)


def generation_kwargs(gen: GenerationConfig) -> dict[str, Any]:
    """transformers `generate` arguments for bench's GenerationConfig (deterministic: no sampling)."""
    beams = max(1, gen.num_beams) if gen.strategy == "beam" else 1
    return {
        "do_sample": False,
        "num_beams": beams,
        "max_new_tokens": gen.for_kind(zero_shot=False).max_new_tokens,
        "no_repeat_ngram_size": gen.no_repeat_ngram_size,
        "repetition_penalty": gen.repetition_penalty,
        "early_stopping": beams > 1,
    }


def clean_captions(tokenizer: Any, ids: torch.Tensor) -> list[str]:
    """Decode generated ids to one plain line each (special tokens dropped, whitespace collapsed)."""
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return [" ".join(t.split()) for t in texts]


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """Tensors moved to `device` (non-blocking from pinned memory); other entries kept as they are."""
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
    }


def labels_from(tokenizer: Any, captions: Sequence[str], eos_id: int, max_len: int) -> torch.Tensor:
    """Label ids `caption + eos` (at most max_len), padded with -100.

    Padding is masked by -100, not by token id, so a pad token equal to eos (GPT-2) still teaches
    the model to stop.
    """
    enc = tokenizer(list(captions), add_special_tokens=False)
    rows = [ids[: max_len - 1] + [eos_id] for ids in enc["input_ids"]]
    width = max(len(r) for r in rows)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, row in enumerate(rows):
        labels[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return labels


@dataclass
class PixelCaptionCollate:
    """Samples -> pixel values; runs in DataLoader workers (a top-level class, so it pickles)."""

    processor: Any

    def __call__(self, samples: Sequence[Any]) -> dict[str, Any]:
        images = [open_image(s.path) for s in samples]
        pixel_values = self.processor(images=images, return_tensors="pt")["pixel_values"]
        return {"image_ids": [s.image_id for s in samples], "pixel_values": pixel_values}


@dataclass
class PixelTrainCollate:
    """(Sample, caption) pairs -> pixel values + labels (`caption eos`, padding = -100)."""

    processor: Any
    tokenizer: Any
    eos_id: int
    max_len: int

    def __call__(self, pairs: Sequence[tuple[Any, str]]) -> dict[str, Any]:
        batch = PixelCaptionCollate(self.processor)([s for s, _ in pairs])
        batch["labels"] = labels_from(self.tokenizer, [c for _, c in pairs], self.eos_id, self.max_len)
        return batch


class PixelLoraCaptioner(Captioner):
    """What the two LoRA backends share: an image processor feeding `pixel_values` to a
    seq2seq-style model, a tokenizer, and a LoRA adapter added by `add_lora`."""

    def __init__(self, model_cfg: ModelConfig, device: torch.device, model: Any, tokenizer: Any, processor: Any) -> None:
        super().__init__(model_cfg, device)
        self.model = model
        self.tokenizer = tokenizer
        self.processor = processor
        self.peft_model: Any | None = None
        self.lora_config: LoraConfig | None = None

    def caption_collate(self) -> PixelCaptionCollate:
        return PixelCaptionCollate(self.processor)

    def decode_generated(self, ids: torch.Tensor, gen: GenerationConfig) -> list[str]:
        """Captions of generated decoder ids (the start token first); flags `last_truncated`."""
        limit = generation_kwargs(gen)["max_new_tokens"]
        self.last_truncated = hit_token_limit(ids[:, 1:], [int(self.tokenizer.eos_token_id)], limit)
        return clean_captions(self.tokenizer, ids)

    def torch_module(self) -> torch.nn.Module:
        return self.model
