"""Which torch device a command runs on: the one device policy of every command.

`bench run`, `bench attend` and `bench score` (CLIPScore) all resolve `--device` here, so `auto`
means the same everywhere: cuda, then mps, then cpu. An explicit device that is not available is
an error naming the flag, not a silent fallback.
"""

from __future__ import annotations

from typing import Any

from bench.errors import BenchError


def resolve_device(name: str) -> Any:
    """`auto` picks cuda, then mps, then cpu; `cpu`, `cuda`, `cuda:N` and `mps` are checked."""
    import torch  # lazily: planning and cached runs never need torch

    mps = getattr(torch.backends, "mps", None)
    mps_ok = mps is not None and mps.is_available()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_ok else "cpu")
    if name not in ("cpu", "cuda", "mps") and not name.startswith("cuda:"):
        raise BenchError(f"--device {name}: must be auto, cpu, cuda or mps")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError(f"--device {name}: CUDA is not available on this machine (use --device auto or cpu)")
    if name == "mps" and not mps_ok:
        raise BenchError("--device mps: MPS is not available on this machine (use --device auto or cpu)")
    try:
        return torch.device(name)
    except (RuntimeError, TypeError) as exc:  # "cuda:x"
        raise BenchError(f"--device {name}: must be auto, cpu, cuda or mps") from exc
