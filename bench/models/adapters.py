"""LoRA adapter folders, written once for every backend that trains one.

An adapter folder is peft's layout (adapter_config.json + adapter_model.safetensors) plus a bench
marker naming the backend, and any extra module a backend trains beside LoRA (clip-flan-t5's
projection) as its own safetensors file. Folders are written atomically and read from
safetensors only (a pickle can run code). `AdapterMixin` gives a captioner `save_adapter` and
`load_adapter` on top of these functions.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from bench.errors import BenchError
from bench.model_source import error_line
from bench.models.lora_targets import add_peft

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
BENCH_ADAPTER = "bench_adapter.json"
# Pickle files: never loaded as adapters; as base weights only through weights_only (model_loader).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())


def write_dir_atomically(out_dir: Path, write: Callable[[Path], None]) -> None:
    """Run `write(tmp)` on a fresh temp folder beside `out_dir`, then rename it into place.

    A crash leaves either the previous folder or the new one, never a half-written one (a stale
    `.tmp` sibling at most, removed by the next save).
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.parent.glob(f".{out_dir.name}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        write(tmp)
        _fsync_tree(tmp)
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
            os.replace(out_dir, old / "old")
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BenchError(f"{out_dir}: cannot write the adapter ({exc.strerror or exc})") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_peft_adapter(peft_model: Any, folder: Path, backend: str) -> None:
    """peft's own layout (adapter_config.json + adapter_model.safetensors) plus a bench marker."""
    from bench.io import atomic_write_json

    # save_embedding_layers=False: peft's "auto" asks the hub whether the base model's config
    # exists (to compare vocab sizes) at every save when the base is a hub id; bench never
    # adapts or resizes embeddings (LoRA targets are decoder attention/FFN layers only).
    peft_model.save_pretrained(str(folder), safe_serialization=True, save_embedding_layers=False)
    (folder / "README.md").unlink(missing_ok=True)  # peft's model-card stub says nothing useful
    atomic_write_json(folder / BENCH_ADAPTER, {"backend": backend, "format": 1})


def check_adapter_dir(adapter_dir: Path, backend: str, extra_files: Sequence[str] = ()) -> None:
    """Refuse anything but a bench/peft adapter folder stored as safetensors (pickles can run code)."""
    from bench.io import read_json

    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        raise BenchError(f"{adapter_dir}: adapter folder not found")
    for name in (ADAPTER_WEIGHTS, *extra_files):
        if not (adapter_dir / name).is_file():
            pickles = sorted(p.name for p in adapter_dir.iterdir() if p.suffix in PICKLE_SUFFIXES)
            if pickles:
                raise BenchError(
                    f"{adapter_dir / pickles[0]}: pickle checkpoints are refused (loading one can run code); "
                    f"provide {name} (safetensors)"
                )
            raise BenchError(f"{adapter_dir / name}: missing (an adapter folder holds {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})")
    if not (adapter_dir / ADAPTER_CONFIG).is_file():
        raise BenchError(f"{adapter_dir / ADAPTER_CONFIG}: missing")
    marker = adapter_dir / BENCH_ADAPTER
    if marker.is_file():
        saved = read_json(marker).get("backend")
        if saved != backend:
            raise BenchError(f"{marker}: field 'backend' is {saved!r}, this is a {backend!r} model")


def load_peft_adapter(model: torch.nn.Module, peft_model: Any | None, adapter_dir: Path) -> Any:
    """Load `adapter_dir` into `peft_model` (or inject a new one from its config into `model`)."""
    import peft
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    if peft_model is None:
        try:
            config = peft.LoraConfig.from_pretrained(str(adapter_dir))
        except (ValueError, TypeError, OSError) as exc:
            raise BenchError(f"{adapter_dir / ADAPTER_CONFIG}: not a LoRA adapter config ({error_line(exc)})") from exc
        config.inference_mode = False
        peft_model = add_peft(model, config)
    try:
        state = load_file(str(adapter_dir / ADAPTER_WEIGHTS), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise BenchError(f"{adapter_dir / ADAPTER_WEIGHTS}: not a readable safetensors file ({error_line(exc)})") from exc
    try:
        result = peft.set_peft_model_state_dict(peft_model, state)
    except RuntimeError as exc:
        raise BenchError(f"{adapter_dir / ADAPTER_WEIGHTS}: does not fit this model's LoRA layers ({error_line(exc)})") from exc
    missing_lora = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or missing_lora:
        bad = (result.unexpected_keys or missing_lora)[0]
        raise BenchError(f"{adapter_dir / ADAPTER_WEIGHTS}: tensor {bad!r} does not match this model's LoRA layers")
    return peft_model


class AdapterMixin:
    """`save_adapter` / `load_adapter` of a captioner whose LoRA lives in `self.peft_model`.

    A backend says what differs through three hooks: which module peft wraps, which extra
    modules are saved beside the adapter, and what to do once loaded.
    """

    name: ClassVar[str]
    model: Any
    device: torch.device
    peft_model: Any = None

    def lora_base(self) -> torch.nn.Module:
        """The module LoRA is injected into."""
        return self.model

    def adapter_extras(self) -> Mapping[str, torch.nn.Module]:
        """file name -> a trained module saved as its own safetensors file in the folder."""
        return {}

    def after_adapter_load(self) -> None:
        self.model.to(self.device)

    def save_adapter(self, out_dir: Path) -> None:
        from safetensors.torch import save_file

        if self.peft_model is None:
            raise BenchError(f"{out_dir}: no LoRA adapter to save (add_lora first)")
        extras = self.adapter_extras()

        def write(tmp: Path) -> None:
            save_peft_adapter(self.peft_model, tmp, self.name)
            for file, module in extras.items():
                save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, str(tmp / file))

        write_dir_atomically(Path(out_dir), write)

    def load_adapter(self, adapter_dir: Path) -> None:
        """Apply a saved adapter to the base, unmerged (LoRA layers stay separate from the weights)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        adapter_dir = Path(adapter_dir)
        extras = self.adapter_extras()
        check_adapter_dir(adapter_dir, self.name, extra_files=tuple(extras))
        for file, module in extras.items():
            try:
                module.load_state_dict(load_file(str(adapter_dir / file), device="cpu"), strict=True)
            except (SafetensorError, OSError, RuntimeError) as exc:
                what = Path(file).stem.replace("_", " ")
                raise BenchError(f"{adapter_dir / file}: does not fit this model's {what} ({error_line(exc)})") from exc
        self.peft_model = load_peft_adapter(self.lora_base(), self.peft_model, adapter_dir)
        self.after_adapter_load()
