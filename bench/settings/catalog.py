"""Backends declared in bench/backends/*.py, read from their source with `ast` (no torch import).

Importing torch and transformers costs seconds; reading the backends' source answers the same
questions (names, LoRA or zero-shot, default model) in milliseconds, so a cached `bench run`
stays fast.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from bench import paths
from bench.errors import BenchError

# "A LoRA setting applies to both LoRA backends": this order, then any other LoRA backend.
PREFERRED_ORDER: tuple[str, ...] = ("vit-gpt2", "clip-flan-t5", "llava")


@dataclass(frozen=True)
class BackendInfo:
    name: str
    module: str
    supports_lora: bool
    default_model: str | None
    default_max_new_tokens: int = 30  # generation.max_new_tokens when a setting leaves it unset
    default_options: dict[str, Any] = field(default_factory=dict)  # recorded in config.json
    # A zero-shot backend that a prompt setting with its own [lora] table fine-tunes (VLM LoRA).
    supports_vlm_lora: bool = False


def _class_attr(node: ast.ClassDef, attr: str) -> Any:
    for stmt in node.body:
        targets: list[ast.expr] = []
        value: ast.expr | None = None
        if isinstance(stmt, ast.Assign):
            targets, value = stmt.targets, stmt.value
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            targets, value = [stmt.target], stmt.value
        for target in targets:
            if isinstance(target, ast.Name) and target.id == attr and isinstance(value, ast.Constant):
                return value.value
            if isinstance(target, ast.Name) and target.id == attr and isinstance(value, ast.Dict):
                return ast.literal_eval(value)
    return None


def _registered_classes(source: str) -> list[tuple[str, ast.ClassDef]]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        for deco in node.decorator_list:
            if (
                isinstance(deco, ast.Call)
                and getattr(deco.func, "id", getattr(deco.func, "attr", None)) == "register_backend"
                and deco.args
                and isinstance(deco.args[0], ast.Constant)
            ):
                found.append((str(deco.args[0].value), node))
    return found


@lru_cache(maxsize=8)
def _catalog_from(folder: str, stamp: tuple[tuple[str, float], ...]) -> dict[str, BackendInfo]:
    catalog: dict[str, BackendInfo] = {}
    for name, _mtime in stamp:
        path = Path(folder) / name
        for backend, node in _registered_classes(path.read_text(encoding="utf-8")):
            catalog[backend] = BackendInfo(
                name=backend,
                module=f"bench.backends.{path.stem}",
                supports_lora=bool(_class_attr(node, "supports_lora")),
                default_model=_class_attr(node, "default_model"),
                default_max_new_tokens=_class_attr(node, "default_max_new_tokens") or 30,
                default_options=_class_attr(node, "default_options") or {},
                supports_vlm_lora=bool(_class_attr(node, "supports_vlm_lora")),
            )
    return catalog


def backend_catalog() -> dict[str, BackendInfo]:
    """Backends declared in bench/backends/*.py, read from their source with `ast`.

    Equivalent to `bench.backends.available_backends()` (a test checks it) without importing
    torch and transformers, which costs seconds.
    """
    folder = paths.PACKAGE_DIR / "backends"
    files = sorted(p for p in folder.glob("*.py") if p.stem != "base" and not p.stem.startswith("_"))
    stamp = tuple((p.name, p.stat().st_mtime) for p in files)
    return _catalog_from(str(folder), stamp)


def ordered_backends(names: list[str]) -> tuple[str, ...]:
    rank = {n: i for i, n in enumerate(PREFERRED_ORDER)}
    return tuple(sorted(names, key=lambda n: (rank.get(n, len(rank)), n)))


def lora_backends() -> tuple[str, ...]:
    return ordered_backends([b.name for b in backend_catalog().values() if b.supports_lora])


def zero_shot_backends() -> tuple[str, ...]:
    """Zero-shot backends a setting with a prompt runs when it names none: those with a default
    model (`vlm` has none: it runs the models a setting or `--model` names)."""
    return ordered_backends([b.name for b in backend_catalog().values() if not b.supports_lora and b.default_model])


def is_lora_backend(backend: str) -> bool:
    info = backend_catalog().get(backend)
    if info is None:
        raise BenchError(f"unknown backend {backend!r}; available: {', '.join(sorted(backend_catalog()))}")
    return info.supports_lora
