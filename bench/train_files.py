"""What a training run keeps on disk, and reads back to resume: per-epoch checkpoints (adapter,
optimizer, scheduler, scaler, RNG state), and the loss curve (loss.csv, loss.png).

Checkpoint files are written by bench with `torch.save` (tensors and plain containers only) and
read back only with `torch.load(weights_only=True)`; an epoch folder appears atomically.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import pickle
import random
import re
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.backends.base import Captioner
from bench.config import TrainConfig
from bench.data.types import Sample
from bench.errors import BenchError
from bench.io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json

EPOCH_DIR = re.compile(r"^epoch-(\d+)$")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state() -> dict[str, Any]:
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


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    pos, has_gauss, cached = state["numpy_rest"]
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def torch_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def torch_read(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:  # weights_only refuses code
        raise BenchError(f"{path}: unreadable training checkpoint ({' '.join(str(exc).split())[:200]})") from exc


def last_complete_epoch(adapter_root: Path) -> int:
    """Highest N with a finished `adapter/epoch-N/` (folders appear atomically, state last)."""
    done = [
        int(m.group(1))
        for p in (adapter_root.iterdir() if adapter_root.is_dir() else [])
        if (m := EPOCH_DIR.match(p.name)) and (p / "train_state.json").is_file()
    ]
    return max(done, default=0)


def reset_adapters(module: torch.nn.Module) -> None:
    """Re-draw every LoRA A (B = 0) from the seeded RNG: a fresh run depends on `seed` only."""
    from peft.tuners.lora import LoraLayer

    for layer in module.modules():
        if isinstance(layer, LoraLayer):
            for name in layer.lora_A:
                layer.reset_lora_parameters(name, True)


def write_curve(out_dir: Path, rows: list[dict[str, Any]], plot: bool) -> None:
    """loss.csv and, at epoch ends, loss.png, both written atomically.

    The stdlib csv writer and matplotlib's object API (no pyplot): pandas and pyplot would add
    a second or more of imports to every run for four columns and one figure.
    """
    columns = ["step", "epoch", "loss", "lr"]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([row[c] for c in columns] for row in rows)
    atomic_write_text(out_dir / "loss.csv", text.getvalue())
    if plot and rows:
        plot_curve(out_dir, rows)


def plot_curve(out_dir: Path, rows: list[dict[str, Any]]) -> None:
    """loss.png: the loss per optimizer step and per-epoch means (matplotlib's object API, Agg)."""
    from matplotlib.figure import Figure

    epochs: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        epochs.setdefault(row["epoch"], []).append(row)
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1, label="loss per step")
    ax.plot([max(r["step"] for r in e) for e in epochs.values()],
            [sum(r["loss"] for r in e) / len(e) for e in epochs.values()], "o-", label="epoch mean")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    atomic_write_bytes(out_dir / "loss.png", buffer.getvalue())


def save_epoch(
    captioner: Captioner, adapter_root: Path, epoch: int, optimizer: Any, scheduler: Any, scaler: Any,
    state: dict[str, Any],
) -> Path:
    """adapter/epoch-N/ complete or absent: written under a temp name, then renamed."""
    final = adapter_root / f"epoch-{epoch}"
    partial = adapter_root / f".epoch-{epoch}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    captioner.save_adapter(partial)
    atomic_write_bytes(partial / "optimizer.pt", torch_bytes(optimizer.state_dict()))
    atomic_write_bytes(partial / "scheduler.pt", torch_bytes(scheduler.state_dict()))
    atomic_write_bytes(partial / "scaler.pt", torch_bytes(scaler.state_dict()))
    atomic_write_bytes(partial / "rng.pt", torch_bytes(rng_state()))
    atomic_write_json(partial / "train_state.json", state)
    if final.exists():  # a stale copy from an aborted run of the same config
        shutil.rmtree(final)
    os.replace(partial, final)
    return final


def run_fingerprint(captioner: Captioner, pairs: Sequence[tuple[Sample, str]], cfg: TrainConfig, seed: int) -> dict[str, Any]:
    """What must not change between a run and its resumption (else the weights would differ)."""
    digest = hashlib.sha256()
    for sample, caption in pairs:
        digest.update(f"{sample.image_id}\t{caption}\n".encode())
    lora = captioner.lora_config
    train = asdict(cfg)
    train.pop("train_size")  # already applied by the caller; the pairs digest covers it
    return _json_roundtrip({
        "backend": captioner.name,
        "train": train,
        "lora": asdict(lora) if lora is not None else None,
        "seed": seed,
        "pairs": len(pairs),
        "pairs_sha256": digest.hexdigest(),
    })


def _json_roundtrip(obj: Any) -> Any:
    # Tuples become lists in JSON: compare like with like.
    return json.loads(json.dumps(obj))


def resume_point(adapter_root: Path, fingerprint: dict[str, Any], out_dir: Path) -> tuple[int, dict[str, Any] | None]:
    """(last complete epoch, its train_state.json); a saved config that differs is an error."""
    start_epoch = last_complete_epoch(adapter_root)
    if not start_epoch:
        return 0, None
    epoch_dir = adapter_root / f"epoch-{start_epoch}"
    saved = read_json(epoch_dir / "train_state.json")
    for key, value in fingerprint.items():
        if saved.get("config", {}).get(key) != value:
            raise BenchError(
                f"{epoch_dir / 'train_state.json'}: field 'config.{key}' is {saved.get('config', {}).get(key)!r}, "
                f"this run has {value!r}; delete {out_dir} (or use --force) to train afresh"
            )
    return start_epoch, saved
