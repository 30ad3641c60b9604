"""Which half precision a CUDA GPU should compute in: bf16 only where it is native.

`torch.cuda.is_bf16_supported()` is also True on GPUs that only emulate bf16 (V100, T4: compute
capability < 8), where bf16 runs slowly; there fp16 is the fast half precision.
"""

from __future__ import annotations

import torch


def cuda_native_bf16() -> bool:
    """True when the current CUDA GPU computes bfloat16 natively (Ampere and later)."""
    if not torch.cuda.is_available():
        return False
    return bool(torch.cuda.is_bf16_supported(including_emulation=False))


def cuda_half_dtype() -> torch.dtype:
    """bf16 where native, else fp16: the dtype `auto` precision and LLaVA use on a GPU."""
    return torch.bfloat16 if cuda_native_bf16() else torch.float16
