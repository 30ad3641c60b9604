"""Multi-process runs through accelerate / torchrun: rank detection, sharding, shard merging.

    accelerate launch --multi_gpu --num_processes 2 -m bench run --setting NAME      (GPUs or CPU)
    python -m torch.distributed.run --nproc_per_node 2 -m bench run --setting NAME   (same thing)

A launcher sets RANK / WORLD_SIZE / LOCAL_RANK (mpirun sets PMI_* or OMPI_COMM_WORLD_*) and
starts one `bench` per process. `detect()` reads them; without them `bench` is one process and
never imports torch.distributed or accelerate. In a multi-process run:

- rank 0 alone holds the run-folder lock and writes the run's files; its decisions (cache hit,
  errors) reach every rank through `Dist.on_main`, so all ranks stop or go on together;
- training is DDP through `accelerate.Accelerator` (see `bench.training.train`);
- captioning cuts the pending batches on the single-process batch grid and gives each rank a
  contiguous block of whole batches (`shard`), so every batch the model sees is the batch a
  single process would have fed it; each rank appends to `predictions.rank<k>.jsonl`, and after
  a barrier rank 0 merges the shards ONCE into `predictions.jsonl` in sample order
  (`merge_shards`): the same bytes a single process writes.

A run interrupted mid-way keeps its shard files; the next call (any number of processes) merges
them first and captions only what is still missing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from bench.errors import BenchError

if TYPE_CHECKING:
    import torch

    from bench.data.types import Sample

T = TypeVar("T")

# (world size, rank, local rank) variables of torchrun/accelerate, then of MPI launchers.
_ENV_KEYS: tuple[tuple[str, str, str], ...] = (
    ("WORLD_SIZE", "RANK", "LOCAL_RANK"),
    ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK"),
    ("PMI_SIZE", "PMI_RANK", "MPI_LOCALRANKID"),
)
SHARD_GLOB = "predictions.rank*.jsonl"


def _int(env: Mapping[str, str], key: str, default: int) -> int:
    value = env.get(key, "")
    try:
        return int(value) if value.strip() else default
    except ValueError:
        raise BenchError(f"environment variable {key}={value!r}: expected an integer (set by the launcher)") from None


@dataclass(frozen=True)
class Dist:
    """This process's place in a multi-process run; `Dist()` is a single process.

    Every method is a no-op (or the identity) for a single process, so one code path serves both.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # --- collectives (after `init`) ------------------------------------------------------------
    def init(self, device: "torch.device") -> None:
        """Join the process group (gloo on CPU, nccl on CUDA) through accelerate, once."""
        if not self.enabled:
            return
        import torch.distributed as torch_dist

        if torch_dist.is_available() and torch_dist.is_initialized():
            return
        from accelerate import PartialState

        state = PartialState(cpu=device.type == "cpu")
        if state.num_processes != self.world_size:
            raise BenchError(
                f"launcher: WORLD_SIZE is {self.world_size} but accelerate set up {state.num_processes} "
                "process(es); launch with `accelerate launch --multi_gpu --num_processes N -m bench ...` "
                "or `python -m torch.distributed.run --nproc_per_node N -m bench ...`"
            )

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as torch_dist

            torch_dist.barrier()

    def broadcast(self, obj: T) -> T:
        """Rank 0's `obj` on every rank (picklable objects)."""
        if not self.enabled:
            return obj
        import torch.distributed as torch_dist

        box = [obj if self.is_main else None]
        torch_dist.broadcast_object_list(box, src=0)
        return box[0]  # type: ignore[return-value]

    def gather(self, obj: T) -> list[T]:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        import torch.distributed as torch_dist

        out: list[Any] = [None] * self.world_size
        torch_dist.all_gather_object(out, obj)
        return out

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run `fn` on rank 0 only; every rank gets its result, or raises its BenchError.

        Without this, a rank-0 error (run locked, config changed) would leave the other ranks
        waiting at the next collective until the launcher's timeout.
        """
        if not self.enabled:
            return fn()
        error: BenchError | None = None
        value: Any = None
        if self.is_main:
            try:
                value = fn()
            except BenchError as exc:
                error = exc
        value, shared_error = self.broadcast((value, error))
        if error is not None:
            raise error  # rank 0: the original, with its traceback
        if shared_error is not None:  # the other ranks: the same class, exit code and message
            copy = type(shared_error)(f"{shared_error} (reported by rank 0)")
            copy.__dict__.update(shared_error.__dict__)
            raise copy
        return value

    def device(self, device: "torch.device") -> "torch.device":
        """One GPU per process: `cuda` becomes `cuda:<local rank>`; other devices are unchanged."""
        import torch

        if self.enabled and device.type == "cuda" and device.index is None:
            return torch.device("cuda", self.local_rank)
        return device


SINGLE = Dist()


def detect(env: Mapping[str, str] | None = None) -> Dist:
    """The launcher's rank and world size from the environment (a single process without one)."""
    env = os.environ if env is None else env
    for size_key, rank_key, local_key in _ENV_KEYS:
        if size_key in env:
            world = _int(env, size_key, 1)
            rank = _int(env, rank_key, 0)
            local = _int(env, local_key, rank)
            if world < 1 or not 0 <= rank < world:
                raise BenchError(f"environment: {rank_key}={rank} is not a rank of {size_key}={world}")
            return Dist(rank=rank, world_size=world, local_rank=local)
    return SINGLE


