"""The schema of a setting file: which keys exist, their types, and one-line errors naming the file.

Every file is checked strictly against the dataclasses in `bench.config` before merging: an
unknown key (with the closest known one suggested) or a wrong type is a `BenchError` naming
the file that set the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from bench import paths
from bench.config import (
    CostConfig,
    DataConfig,
    GenerationConfig,
    LoraConfig,
    ModelConfig,
    ScoringConfig,
    Setting,
    TrainConfig,
)
from bench.backends.table import backend_table
from bench.errors import BenchError, where_it_belongs

BASE_NAME = "base"
# Tables of a setting file and the dataclass each one is checked against.
SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "lora": LoraConfig,
    "train": TrainConfig,
    "generation": GenerationConfig,
    "scoring": ScoringConfig,
    "cost": CostConfig,
}
# Top-level keys that are plain values (the rest of Setting is derived or a table).
SCALARS: tuple[str, ...] = ("description", "group", "seed", "prompt", "prompts")
TOP_KEYS: tuple[str, ...] = ("extends", "backends", "models", *SCALARS, *SECTIONS)
# Tables that only mean something when a LoRA backend is trained.
LORA_ONLY_SECTIONS: tuple[str, ...] = ("lora", "train")

Provenance = dict[str, str]  # dotted key -> label of the file that set it


# --- file labels and errors ----------------------------------------------------------------------

def file_label(path: Path) -> str:
    """`settings/x.toml` for files of the project, the path as given otherwise."""
    try:
        return str(path.resolve().relative_to(paths.project_dir()))
    except ValueError:
        return str(path)


def file_error(label: str, message: str) -> BenchError:
    return BenchError(f"{label}: {message}")


def _levels() -> dict[str, tuple[str, ...]]:
    """Each level of a setting file ("" the top, "train." a table) -> the keys it holds."""
    levels: dict[str, tuple[str, ...]] = {"": TOP_KEYS}
    levels.update({f"{name}.": tuple(f.name for f in dataclasses.fields(cls)) for name, cls in SECTIONS.items()})
    levels["models.<backend>."] = tuple(f.name for f in dataclasses.fields(ModelConfig))
    return levels


def unknown_key_error(label: str, key: str, prefix: str, allowed: list[str]) -> BenchError:
    hint = where_it_belongs(key, prefix, _levels())
    if hint is None:
        close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.5)
        hint = f"; did you mean '{prefix}{close[0]}'?" if close else f" (known keys: {', '.join(allowed)})"
    return file_error(label, f"unknown key '{prefix}{key}'{hint}")


# --- type checking against the dataclasses -------------------------------------------------------

def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp) if a is not type(None))
    if origin is tuple:
        return "a list of strings"
    if origin is dict:
        return "a table"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """(ok, converted value) for a TOML value against a type hint."""
    origin = get_origin(tp)
    if origin is Literal:
        return value in get_args(tp), value
    if origin in (typing.Union, types.UnionType):
        for arm in get_args(tp):
            if arm is type(None):
                continue
            ok, out = _coerce(value, arm)
            if ok:
                return True, out
        return False, value
    if origin is tuple:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        return ok, tuple(value) if ok else value
    if origin is dict or tp is dict:
        return isinstance(value, dict), value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if tp is str:
        return isinstance(value, str), value
    return isinstance(value, tp), value


def _check_fields(raw: dict[str, Any], cls: type, prefix: str, label: str) -> dict[str, Any]:
    hints = get_type_hints(cls)
    allowed = [f.name for f in dataclasses.fields(cls)]
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in allowed:
            raise unknown_key_error(label, key, prefix, allowed)
        ok, converted = _coerce(value, hints[key])
        if not ok:
            raise file_error(label, f"{prefix}{key} must be {_type_name(hints[key])} (got {value!r})")
        out[key] = converted
    return out


def resolve_path_value(value: str, base_dir: Path) -> str:
    """Expand ${BENCH_...}/~ and make ./relative paths relative to the file that wrote them."""
    value = paths.expand(value)
    if value.startswith(("./", "../")):
        return str((base_dir / value).resolve())
    return value


def check_file(raw: dict[str, Any], label: str, base_dir: Path) -> dict[str, Any]:
    """Validate keys and types of one file (before merging); return the checked table."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in TOP_KEYS:
            raise unknown_key_error(label, key, "", list(TOP_KEYS))
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise file_error(label, f"{key} must be a table ([{key}])")
            out[key] = _check_fields(value, SECTIONS[key], f"{key}.", label)
        elif key == "models":
            out[key] = _check_models(value, label, base_dir)
        elif key == "backends":
            if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise file_error(label, f"backends must be a list of backend names (got {value!r})")
            out[key] = list(value)
        elif key == "extends":
            if not isinstance(value, str) or not value:
                raise file_error(label, f"extends must be a setting name or path (got {value!r})")
            out[key] = value
        else:
            out.update(_check_fields({key: value}, Setting, "", label))
    for section, key in (("scoring", "clip_model"), ("data", "dataset")):
        if isinstance(out.get(section, {}).get(key), str):
            out[section][key] = resolve_path_value(out[section][key], base_dir)
    return out


def _check_models(raw: Any, label: str, base_dir: Path) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise file_error(label, "models must be a table of [models.<backend>] tables")
    catalog = backend_table()
    out: dict[str, Any] = {}
    for backend, table in raw.items():
        if backend not in catalog:
            raise unknown_key_error(label, backend, "models.", sorted(catalog))
        if not isinstance(table, dict):
            raise file_error(label, f"models.{backend} must be a table with model = \"hub id or dir\"")
        checked = _check_fields(table, ModelConfig, f"models.{backend}.", label)
        if "model" in checked:
            if not checked["model"].strip():
                raise file_error(label, f"models.{backend}.model is empty")
            checked["model"] = resolve_path_value(checked["model"], base_dir)
        if "models" in checked:  # a sweep's model list: folders resolved alike
            checked["models"] = tuple(resolve_path_value(m, base_dir) for m in checked["models"])
        # Options may name model folders too (clip-flan-t5's vision_model): expand them alike.
        for key, value in checked.get("options", {}).items():
            if isinstance(value, str):
                checked["options"][key] = resolve_path_value(value, base_dir)
        out[backend] = checked
    return out

