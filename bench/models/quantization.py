"""Device precision and 4-bit/8-bit quantization of the zero-shot backends (bitsandbytes, CUDA only).

Quantization applies to the language model only: the vision tower, the projector and lm_head stay
in bf16/fp16 (`llm_int8_skip_modules`, named per family in `bench.models.vlm_families`), as
LLaVA's own 4-bit/8-bit loader does; a quantized vision tower or output head costs accuracy and
saves little memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from bench.errors import BenchError
from bench.precision import cuda_half_dtype


def pick_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs that support it, else fp16 on GPUs, fp32 on CPU."""
    if device.type == "cuda":
        return cuda_half_dtype()  # bf16 only where native (not on V100/T4, which emulate it)
    if device.type == "mps":
        return torch.float16
    return torch.float32


def quantization_config(
    quantization: str, device: torch.device, skip_modules: Sequence[str] = (), field: str = "models.llava"
) -> Any:
    """A `transformers.BitsAndBytesConfig` for "4bit"/"8bit" leaving `skip_modules` unquantized;
    None for "none". Anything but CUDA is a one-line error instead of a slow or broken fallback."""
    if quantization == "none":
        return None
    if quantization not in ("4bit", "8bit"):
        raise BenchError(f"{field}.quantization must be 'none', '4bit' or '8bit', got {quantization!r}")
    if device.type != "cuda" or not torch.cuda.is_available():
        raise BenchError(
            f"{field}.quantization = {quantization!r} needs a CUDA GPU (bitsandbytes), "
            f"but the device is {device.type}; use quantization = \"none\" here"
        )
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # an ImportError or a broken CUDA setup inside bitsandbytes
        raise BenchError(
            f"{field}.quantization = {quantization!r} needs bitsandbytes, which cannot be "
            f"imported: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from exc
    from transformers import BitsAndBytesConfig

    skip = list(skip_modules) or None
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=cuda_half_dtype(),
        llm_int8_skip_modules=skip,
    )