def is_main_process(env: Mapping[str, str] | None = None) -> bool:
    """True unless this is a non-zero rank of a multi-process launch (cheap: reads env only)."""
    return detect(env).is_main


# --- sharding and merging ------------------------------------------------------------------------

def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Rank `rank`'s contiguous block of `items`; block sizes differ by at most one.

    Contiguous (not strided) blocks keep each rank's shard in the single-process order, so a
    resumed shard file only ever grows at its end.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} of world size {world_size}")
    base, extra = divmod(len(items), world_size)
    start = rank * base + min(rank, extra)
    return list(items[start : start + base + (1 if rank < extra else 0)])


def shard_path(predictions_path: Path, rank: int) -> Path:
    """`predictions.jsonl` -> `predictions.rank<k>.jsonl` beside it."""
    predictions_path = Path(predictions_path)
    return predictions_path.with_name(f"{predictions_path.stem}.rank{rank}{predictions_path.suffix}")


def shard_files(predictions_path: Path) -> list[Path]:
    """The shard files beside `predictions_path`, in rank order."""
    predictions_path = Path(predictions_path)
    pattern = f"{predictions_path.stem}.rank*{predictions_path.suffix}"
    found = []
    for path in predictions_path.parent.glob(pattern):
        middle = path.name[len(predictions_path.stem) + len(".rank") : -len(predictions_path.suffix) or None]
        if middle.isdigit():
            found.append((int(middle), path))
    return [p for _, p in sorted(found)]


def merge_in_order(order: Sequence[str], parts: Sequence[tuple[str, Mapping[str, str]]]) -> dict[str, str]:
    """The union of `parts` ((source name, {image_id: caption})), keyed in the order of `order`.

    The same id in two parts must carry the same caption: that happens when a merge was cut
    between writing `predictions.jsonl` and deleting the shards, and the copies are equal.
    """
    merged: dict[str, str] = {}
    origin: dict[str, str] = {}
    for name, captions in parts:
        for image_id, caption in captions.items():
            if image_id in merged and merged[image_id] != caption:
                raise BenchError(
                    f"{name}: image_id {image_id!r} has caption {caption!r} but {origin[image_id]} has "
                    f"{merged[image_id]!r}; use --force"
                )
            merged.setdefault(image_id, caption)
            origin.setdefault(image_id, name)
    return {i: merged[i] for i in order if i in merged}


def merge_shards(predictions_path: Path, samples: Sequence["Sample"]) -> dict[str, str]:
    """Fold every `predictions.rank<k>.jsonl` into `predictions.jsonl`, in sample order.

    Returns the captions now in `predictions.jsonl`. The merged file is written atomically before
    the shards are deleted, so a crash in between loses nothing (the copies are equal). Without
    shard files and with records already in sample order, nothing is written.
    """
    from bench.captioning import existing_predictions, write_in_order

    predictions_path = Path(predictions_path)
    shards = shard_files(predictions_path)
    main = existing_predictions(predictions_path, samples)
    parts = [(str(predictions_path), main)] + [(str(p), existing_predictions(p, samples)) for p in shards]
    merged = merge_in_order([s.image_id for s in samples], parts)
    if shards or list(main) != list(merged):
        write_in_order(predictions_path, samples, merged)
        for path in shards:
            path.unlink(missing_ok=True)
    return merged
