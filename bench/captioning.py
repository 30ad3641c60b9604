"""The captioning loop: caption the samples a predictions file lacks, appending batch by batch.

Resumable and crash-safe: finished batches are appended as checksummed records, so a SIGKILL
loses at most the batch in flight; on the next call the intact records are kept (a torn last line
is dropped) and only the missing samples are captioned. Batches are cut on the same grid over the
full sample list as an uninterrupted run (chunks of `batch_size` in sample order), so a resumed
run feeds the model the same batches and writes the same file byte for byte.

Launched on several processes (`bench.distributed`), each rank captions a contiguous block of
those same batches into its own `predictions.rank<k>.jsonl`, and rank 0 merges the shards once
at the end into `predictions.jsonl`, in sample order: the bytes a single process writes.

Sorted-by-length batching is deliberately absent: every backend's captioning input has a fixed
shape (pixel tensors of one size; LLaVA rows share one prompt, hence one length), so there is no
padding to save, and output lengths are unknown before generating.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.config import GenerationConfig
from bench.data.types import Sample
from bench.distributed import SINGLE, Dist, shard
from bench.errors import BenchError
from bench.io import append_records, read_records
from bench.predictions_file import existing_predictions, merge_shards, shard_path, write_in_order

if TYPE_CHECKING:
    import torch

    from bench.backends.base import Captioner


@dataclass(frozen=True)
class CaptionStats:
    n_total: int
    n_resumed: int  # intact predictions found on disk before this call
    n_captioned: int  # captioned by this call (by this process, in a multi-process run)
    generate_s: float  # seconds inside captioner.generate (pure model time)
    wall_s: float  # seconds of the whole loop, image decoding waits included
    images_per_s: float  # n_captioned / wall_s (0 when nothing was captioned)
    n_truncated: int = 0  # captions of this call that hit max_new_tokens without an end token


def pending_batches(image_ids: Sequence[str], done: set[str], batch_size: int) -> list[list[int]]:
    """Index batches of the samples not yet done, cut on the uninterrupted run's batch grid."""
    batches = []
    for start in range(0, len(image_ids), batch_size):
        todo = [i for i in range(start, min(start + batch_size, len(image_ids))) if image_ids[i] not in done]
        if todo:
            batches.append(todo)
    return batches


class _SafeCollate:
    """Runs the backend's collate in a worker, turning a BenchError into a value.

    The DataLoader would otherwise re-raise it with the worker's traceback in the message, and a
    bad image must stay a one-line error.
    """

    def __init__(self, collate: Callable[[Sequence[Any]], dict[str, Any]]) -> None:
        self.collate = collate

    def __call__(self, samples: Sequence[Sample]) -> dict[str, Any]:
        try:
            return self.collate(samples)
        except BenchError as exc:
            return {"_bench_error": str(exc)}


def _progress_bar(enabled: bool, console: Any = None, label: str = "captioning") -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
        console=console,
        transient=False,
    )


