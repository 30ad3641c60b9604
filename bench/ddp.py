"""Data-parallel training through `accelerate`: the pieces `bench.training.train` adds when a
run is launched on several processes (see `bench.distributed`). A single process never imports
accelerate.

Two promises make a multi-process epoch the single-process one:
- precision comes from the setting only: the Accelerator gets `mixed_precision="no"` (bench runs
  its own autocast), whatever `accelerate launch --mixed_precision` or the user's accelerate
  config put in the environment;
- every training pair is seen exactly once per epoch: each single-process batch (same shuffle) is
  cut into one contiguous share per rank (`rank_shares`), instead of accelerate's `even_batches`,
  which pads a short last batch with pairs from the first. Each rank's loss is weighted by its
  share of the batch's label tokens, so the DDP gradient mean is the whole batch's token mean: the
  loss a single process computes. A rank whose share of a short batch is empty runs one pair
  with weight 0 (DDP needs every rank in every backward).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from bench.backends.base import Captioner
from bench.config import TrainConfig
from bench.distributed import Dist, shard


class LossModule(torch.nn.Module):
    """`captioner.loss` as a module's forward, so DDP sees the forward and syncs the gradients.

    It owns the captioner's parameters (as `inner`); the loss is looked up on every call so a
    patched `captioner.loss` is honoured.
    """

    def __init__(self, captioner: Captioner) -> None:
        super().__init__()
        self.inner = captioner.torch_module()
        self._captioner = [captioner]  # a list: not registered as a submodule twice

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        return self._captioner[0].loss(batch)


@dataclass
class Parallel:
    """The accelerate side of a multi-process run (None of it exists for a single process)."""

    accelerator: Any
    module: Any  # the DDP-wrapped LossModule
    dist: Dist

    def no_sync(self, sync: bool) -> Any:
        """No gradient all-reduce for micro-batches inside an accumulation group (forward AND backward)."""
        return contextlib.nullcontext() if sync else self.accelerator.no_sync(self.module)

    def mean(self, value: torch.Tensor) -> float:
        return float(self.accelerator.reduce(value.detach().clone(), reduction="mean").item())

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """This rank's loss weighted so that the mean over ranks is the whole batch's token mean."""
        labels = batch["labels"]
        tokens = (labels != -100).sum() if batch.get(COUNTED, True) else torch.zeros((), dtype=torch.long)
        tokens = tokens.to(self.accelerator.device)
        total = self.accelerator.reduce(tokens.clone(), reduction="sum")
        weight = tokens.float() * self.accelerator.num_processes / total.clamp(min=1).float()
        return self.module(batch) * weight


COUNTED = "_bench_counted"  # batch key: False for the weight-0 stand-in of an empty share


@dataclass
class ShareCollate:
    """Collate one rank's share of a batch (a top-level class: DataLoader workers pickle it)."""

    collate: Any

    def __call__(self, share: tuple[list[Any], bool]) -> dict[str, Any]:
        pairs, counted = share
        return {**self.collate(pairs), COUNTED: counted}


def rank_shares(pairs: Sequence[Any], batch_size: int, generator: torch.Generator, dist: Dist) -> list[tuple[list[Any], bool]]:
    """This rank's (pairs, counted) of every batch a single process draws with `generator`.

    The batches are those of `DataLoader(pairs, batch_size, shuffle=True, generator=generator)`;
    each is split into `world_size` contiguous blocks whose sizes differ by at most one.
    """
    # The DataLoader itself (not a bare RandomSampler): it draws a worker seed from the generator
    # before shuffling, and the order must be the single-process loader's.
    batches = torch.utils.data.DataLoader(range(len(pairs)), batch_size=batch_size, shuffle=True, generator=generator)
    shares = []
    for batch in (b.tolist() for b in batches):
        mine = shard(batch, dist.rank, dist.world_size)
        shares.append(([pairs[i] for i in mine], True) if mine else ([pairs[batch[0]]], False))
    return shares


def epoch_loader(shares: list[tuple[list[Any], bool]], collate: Any, num_workers: int, pin_memory: bool) -> Any:
    """A DataLoader over this rank's shares (one share = one micro-batch)."""
    return torch.utils.data.DataLoader(
        shares, batch_size=None, collate_fn=ShareCollate(collate), num_workers=num_workers, pin_memory=pin_memory,
    )


def prepare_parallel(captioner: Captioner, optimizer: Any, cfg: TrainConfig, device: torch.device, dist: Dist) -> tuple[Parallel, Any]:
    from accelerate import Accelerator

    # mixed_precision="no": the launcher's --mixed_precision (ACCELERATE_MIXED_PRECISION) must not
    # wrap the forward in its own autocast; train.precision alone decides (bench.training).
    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision="no")
    module, optimizer = accelerator.prepare(LossModule(captioner), optimizer)
    return Parallel(accelerator, module, dist), optimizer
