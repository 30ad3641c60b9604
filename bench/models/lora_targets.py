"""Where LoRA goes: a target preset or name list turned into a peft regex restricted to one part
of the model (the decoder of a captioner, the language model of a VLM), with an error that lists
what exists when a target does not; and the peft config and wrapping shared by every backend.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

from bench.config import LoraConfig
from bench.errors import BenchError


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
