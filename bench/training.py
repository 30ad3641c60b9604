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
which prepares the model, the optimizer and each epoch's DataLoader. `train.batch_size` stays the
GLOBAL batch (`split_batches`: each of N processes takes batch_size / N of every batch), so the
optimizer steps, the schedule and the checkpoints are those of a single process; only rank 0
writes files, and the adapter is saved from the unwrapped model (the captioner's own peft model).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import pickle
import random
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.backends.base import Captioner
from bench.config import TrainConfig
from bench.data.types import Sample
from bench.distributed import SINGLE, Dist
from bench.errors import BenchError
from bench.io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json

EPOCH_DIR = re.compile(r"^epoch-(\d+)$")
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
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if precision == "auto":
        return torch.bfloat16 if cuda_bf16 else None
    if precision == "bf16":
        if device.type == "cuda" and not cuda_bf16:
            raise BenchError("train.precision: this GPU has no bfloat16 support; use 'fp16' or 'auto'")
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


def _fingerprint(captioner: Captioner, pairs: Sequence[tuple[Sample, str]], cfg: TrainConfig, seed: int) -> dict[str, Any]:
    """What must not change between a run and its resumption (else the weights would differ)."""
    digest = hashlib.sha256()
    for sample, caption in pairs:
        digest.update(f"{sample.image_id}\t{caption}\n".encode())
    lora = getattr(captioner, "lora_config", None)
    train = asdict(cfg)
    train.pop("train_size")  # already applied by the caller; the pairs digest covers it
    return {
        "backend": captioner.name,
        "train": train,
        "lora": asdict(lora) if lora is not None else None,
        "seed": seed,
        "pairs": len(pairs),
        "pairs_sha256": digest.hexdigest(),
    }


def _json_roundtrip(obj: Any) -> Any:
    # Tuples become lists in JSON: compare like with like.
    import json

    return json.loads(json.dumps(obj))


# --- RNG / checkpoint plumbing -------------------------------------------------------------------

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def _rng_state() -> dict[str, Any]:
    """All RNG state as tensors/ints, so `torch.load(weights_only=True)` can read it back."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
        "numpy_rest": [int(pos), int(has_gauss), float(cached)],
        "python": [int(version), list(py_state), gauss],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    pos, has_gauss, cached = state["numpy_rest"]
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _torch_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _torch_read(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:  # weights_only refuses code
        raise BenchError(f"{path}: unreadable training checkpoint ({' '.join(str(exc).split())[:200]})") from exc


def _last_complete_epoch(adapter_root: Path) -> int:
    """Highest N with a finished `adapter/epoch-N/` (folders appear atomically, state last)."""
    done = [
        int(m.group(1))
        for p in (adapter_root.iterdir() if adapter_root.is_dir() else [])
        if (m := EPOCH_DIR.match(p.name)) and (p / "train_state.json").is_file()
    ]
    return max(done, default=0)


def _reset_adapters(module: torch.nn.Module) -> None:
    """Re-draw every LoRA A (B = 0) from the seeded RNG: a fresh run depends on `seed` only."""
    from peft.tuners.lora import LoraLayer

    for layer in module.modules():
        if isinstance(layer, LoraLayer):
            for name in layer.lora_A:
                layer.reset_lora_parameters(name, True)


def _write_curve(out_dir: Path, rows: list[dict[str, Any]], plot: bool) -> None:
    """loss.csv (pandas) and, at epoch ends, loss.png (matplotlib Agg), both written atomically."""
    import pandas as pd

    frame = pd.DataFrame(rows, columns=["step", "epoch", "loss", "lr"])
    atomic_write_text(out_dir / "loss.csv", frame.to_csv(index=False))
    if not plot or frame.empty:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(frame["step"], frame["loss"], lw=1, label="loss per step")
    per_epoch = frame.groupby("epoch")[["step", "loss"]].agg({"step": "max", "loss": "mean"})
    ax.plot(per_epoch["step"], per_epoch["loss"], "o-", label="epoch mean")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(out_dir / "loss.png", buffer.getvalue())


def _save_epoch(
    captioner: Captioner, adapter_root: Path, epoch: int, optimizer: Any, scheduler: Any, scaler: Any,
    state: dict[str, Any],
) -> Path:
    """adapter/epoch-N/ complete or absent: written under a temp name, then renamed."""
    final = adapter_root / f"epoch-{epoch}"
    partial = adapter_root / f".epoch-{epoch}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    captioner.save_adapter(partial)
    atomic_write_bytes(partial / "optimizer.pt", _torch_bytes(optimizer.state_dict()))
    atomic_write_bytes(partial / "scheduler.pt", _torch_bytes(scheduler.state_dict()))
    atomic_write_bytes(partial / "scaler.pt", _torch_bytes(scaler.state_dict()))
    atomic_write_bytes(partial / "rng.pt", _torch_bytes(_rng_state()))
    atomic_write_json(partial / "train_state.json", state)
    if final.exists():  # a stale copy from an aborted run of the same config
        shutil.rmtree(final)
    os.replace(partial, final)
    return final


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


class _LossModule(torch.nn.Module):
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
class _Parallel:
    """The accelerate side of a multi-process run (None of it exists for a single process)."""

    accelerator: Any
    module: Any  # the DDP-wrapped _LossModule

    def no_sync(self, sync: bool) -> Any:
        """No gradient all-reduce for micro-batches inside an accumulation group (forward AND backward)."""
        return contextlib.nullcontext() if sync else self.accelerator.no_sync(self.module)

    def mean(self, value: torch.Tensor) -> float:
        return float(self.accelerator.reduce(value.detach().clone(), reduction="mean").item())


def _parallel(captioner: Captioner, optimizer: Any, cfg: TrainConfig, device: torch.device, dist: Dist) -> tuple[_Parallel, Any]:
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    if cfg.batch_size % dist.world_size:
        raise BenchError(
            f"train.batch_size: {cfg.batch_size} does not split evenly over {dist.world_size} processes "
            "(each process takes an equal share of every batch); use a multiple of the process count"
        )
    accelerator = Accelerator(cpu=device.type == "cpu", dataloader_config=DataLoaderConfiguration(split_batches=True))
    module, optimizer = accelerator.prepare(_LossModule(captioner), optimizer)
    return _Parallel(accelerator, module), optimizer


# --- the loop ------------------------------------------------------------------------------------

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
    trackers: Any = None,  # bench.tracking.Trackers (rank 0) or None
) -> TrainResult:
    """Fine-tune the captioner's LoRA adapter on (sample, caption) pairs; resumable, see module doc.

    With `dist` enabled, every rank calls this with the same arguments (DDP, rank 0 writes).
    """
    out_dir = Path(out_dir)
    adapter_root = out_dir / "adapter"
    _check_config(cfg)
    if not pairs:
        raise BenchError("training: no (image, caption) pairs to train on")
    trainable, total = captioner.trainable_parameters()
    if trainable == 0:
        raise BenchError(f"training: backend {captioner.name!r} has no trainable parameters (call add_lora first)")
    amp_dtype = autocast_dtype(cfg.precision, device)
    num_workers = default_num_workers() if num_workers is None else num_workers
    fingerprint = _json_roundtrip(_fingerprint(captioner, pairs, cfg, seed))

    # 1. Where are we? Resume after the last complete epoch (or return at once when all are done).
    start_epoch = _last_complete_epoch(adapter_root)
    rows: list[dict[str, Any]] = []
    step, train_s_before = 0, 0.0
    if start_epoch:
        epoch_dir = adapter_root / f"epoch-{start_epoch}"
        saved = read_json(epoch_dir / "train_state.json")
        for key, value in fingerprint.items():
            if saved.get("config", {}).get(key) != value:
                raise BenchError(
                    f"{epoch_dir / 'train_state.json'}: field 'config.{key}' is {saved.get('config', {}).get(key)!r}, "
                    f"this run has {value!r}; delete {out_dir} (or use --force) to train afresh"
                )
        rows, step, train_s_before = saved["rows"], saved["step"], saved["train_s"]
        if start_epoch >= cfg.epochs:
            captioner.load_adapter(epoch_dir)
            if dist.is_main:
                _write_curve(out_dir, rows, plot=not (out_dir / "loss.png").exists())
            return TrainResult(
                start_epoch, step, saved["final_loss"], train_s_before, start_epoch, trainable, total, cached=True
            )

    # 2. Model, optimizer (AdamW over trainable parameters), linear warmup/decay, AMP scaler.
    module = captioner.torch_module()
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    batches_per_epoch = math.ceil(len(pairs) / cfg.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.grad_accum)
    total_steps = cfg.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, LinearWarmupDecay(round(cfg.warmup_ratio * total_steps), total_steps)
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    seed_everything(seed)
    if start_epoch:
        epoch_dir = adapter_root / f"epoch-{start_epoch}"
        captioner.load_adapter(epoch_dir)
        optimizer.load_state_dict(_torch_read(epoch_dir / "optimizer.pt"))
        scheduler.load_state_dict(_torch_read(epoch_dir / "scheduler.pt"))
        scaler.load_state_dict(_torch_read(epoch_dir / "scaler.pt"))
        _set_rng_state(_torch_read(epoch_dir / "rng.pt"))
    else:
        _reset_adapters(module)
    if dist.is_main:
        _write_curve(out_dir, rows, plot=False)  # drops rows of a half-done epoch from loss.csv
    parallel: _Parallel | None = None
    if dist.enabled:
        parallel, optimizer = _parallel(captioner, optimizer, cfg, device, dist)

    # 3. Train the remaining epochs; save everything after each one.
    collate = captioner.train_collate()
    started = time.perf_counter()
    curve_written = started
    final_loss: float | None = None
    with _progress(progress) as bar:
        task = bar.add_task("train", total=(cfg.epochs - start_epoch) * batches_per_epoch, epoch=start_epoch + 1, loss="-")
        for epoch in range(start_epoch + 1, cfg.epochs + 1):
            # A per-epoch generator: the shuffle order depends on (seed, epoch) only, so a resumed
            # run sees exactly the batches an uninterrupted one would.
            loader = torch.utils.data.DataLoader(
                list(pairs), batch_size=cfg.batch_size, shuffle=True, collate_fn=collate,
                generator=torch.Generator().manual_seed(seed * 100_003 + epoch),
                num_workers=num_workers, pin_memory=device.type == "cuda",
            )
            if parallel is not None:
                loader = parallel.accelerator.prepare(loader)  # each rank: its share of every batch
            module.train()
            epoch_losses: list[float] = []
            group_loss = torch.zeros((), device=device)
            for i, batch in enumerate(loader):
                # Gradient accumulation: average over the micro-batches of this optimizer step
                # (the last group of an epoch may be shorter).
                group_start = (i // cfg.grad_accum) * cfg.grad_accum
                group_size = min(cfg.grad_accum, batches_per_epoch - group_start)
                last_of_group = i + 1 - group_start >= group_size
                if parallel is None:
                    with _autocast(device, amp_dtype):
                        loss = captioner.loss(batch) / group_size
                    scaler.scale(loss).backward()
                else:
                    with parallel.no_sync(last_of_group):
                        with _autocast(device, amp_dtype):
                            loss = parallel.module(batch) / group_size
                        scaler.scale(loss).backward()
                group_loss += loss.detach().float()
                if not last_of_group:
                    bar.advance(task)
                    continue
                # One host sync per optimizer step; across ranks, the mean of their losses.
                value = group_loss.item() if parallel is None else parallel.mean(group_loss)
                if not math.isfinite(value):
                    raise BenchError(f"training: loss became {value} at epoch {epoch}, step {step + 1}; lower train.lr")
                scaler.unscale_(optimizer)
                if cfg.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                lr = scheduler.get_last_lr()[0]
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                rows.append({"step": step, "epoch": epoch, "loss": value, "lr": lr})
                epoch_losses.append(value)
                if trackers is not None:
                    trackers.log_train(step, value, lr)
                bar.update(task, advance=1, epoch=epoch, loss=f"{value:.4f}")
                group_loss.zero_()
                if time.perf_counter() - curve_written > CURVE_EVERY_S:
                    _write_curve(out_dir, rows, plot=False)
                    curve_written = time.perf_counter()
            module.eval()

            final_loss = sum(epoch_losses) / len(epoch_losses)
            train_s = train_s_before + time.perf_counter() - started
            state = {
                "epochs_done": epoch, "step": step, "final_loss": final_loss, "train_s": train_s,
                "trainable": trainable, "total": total, "trainable_pct": 100.0 * trainable / total,
                "config": fingerprint, "rows": rows, "processes": dist.world_size,
            }
            if dist.is_main:
                _save_epoch(captioner, adapter_root, epoch, optimizer, scheduler, scaler, state)
                atomic_write_json(out_dir / "state.json", state)
                _write_curve(out_dir, rows, plot=True)
                if trackers is not None:
                    trackers.log_epoch(epoch, step, final_loss, train_s)
            dist.barrier()  # no rank runs ahead of a checkpoint it may have to resume from

    return TrainResult(
        cfg.epochs, step, final_loss, train_s_before + time.perf_counter() - started, start_epoch, trainable, total
    )
