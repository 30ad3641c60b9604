"""LoRA fine-tuning loop for the captioner backends (nanoGPT style: one function, top to bottom).

    captioner.add_lora(setting.lora)
    result = train(captioner, training_pairs(split.train, cfg.train_size), cfg, run_dir / "train", seed, device)

What lands in `out_dir`:

    loss.csv, loss.png        the loss curve (step, epoch, loss, lr), rewritten as training goes
    state.json                last complete epoch, step, loss rows, timings, trainable parameters
    adapter/epoch-<N>/        after EVERY epoch: the adapter (safetensors) + optimizer.pt,
                              scheduler.pt, rng.pt (torch.save; read with weights_only=True) and
                              train_state.json; each folder appears atomically (temp + rename)

A second call resumes after the last complete epoch (adapter, optimizer, scheduler and RNG state
restored, that epoch's loss rows kept, rows of a half-done epoch dropped) and ends with the same
weights as an uninterrupted run; when the final epoch is already there it only loads that adapter
and returns (cache hit). The saved run configuration must match, else a BenchError says what
changed. `cfg.train_size` is applied by `training_pairs`, not here: `train` uses every pair given.

Multi-process (`dist` enabled, see `bench.distributed`): DDP through `accelerate.Accelerator`,
which prepares the model and the optimizer. `train.batch_size` stays the GLOBAL batch: each of N
processes takes a contiguous share of every single-process batch (`bench.ddp.rank_shares`, every
pair exactly once per epoch, losses weighted to the whole batch's token mean), so the optimizer
steps, the schedule, the loss curve and the checkpoints are those of a single process; precision
comes from `train.precision` only, never from the launcher. Only rank 0 writes files, and the
adapter is saved from the unwrapped model (the captioner's own peft model).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.backends.base import Captioner
from bench.config import TrainConfig
from bench.data.types import Sample
from bench.ddp import Parallel, epoch_loader, prepare_parallel, rank_shares
from bench.distributed import SINGLE, Dist
from bench.errors import BenchError
from bench.precision import cuda_half_dtype, cuda_native_bf16
from bench.io import atomic_write_json
from bench.train_files import (
    resume_point,
    run_fingerprint,
    reset_adapters,
    save_epoch,
    seed_everything,
    set_rng_state,
    torch_read,
    write_curve,
)

CURVE_EVERY_S = 60.0  # loss.csv is rewritten at most this often inside an epoch (and at its end)


@dataclass
class TrainResult:
    epochs_done: int
    steps: int
    final_loss: float | None  # mean loss over the last epoch's optimizer steps
    train_s: float  # training seconds summed over every session that worked on this run
    resumed_from_epoch: int  # 0: trained from scratch
    trainable: int
    total: int
    cached: bool = False  # the final adapter was already there; nothing was trained

    @property
    def trainable_pct(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0


def training_pairs(samples: Sequence[Sample], train_size: int | None = None) -> list[tuple[Sample, str]]:
    """One (sample, reference) pair per reference of the first `train_size` training images."""
    chosen = samples if train_size is None else samples[:train_size]
    return [(s, ref) for s in chosen for ref in s.refs]


def default_num_workers() -> int:
    """DataLoader workers decoding images beside the training step: all but one core, at most 4."""
    return min(4, max(0, (os.cpu_count() or 1) - 1))


@dataclass
class LinearWarmupDecay:
    """LR multiplier: 0 -> 1 over `warmup` steps, then linearly down to 0 at `total` steps.

    A callable object (not a lambda) so LambdaLR saves and restores its state.
    """

    warmup: int
    total: int

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return step / max(1, self.warmup)
        return max(0.0, (self.total - step) / max(1, self.total - self.warmup))


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `train.precision` on this device; None means plain fp32."""
    if precision == "fp32":
        return None
    if precision == "auto":  # bf16 where the GPU has it natively, else fp16; fp32 off CUDA
        return cuda_half_dtype() if device.type == "cuda" else None
    if precision == "bf16":
        if device.type == "cuda" and not cuda_native_bf16():
            raise BenchError("train.precision: this GPU has no native bfloat16 (emulated bf16 is slow); use 'fp16' or 'auto'")
        if device.type not in ("cuda", "cpu"):
            raise BenchError(f"train.precision: 'bf16' is not supported on device {device.type!r}; use 'auto'")
        return torch.bfloat16
    if precision == "fp16":
        if device.type != "cuda":
            raise BenchError(f"train.precision: 'fp16' needs a CUDA device, got {device.type!r}; use 'auto'")
        return torch.float16
    raise BenchError(f"train.precision: unknown value {precision!r} (auto, fp32, bf16, fp16)")


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    return torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _check_config(cfg: TrainConfig) -> None:
    checks = {
        "epochs": cfg.epochs >= 1,
        "batch_size": cfg.batch_size >= 1,
        "grad_accum": cfg.grad_accum >= 1,
        "lr": cfg.lr > 0,
        "warmup_ratio": 0.0 <= cfg.warmup_ratio <= 1.0,
        "weight_decay": cfg.weight_decay >= 0,
        "max_grad_norm": cfg.max_grad_norm >= 0,
    }
    for key, ok in checks.items():
        if not ok:
            raise BenchError(f"train.{key}: impossible value {getattr(cfg, key)!r}")