def _autocast(device: Any, dtype: "torch.dtype | None") -> Any:
    import contextlib

    if dtype is None:
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def caption_samples(
    captioner: "Captioner",
    samples: Sequence[Sample],
    gen: GenerationConfig,
    predictions_path: Path,
    num_workers: int,
    progress: bool = True,
    console: Any = None,
    dist: Dist = SINGLE,
    amp_dtype: "torch.dtype | None" = None,
) -> CaptionStats:
    """Caption the samples missing from `predictions_path`, in order, appending each batch.

    With `dist` enabled every rank must call this (it holds barriers); rank 0 merges the shards.
    `amp_dtype` runs generation under autocast (bf16 on GPUs for fp32 models); None: as loaded.
    """
    predictions_path = Path(predictions_path)
    samples = list(samples)
    ids = [s.image_id for s in samples]
    if len(set(ids)) != len(ids):
        raise BenchError(f"{predictions_path}: the split lists an image_id twice")
    # Rank 0 folds in the shards of an interrupted multi-process run; the others read the result.
    captions = merge_shards(predictions_path, samples) if dist.is_main else {}
    dist.barrier()
    if not dist.is_main:
        captions = existing_predictions(predictions_path, samples)
    n_resumed = len(captions)
    batches = shard(pending_batches(ids, set(captions), gen.batch_size), dist.rank, dist.world_size)
    out_path = shard_path(predictions_path, dist.rank) if dist.enabled else predictions_path
    start = time.perf_counter()
    n_captioned, generate_s, n_truncated = 0, 0.0, 0
    if batches:
        loader = _loader(captioner, samples, batches, num_workers)
        label = f"captioning (rank 0 of {dist.world_size})" if dist.enabled else "captioning"
        total, done = (sum(map(len, batches)), 0) if dist.enabled else (len(samples), n_resumed)
        with _progress_bar(progress, console, label) as bar:
            task = bar.add_task("captioning", total=total, completed=done, rate="")

            def advance(n: int) -> None:
                rate = n / max(time.perf_counter() - start, 1e-9)
                bar.update(task, completed=done + n, rate=f"{rate:.1f} img/s")

            n_captioned, generate_s, n_truncated = _caption_batches(
                captioner, loader, gen, out_path, captions, amp_dtype, advance
            )
    wall_s = time.perf_counter() - start
    if dist.enabled:
        dist.barrier()  # every shard is complete on disk
        if dist.is_main:
            merge_shards(predictions_path, samples)
    else:
        on_disk = [r["image_id"] for r in read_records(predictions_path)]
        if on_disk != ids:
            write_in_order(predictions_path, samples, captions)
    rate = n_captioned / wall_s if n_captioned and wall_s > 0 else 0.0
    return CaptionStats(len(samples), n_resumed, n_captioned, generate_s, wall_s, rate, n_truncated)


def _caption_batches(
    captioner: "Captioner", loader: Any, gen: GenerationConfig, out_path: Path, captions: dict[str, str],
    amp_dtype: "torch.dtype | None", advance: Callable[[int], None],
) -> tuple[int, float, int]:
    """Generate and append batch by batch; returns (images captioned, seconds inside generate,
    captions cut by max_new_tokens, as the backend flags them in `last_truncated`)."""
    n_captioned, generate_s, n_truncated = 0, 0.0, 0
    for batch in loader:
        if "_bench_error" in batch:
            raise BenchError(batch["_bench_error"])
        t0 = time.perf_counter()
        captioner.last_truncated = []  # a backend that does not flag truncation counts none
        with _autocast(captioner.device, amp_dtype):
            texts = captioner.generate(batch, gen)
        generate_s += time.perf_counter() - t0
        batch_ids = list(batch["image_ids"])
        if len(texts) != len(batch_ids):
            raise BenchError(f"backend {captioner.name!r} returned {len(texts)} captions for {len(batch_ids)} images")
        flags = list(captioner.last_truncated)
        n_truncated += sum(map(bool, flags)) if len(flags) == len(texts) else 0
        append_records(out_path, [{"image_id": i, "caption": t} for i, t in zip(batch_ids, texts)])
        captions.update(zip(batch_ids, texts))
        n_captioned += len(batch_ids)
        advance(n_captioned)
    return n_captioned, generate_s, n_truncated


def _loader(captioner: "Captioner", samples: list[Sample], batches: list[list[int]], num_workers: int) -> Any:
    """A DataLoader whose workers decode images and run the processor while the model generates."""
    import torch
    from torch.utils.data import DataLoader

    on_cuda = getattr(captioner, "device", None) is not None and torch.device(captioner.device).type == "cuda"
    return DataLoader(
        samples,  # a list is a map-style dataset: loader[i] -> Sample
        batch_sampler=batches,
        collate_fn=_SafeCollate(captioner.caption_collate()),
        num_workers=max(0, num_workers),
        persistent_workers=False,
        pin_memory=on_cuda,
    )
