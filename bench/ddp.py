"""Data-parallel training through `accelerate`: the pieces `bench.training.train` adds when a
run is launched on several processes (see `bench.distributed`). A single process never imports
accelerate.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from bench.backends.base import Captioner
from bench.config import TrainConfig
from bench.distributed import Dist
from bench.errors import BenchError


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
    module: Any  # the DDP-wrapped _LossModule

    def no_sync(self, sync: bool) -> Any:
        """No gradient all-reduce for micro-batches inside an accumulation group (forward AND backward)."""
        return contextlib.nullcontext() if sync else self.accelerator.no_sync(self.module)

    def mean(self, value: torch.Tensor) -> float:
        return float(self.accelerator.reduce(value.detach().clone(), reduction="mean").item())


def prepare_parallel(captioner: Captioner, optimizer: Any, cfg: TrainConfig, device: torch.device, dist: Dist) -> tuple[Parallel, Any]:
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    if cfg.batch_size % dist.world_size:
        raise BenchError(
            f"train.batch_size: {cfg.batch_size} does not split evenly over {dist.world_size} processes "
            "(each process takes an equal share of every batch); use a multiple of the process count"
        )
    accelerator = Accelerator(cpu=device.type == "cpu", dataloader_config=DataLoaderConfiguration(split_batches=True))
    module, optimizer = accelerator.prepare(LossModule(captioner), optimizer)
    return Parallel(accelerator, module), optimizer