# --- the loop ------------------------------------------------------------------------------------

def _progress(enabled: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]train[/] epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )


@dataclass
class _Optimization:
    """Optimizer (AdamW over the trainable parameters), linear warmup/decay schedule, AMP scaler,
    and the optimizer-step counter: what carries from one epoch (and one session) to the next."""

    params: list[torch.nn.Parameter]
    optimizer: Any
    scheduler: Any
    scaler: Any
    amp_dtype: torch.dtype | None
    batches_per_epoch: int
    device: torch.device
    step: int = 0

    @classmethod
    def build(cls, module: torch.nn.Module, cfg: TrainConfig, n_pairs: int, device: torch.device) -> "_Optimization":
        amp_dtype = autocast_dtype(cfg.precision, device)
        params = [p for p in module.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        batches_per_epoch = math.ceil(n_pairs / cfg.batch_size)
        total_steps = cfg.epochs * math.ceil(batches_per_epoch / cfg.grad_accum)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, LinearWarmupDecay(round(cfg.warmup_ratio * total_steps), total_steps)
        )
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        return cls(params, optimizer, scheduler, scaler, amp_dtype, batches_per_epoch, device)

    def restore(self, epoch_dir: Path) -> None:
        self.optimizer.load_state_dict(torch_read(epoch_dir / "optimizer.pt"))
        self.scheduler.load_state_dict(torch_read(epoch_dir / "scheduler.pt"))
        self.scaler.load_state_dict(torch_read(epoch_dir / "scaler.pt"))
        set_rng_state(torch_read(epoch_dir / "rng.pt"))

    def apply(self, cfg: TrainConfig) -> float:
        """One optimizer step on the accumulated gradients; returns the lr it used."""
        self.scaler.unscale_(self.optimizer)
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
        lr = self.scheduler.get_last_lr()[0]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return lr


def _epoch_loader(pairs: Sequence[tuple[Sample, str]], collate: Any, cfg: TrainConfig, seed: int, epoch: int,
                  num_workers: int, device: torch.device, parallel: Parallel | None) -> Any:
    # A per-epoch generator: the shuffle order depends on (seed, epoch) only, so a resumed run sees
    # exactly the batches an uninterrupted one would.
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    if parallel is not None:  # each rank: its share of each of those batches (bench.ddp)
        shares = rank_shares(pairs, cfg.batch_size, generator, parallel.dist)
        return epoch_loader(shares, collate, num_workers, device.type == "cuda")
    return torch.utils.data.DataLoader(
        list(pairs), batch_size=cfg.batch_size, shuffle=True, collate_fn=collate, generator=generator,
        num_workers=num_workers, pin_memory=device.type == "cuda",
    )


