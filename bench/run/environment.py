"""What a run records about where it ran: device, CPU threads, library versions, git commit,
peak memory. No torch import at module level (the cache-hit path stays torch-free)."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import paths

VERSIONED_PACKAGES: tuple[str, ...] = (
    "torch", "transformers", "peft", "accelerate", "bitsandbytes", "pycocoevalcap", "safetensors", "tokenizers",
)
_PROC_STATUS = Path("/proc/self/status")
_PROC_CLEAR_REFS = Path("/proc/self/clear_refs")


def cpu_thread_budget(cores: int, workers: int, processes: int = 1) -> int:
    """Intra-op threads for a model on CPU: the cores left to this process after its DataLoader
    workers, at least 1.

    PyTorch's default (one thread per core) oversubscribes the cores the workers decode images
    on; for small models the threads then wait on each other at every op (measured: tiny
    ViT-GPT2 + LoRA generation 20x slower with 2 threads than with 1 on a busy 2-core machine).
    """
    return max(1, cores // max(1, processes) - max(0, workers))


@contextmanager
def cpu_threads(device: Any, workers: int, processes: int = 1) -> Iterator[int | None]:
    """Run the block with `cpu_thread_budget` intra-op threads on CPU, restoring the count after.

    Left alone when the user chose (OMP_NUM_THREADS set) or the device is not the CPU; the count
    is only ever lowered.
    """
    import torch

    before = torch.get_num_threads()
    if getattr(device, "type", None) != "cpu" or os.environ.get("OMP_NUM_THREADS"):
        yield None
        return
    budget = cpu_thread_budget(os.cpu_count() or 1, workers, processes)
    torch.set_num_threads(min(before, budget))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def library_versions() -> dict[str, str | None]:
    from bench import __version__

    versions: dict[str, str | None] = {"bench": __version__, "python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=paths.REPO_DIR, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _rss_high_water_mb() -> float:
    """Peak resident memory since the last `reset_peak_memory` (VmHWM on Linux), else since the
    process started (ru_maxrss: KiB on Linux, bytes on macOS)."""
    try:
        for line in _PROC_STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def reset_peak_memory(device: Any = None) -> None:
    """Start a new peak for this run: several runs in one process (`--group`) must not inherit
    each other's peaks. Linux resets VmHWM through clear_refs; CUDA its allocator statistics."""
    try:
        _PROC_CLEAR_REFS.write_text("5")
    except OSError:
        pass  # not Linux, or not allowed: the peak is then the process's
    if device is not None and getattr(device, "type", None) == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: Any = None) -> dict[str, float | None]:
    cuda_mb = None
    if device is not None and getattr(device, "type", None) == "cuda":
        import torch

        cuda_mb = torch.cuda.max_memory_allocated(device) / (1024 * 1024)
    return {
        "peak_rss_mb": round(_rss_high_water_mb(), 1),
        "peak_cuda_mb": None if cuda_mb is None else round(cuda_mb, 1),
    }


def free_memory(device: Any) -> None:
    """Give a model's memory back (before the scorer loads CLIP, or the next run its model)."""
    import gc

    gc.collect()
    if getattr(device, "type", None) == "cuda":
        import torch

        torch.cuda.empty_cache()
