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
from typing import TYPE_CHECKING, Any, TypeVar

from bench.errors import BenchError
# Re-exported: the shard files belong to the predictions file, which is below this module.
from bench.predictions_file import SHARD_GLOB, merge_in_order, merge_shards, shard_files, shard_path  # noqa: F401

if TYPE_CHECKING:
    import torch


T = TypeVar("T")

# (world size, rank, local rank) variables of torchrun/accelerate, then of MPI launchers.
_ENV_KEYS: tuple[tuple[str, str, str], ...] = (
    ("WORLD_SIZE", "RANK", "LOCAL_RANK"),
    ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK"),
    ("PMI_SIZE", "PMI_RANK", "MPI_LOCALRANKID"),
)


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