def _train_epoch(captioner: Captioner, loader: Any, opt: _Optimization, parallel: Parallel | None,
                 cfg: TrainConfig, epoch: int, rows: list[dict[str, Any]], on_batch: Any) -> list[float]:
    """One pass over the loader; appends a loss-curve row per optimizer step, returns its losses."""
    device = opt.device
    losses: list[float] = []
    group_loss = torch.zeros((), device=device)
    for i, batch in enumerate(loader):
        # Gradient accumulation: average over the micro-batches of this optimizer step (the last
        # group of an epoch may be shorter).
        group_start = (i // cfg.grad_accum) * cfg.grad_accum
        group_size = min(cfg.grad_accum, opt.batches_per_epoch - group_start)
        last_of_group = i + 1 - group_start >= group_size
        sync = contextlib.nullcontext() if parallel is None else parallel.no_sync(last_of_group)
        with sync:
            with _autocast(device, opt.amp_dtype):
                loss = (captioner.loss(batch) if parallel is None else parallel.loss(batch)) / group_size
            opt.scaler.scale(loss).backward()
        group_loss += loss.detach().float()
        if not last_of_group:
            on_batch(None)
            continue
        # One host sync per optimizer step; across ranks, the mean of their losses.
        value = group_loss.item() if parallel is None else parallel.mean(group_loss)
        if not math.isfinite(value):
            raise BenchError(f"training: loss became {value} at epoch {epoch}, step {opt.step + 1}; lower train.lr")
        lr = opt.apply(cfg)
        rows.append({"step": opt.step, "epoch": epoch, "loss": value, "lr": lr})
        losses.append(value)
        on_batch(value)
        group_loss.zero_()
    return losses


def _checked_trainable(captioner: Captioner, cfg: TrainConfig, pairs: Sequence[Any]) -> tuple[int, int]:
    _check_config(cfg)
    if not pairs:
        raise BenchError("training: no (image, caption) pairs to train on")
    trainable, total = captioner.trainable_parameters()
    if trainable == 0:
        raise BenchError(f"training: backend {captioner.name!r} has no trainable parameters (call add_lora first)")
    return trainable, total


def _start_optimization(captioner: Captioner, cfg: TrainConfig, n_pairs: int, device: torch.device, seed: int,
                        adapter_root: Path, start_epoch: int, step: int) -> _Optimization:
    """Fresh adapters drawn from the seed, or the last epoch's adapter, optimizer and RNG state."""
    module = captioner.torch_module()
    opt = _Optimization.build(module, cfg, n_pairs, device)
    opt.step = step
    seed_everything(seed)
    if start_epoch:
        captioner.load_adapter(adapter_root / f"epoch-{start_epoch}")
        opt.restore(adapter_root / f"epoch-{start_epoch}")
    else:
        reset_adapters(module)
    return opt


def _end_epoch(captioner: Captioner, out_dir: Path, epoch: int, opt: _Optimization, state: dict[str, Any],
               trackers: Any) -> None:
    """Rank 0 after every epoch: the checkpoint (atomic), state.json, the loss curve, the trackers."""
    save_epoch(captioner, out_dir / "adapter", epoch, opt.optimizer, opt.scheduler, opt.scaler, state)
    atomic_write_json(out_dir / "state.json", state)
    write_curve(out_dir, state["rows"], plot=True)
    if trackers is not None:
        trackers.log_epoch(epoch, opt.step, state["final_loss"], state["train_s"])


def train(
    captioner: Captioner,
    pairs: Sequence[tuple[Sample, str]],
    cfg: TrainConfig,
    out_dir: Path,
    seed: int,
    device: torch.device,
    progress: bool = True,
    num_workers: int | None = None,
    dist: Dist = SINGLE,
    trackers: Any = None,  # bench.tracking.Trackers (rank 0 of a --log-with run) or None
) -> TrainResult:
    """Fine-tune the captioner's LoRA adapter on (sample, caption) pairs; resumable, see module doc.

    With `dist` enabled, every rank calls this with the same arguments (DDP, rank 0 writes).
    """
    # Long: the loop reads top to bottom (resume, optimizer, epochs, save); its steps are helpers.
    out_dir, num_workers = Path(out_dir), default_num_workers() if num_workers is None else num_workers
    adapter_root = out_dir / "adapter"
    trainable, total = _checked_trainable(captioner, cfg, pairs)
    autocast_dtype(cfg.precision, device)  # a precision this device lacks is an error before anything else
    fingerprint = run_fingerprint(captioner, pairs, cfg, seed)

    # 1. Where are we? Resume after the last complete epoch (or return at once when all are done).
    start_epoch, saved = resume_point(adapter_root, fingerprint, out_dir)
    rows, step, train_s_before = (saved["rows"], saved["step"], saved["train_s"]) if saved else ([], 0, 0.0)
    if saved and start_epoch >= cfg.epochs:
        captioner.load_adapter(adapter_root / f"epoch-{start_epoch}")
        if dist.is_main:
            write_curve(out_dir, rows, plot=not (out_dir / "loss.png").exists())
        return TrainResult(start_epoch, step, saved["final_loss"], train_s_before, start_epoch, trainable, total, cached=True)

    # 2. Optimizer, schedule and scaler; restored with the adapter and RNG when resuming.
    module = captioner.torch_module()
    opt = _start_optimization(captioner, cfg, len(pairs), device, seed, adapter_root, start_epoch, step)
    if dist.is_main:
        write_curve(out_dir, rows, plot=False)  # drops rows of a half-done epoch from loss.csv
    parallel: Parallel | None = None
    if dist.enabled:
        parallel, opt.optimizer = prepare_parallel(captioner, opt.optimizer, cfg, device, dist)

    # 3. Train the remaining epochs; save everything after each one.
    collate, started, final_loss = captioner.train_collate(), time.perf_counter(), None
    with _progress(progress) as bar:
        task = bar.add_task("train", total=(cfg.epochs - start_epoch) * opt.batches_per_epoch, epoch=start_epoch + 1, loss="-")
        curve = _CurveWriter(out_dir, rows, bar, task, dist.is_main, trackers)
        for epoch in range(start_epoch + 1, cfg.epochs + 1):
            loader = _epoch_loader(pairs, collate, cfg, seed, epoch, num_workers, device, parallel)
            module.train()
            losses = _train_epoch(captioner, loader, opt, parallel, cfg, epoch, rows, curve.on_batch(epoch))
            module.eval()
            final_loss = sum(losses) / len(losses)
            state = {
                "epochs_done": epoch, "step": opt.step, "final_loss": final_loss,
                "train_s": train_s_before + time.perf_counter() - started,
                "trainable": trainable, "total": total, "trainable_pct": 100.0 * trainable / total,
                "config": fingerprint, "rows": rows, "processes": dist.world_size,
            }
            if dist.is_main:
                _end_epoch(captioner, out_dir, epoch, opt, state, trackers)
            dist.barrier()  # no rank runs ahead of a checkpoint it may have to resume from
    return TrainResult(
        cfg.epochs, opt.step, final_loss, train_s_before + time.perf_counter() - started, start_epoch, trainable, total,
    )


@dataclass
class _CurveWriter:
    """Progress bar updates and loss.csv rewritten at most every CURVE_EVERY_S inside an epoch."""

    out_dir: Path
    rows: list[dict[str, Any]]
    bar: Any
    task: Any
    writes: bool
    trackers: Any = None  # --log-with: every optimizer step's row goes to them too
    written_at: float = dataclasses.field(default_factory=time.perf_counter)

    def on_batch(self, epoch: int) -> Any:
        def update(loss: float | None) -> None:
            if loss is None:  # a micro-batch inside an accumulation group
                self.bar.advance(self.task)
                return
            self.bar.update(self.task, advance=1, epoch=epoch, loss=f"{loss:.4f}")
            if self.trackers is not None:
                row = self.rows[-1]
                self.trackers.log_train(row["step"], row["loss"], row["lr"])
            if self.writes and time.perf_counter() - self.written_at > CURVE_EVERY_S:
                write_curve(self.out_dir, self.rows, plot=False)
                self.written_at = time.perf_counter()

        return update
