"""Load and validate settings: `settings/*.toml` files that extend `base.toml`.

A setting file states only what differs from the file it extends (`extends = "base"` unless it
is the base itself). Tables are deep-merged, other values replaced. Every file is checked
strictly against the dataclasses in `bench.config`: an unknown key (with the closest known one
suggested), a wrong type or an impossible value is a `BenchError` naming the file that set the
key, e.g. ``settings/x.toml: lora.r must be >= 1 (got 0)``.

Nothing here imports torch: backend names and kinds are read from the backend modules' source
(see `backend_catalog`) so that a cached `bench run` answers in well under 2 s.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import os
import tomllib
import types
import typing
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from bench import paths
from bench.config import (
    DataConfig,
    GenerationConfig,
    LoraConfig,
    ModelConfig,
    ScoringConfig,
    Setting,
    TrainConfig,
)
from bench.errors import BenchError

BASE_NAME = "base"
# Tables of a setting file and the dataclass each one is checked against.
SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "lora": LoraConfig,
    "train": TrainConfig,
    "generation": GenerationConfig,
    "scoring": ScoringConfig,
}
# Top-level keys that are plain values (the rest of Setting is derived or a table).
SCALARS: tuple[str, ...] = ("description", "group", "seed", "prompt")
TOP_KEYS: tuple[str, ...] = ("extends", "backends", "models", *SCALARS, *SECTIONS)
# Tables that only mean something when a LoRA backend is trained.
LORA_ONLY_SECTIONS: tuple[str, ...] = ("lora", "train")
KNOWN_METRICS: tuple[str, ...] = ("bleu", "meteor", "rouge", "cider", "clipscore")
# "A LoRA setting applies to both LoRA backends": this order, then any other LoRA backend.
PREFERRED_ORDER: tuple[str, ...] = ("vit-gpt2", "clip-flan-t5", "llava")

Provenance = dict[str, str]  # dotted key -> label of the file that set it


# --- backend catalog (no torch import) -----------------------------------------------------------

@dataclass(frozen=True)
class BackendInfo:
    name: str
    module: str
    supports_lora: bool
    default_model: str | None


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
    return ordered_backends([b.name for b in backend_catalog().values() if not b.supports_lora])


# --- file labels and errors ----------------------------------------------------------------------

def file_label(path: Path) -> str:
    """`settings/x.toml` for files of the project, the path as given otherwise."""
    try:
        return str(path.resolve().relative_to(paths.project_dir()))
    except ValueError:
        return str(path)


def _fail(label: str, message: str) -> BenchError:
    return BenchError(f"{label}: {message}")


def _unknown_key(label: str, key: str, prefix: str, allowed: list[str]) -> BenchError:
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.5)
    hint = f"; did you mean '{prefix}{close[0]}'?" if close else f" (known keys: {', '.join(allowed)})"
    return _fail(label, f"unknown key '{prefix}{key}'{hint}")


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
            raise _unknown_key(label, key, prefix, allowed)
        ok, converted = _coerce(value, hints[key])
        if not ok:
            raise _fail(label, f"{prefix}{key} must be {_type_name(hints[key])} (got {value!r})")
        out[key] = converted
    return out


def _resolve_path_value(value: str, base_dir: Path) -> str:
    """Expand ${BENCH_...}/~ and make ./relative paths relative to the file that wrote them."""
    value = paths.expand(value)
    if value.startswith(("./", "../")):
        return str((base_dir / value).resolve())
    return value


def _check_file(raw: dict[str, Any], label: str, base_dir: Path) -> dict[str, Any]:
    """Validate keys and types of one file (before merging); return the checked table."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in TOP_KEYS:
            raise _unknown_key(label, key, "", list(TOP_KEYS))
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise _fail(label, f"{key} must be a table ([{key}])")
            out[key] = _check_fields(value, SECTIONS[key], f"{key}.", label)
        elif key == "models":
            out[key] = _check_models(value, label, base_dir)
        elif key == "backends":
            if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise _fail(label, f"backends must be a list of backend names (got {value!r})")
            out[key] = list(value)
        elif key == "extends":
            if not isinstance(value, str) or not value:
                raise _fail(label, f"extends must be a setting name or path (got {value!r})")
            out[key] = value
        else:
            out.update(_check_fields({key: value}, Setting, "", label))
    for section, key in (("scoring", "clip_model"), ("data", "dataset")):
        if isinstance(out.get(section, {}).get(key), str):
            out[section][key] = _resolve_path_value(out[section][key], base_dir)
    return out


def _check_models(raw: Any, label: str, base_dir: Path) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise _fail(label, "models must be a table of [models.<backend>] tables")
    catalog = backend_catalog()
    out: dict[str, Any] = {}
    for backend, table in raw.items():
        if backend not in catalog:
            raise _unknown_key(label, backend, "models.", sorted(catalog))
        if not isinstance(table, dict):
            raise _fail(label, f"models.{backend} must be a table with model = \"hub id or dir\"")
        checked = _check_fields(table, ModelConfig, f"models.{backend}.", label)
        if "model" in checked:
            if not checked["model"].strip():
                raise _fail(label, f"models.{backend}.model is empty")
            checked["model"] = _resolve_path_value(checked["model"], base_dir)
        # Options may name model folders too (clip-flan-t5's vision_model): expand them alike.
        for key, value in checked.get("options", {}).items():
            if isinstance(value, str):
                checked["options"][key] = _resolve_path_value(value, base_dir)
        out[backend] = checked
    return out


# --- extends chain and deep merge ----------------------------------------------------------------

def _deep_merge(
    into: dict[str, Any], new: dict[str, Any], prov: Provenance, label: str, prefix: str = ""
) -> None:
    for key, value in new.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value, prov, label, f"{dotted}.")
        else:
            into[key] = _copy(value)
            _mark(prov, dotted, value, label)


def _copy(value: Any) -> Any:
    return {k: _copy(v) for k, v in value.items()} if isinstance(value, dict) else value


def _mark(prov: Provenance, dotted: str, value: Any, label: str) -> None:
    prov[dotted] = label
    if isinstance(value, dict):
        for k, v in value.items():
            _mark(prov, f"{dotted}.{k}", v, label)


def find_setting_file(name_or_path: str | Path) -> Path:
    text = str(name_or_path)
    candidate = Path(text).expanduser()
    if text.endswith(".toml") or os.sep in text:
        if candidate.is_file():
            return candidate
        raise BenchError(f"{text}: setting file not found")
    path = paths.settings_dir() / f"{text}.toml"
    if path.is_file():
        return path
    names = [p.stem for p in sorted(paths.settings_dir().glob("*.toml"))]
    close = difflib.get_close_matches(text, names, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else f" (known: {', '.join(names) or 'none'})"
    raise BenchError(f"settings/{text}.toml: no such setting{hint}")


def _read_toml(path: Path) -> dict[str, Any]:
    label = file_label(path)
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise _fail(label, f"invalid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise _fail(label, f"not UTF-8 text (byte {exc.start})") from exc
    except OSError as exc:
        raise _fail(label, f"cannot read ({exc.strerror or exc})") from exc


def _is_base(path: Path) -> bool:
    return path.resolve() == (paths.settings_dir() / f"{BASE_NAME}.toml").resolve()


def _chain(path: Path) -> list[tuple[Path, dict[str, Any]]]:
    """The files from the root ancestor down to `path`, each validated."""
    chain: list[tuple[Path, dict[str, Any]]] = []
    seen: list[Path] = []
    current: Path | None = path
    while current is not None:
        resolved = current.resolve()
        if resolved in seen:
            cycle = " -> ".join(file_label(p) for p in [*seen, resolved])
            raise _fail(file_label(path), f"extends cycle: {cycle}")
        seen.append(resolved)
        checked = _check_file(_read_toml(current), file_label(current), current.parent)
        chain.append((current, checked))
        parent = checked.get("extends")
        if parent is None:
            current = None if _is_base(current) else paths.settings_dir() / f"{BASE_NAME}.toml"
            if current is not None and not current.is_file():
                raise _fail(file_label(path), f"extends the base setting, but {file_label(current)} is missing")
        else:
            parent_path = Path(paths.expand(parent))
            if parent.endswith(".toml") or os.sep in parent:
                current = parent_path if parent_path.is_absolute() else current.parent / parent_path
            else:
                current = paths.settings_dir() / f"{parent}.toml"
            if not current.is_file():
                raise _fail(file_label(chain[-1][0]), f"extends: setting {parent!r} not found ({file_label(current)})")
    chain.reverse()
    return chain


# --- building and checking the Setting -----------------------------------------------------------

@dataclass(frozen=True)
class _Check:
    key: str
    ok: bool
    message: str
    related: tuple[str, ...] = ()  # keys whose setting file may be the one at fault instead


def _range_checks(s: Setting) -> list[_Check]:
    g, lo, t, d, sc = s.generation, s.lora, s.train, s.data, s.scoring
    return [
        _Check("lora.r", lo.r >= 1, f"must be >= 1 (got {lo.r})"),
        _Check("lora.alpha", lo.alpha > 0, f"must be > 0 (got {lo.alpha})"),
        _Check("lora.dropout", 0 <= lo.dropout < 1, f"must be in [0, 1) (got {lo.dropout})"),
        _Check("lora.targets", bool(lo.targets) and all(lo.targets), "must name a preset ('attn', 'attn_ffn') or modules"),
        _Check("train.epochs", t.epochs >= 1, f"must be >= 1 (got {t.epochs})"),
        _Check("train.lr", t.lr > 0, f"must be > 0 (got {t.lr})"),
        _Check("train.batch_size", t.batch_size >= 1, f"must be >= 1 (got {t.batch_size})"),
        _Check("train.grad_accum", t.grad_accum >= 1, f"must be >= 1 (got {t.grad_accum})"),
        _Check("train.warmup_ratio", 0 <= t.warmup_ratio < 1, f"must be in [0, 1) (got {t.warmup_ratio})"),
        _Check("train.weight_decay", t.weight_decay >= 0, f"must be >= 0 (got {t.weight_decay})"),
        _Check("train.max_grad_norm", t.max_grad_norm > 0, f"must be > 0 (got {t.max_grad_norm})"),
        _Check("train.train_size", t.train_size is None or t.train_size >= 1, f"must be >= 1 (got {t.train_size})"),
        _Check("generation.num_beams", g.num_beams >= 1, f"must be >= 1 (got {g.num_beams})"),
        _Check(
            "generation.num_beams",
            g.strategy != "beam" or g.num_beams >= 2,
            f"must be >= 2 with strategy = 'beam' (got {g.num_beams})",
            ("generation.strategy",),
        ),
        _Check(
            "generation.num_beams",
            g.strategy != "greedy" or g.num_beams == 1,
            f"must be 1 with strategy = 'greedy' (got {g.num_beams}); set strategy = 'beam'",
            ("generation.strategy",),
        ),
        _Check("generation.max_new_tokens", g.max_new_tokens is None or g.max_new_tokens >= 1,
               f"must be >= 1 (got {g.max_new_tokens})"),
        _Check(
            "generation.no_repeat_ngram_size",
            g.no_repeat_ngram_size >= 0,
            f"must be >= 0 (got {g.no_repeat_ngram_size})",
        ),
        _Check(
            "generation.repetition_penalty",
            g.repetition_penalty > 0,
            f"must be > 0 (got {g.repetition_penalty})",
        ),
        _Check("generation.batch_size", g.batch_size >= 1, f"must be >= 1 (got {g.batch_size})"),
        _Check("data.dataset", bool(d.dataset.strip()), "must not be empty"),
        _Check("data.limit", d.limit is None or d.limit >= 1, f"must be >= 1 (got {d.limit})"),
        _Check("scoring.clip_batch_size", sc.clip_batch_size >= 1, f"must be >= 1 (got {sc.clip_batch_size})"),
        _Check(
            "scoring.metrics",
            bool(sc.metrics) and all(m in KNOWN_METRICS for m in sc.metrics),
            f"must be a non-empty list of {', '.join(KNOWN_METRICS)} (got {list(sc.metrics)})",
        ),
        _Check("scoring.clip_model", bool(sc.clip_model.strip()), "must not be empty"),
        _Check("seed", s.seed >= 0, f"must be >= 0 (got {s.seed})"),
    ]


def _prompt_names() -> list[str]:
    # Names only: one bad prompt file must not make every setting fail to load.
    return sorted(p.stem for p in paths.prompts_dir().glob("*.toml"))


def _check_prompt(name: str, label: str) -> None:
    known = _prompt_names()
    if name not in known and not Path(paths.expand(name)).is_file():
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f" (known: {', '.join(known) or 'none'})"
        raise _fail(label, f"prompt: unknown prompt {name!r}{hint}")
    from bench.prompts import load_prompt

    load_prompt(name)  # a bad prompt file raises its own one-line error naming that file


def _semantic_checks(merged: dict[str, Any], prov: Provenance, label: str) -> tuple[str, ...]:
    """Checks across keys; returns the setting's backends."""
    catalog = backend_catalog()

    def where(key: str) -> str:
        return prov.get(key, label)

    prompt = merged.get("prompt")
    if "backends" in merged:
        backends = merged["backends"]
        if not backends:
            raise _fail(where("backends"), "backends must name at least one backend")
        for b in backends:
            if b not in catalog:
                close = difflib.get_close_matches(b, list(catalog), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise _fail(
                    where("backends"), f"backends: unknown backend {b!r}{hint} (available: {', '.join(sorted(catalog))})"
                )
        if len(set(backends)) != len(backends):
            raise _fail(where("backends"), f"backends lists a backend twice ({backends})")
        backends = tuple(backends)
    else:
        backends = zero_shot_backends() if prompt else lora_backends()
        if not backends:
            raise _fail(label, "backends: no backend is available for this kind of setting")
    zero_shot = [b for b in backends if not catalog[b].supports_lora]
    lora = [b for b in backends if catalog[b].supports_lora]
    if zero_shot and not prompt:
        raise _fail(where("backends"), f"backend {zero_shot[0]!r} is zero-shot and needs a prompt (prompt = \"<name>\")")
    if prompt and not zero_shot:
        raise _fail(where("prompt"), f"prompt: backends {', '.join(lora)} take no prompt (only zero-shot backends do)")
    if not lora:
        base_label = file_label(paths.settings_dir() / f"{BASE_NAME}.toml")
        for key, source in prov.items():
            if key.split(".")[0] in LORA_ONLY_SECTIONS and "." in key and source != base_label:
                raise _fail(source, f"{key} applies only to LoRA backends; {', '.join(zero_shot)} is zero-shot")
    return backends


def _blame(check: _Check, prov: Provenance, order: list[str], label: str) -> str:
    """The most derived file among those that set the keys of a failed check."""
    setters = [prov[k] for k in (check.key, *check.related) if k in prov]
    if not setters:
        return label
    return max(setters, key=lambda f: order.index(f) if f in order else len(order))


def _build(merged: dict[str, Any], prov: Provenance, name: str, label: str, order: list[str]) -> Setting:
    backends = _semantic_checks(merged, prov, label)
    catalog = backend_catalog()
    models: dict[str, ModelConfig] = {}
    for backend, table in merged.get("models", {}).items():
        model = table.get("model") or catalog[backend].default_model
        if model:
            models[backend] = ModelConfig(
                model=model,
                quantization=table.get("quantization", "none"),
                options=dict(table.get("options", {})),
            )
    for backend in backends:
        if backend not in models:
            default = catalog[backend].default_model
            if not default:
                raise _fail(label, f"models.{backend}.model is missing (no default model for {backend!r})")
            models[backend] = ModelConfig(model=default)
    sections = {key: cls(**merged.get(key, {})) for key, cls in SECTIONS.items()}
    setting = Setting(
        name=name,
        source=label,
        backends=backends,
        models=models,
        **sections,
        **{k: merged[k] for k in SCALARS if k in merged},
    )
    for check in _range_checks(setting):
        if not check.ok:
            raise _fail(_blame(check, prov, order, label), f"{check.key} {check.message}")
    if setting.prompt:
        _check_prompt(setting.prompt, prov.get("prompt", label))
    return setting


def _merge_chain(chain: list[tuple[Path, dict[str, Any]]]) -> tuple[dict[str, Any], Provenance]:
    merged: dict[str, Any] = {}
    prov: Provenance = {}
    for path, table in chain:
        _deep_merge(merged, {k: v for k, v in table.items() if k != "extends"}, prov, file_label(path))
    return merged, prov


def load_setting(name_or_path: str | Path) -> Setting:
    """A setting by name (`settings/<name>.toml`) or by path to a .toml file, fully validated."""
    path = find_setting_file(name_or_path)
    chain = _chain(path)
    merged, prov = _merge_chain(chain)
    return _build(merged, prov, path.stem, file_label(path), [file_label(p) for p, _ in chain])


def prompt_setting(prompt: str, *, base: str | Path = BASE_NAME) -> Setting:
    """The zero-shot setting `bench run --prompt NAME` runs: the base setting with that prompt."""
    base_path = find_setting_file(base)
    chain = _chain(base_path)
    merged, prov = _merge_chain(chain)
    label = "bench run --prompt"
    known = _prompt_names()
    if prompt not in known and not Path(paths.expand(prompt)).is_file():
        close = difflib.get_close_matches(prompt, known, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f" (known: {', '.join(known) or 'none'})"
        raise BenchError(f"{file_label(paths.prompts_dir())}: no prompt named {prompt!r}{hint}")
    for key in list(merged):  # only the base's models, data, generation and scoring apply
        if key in LORA_ONLY_SECTIONS or key in ("backends", "group", "description"):
            merged.pop(key)
    prov = {k: v for k, v in prov.items() if k.split(".")[0] not in (*LORA_ONLY_SECTIONS, "backends")}
    merged["prompt"] = prompt
    merged["description"] = f"zero-shot with prompt {prompt!r} (bench run --prompt)"
    prov["prompt"] = label
    order = [*(file_label(p) for p, _ in chain), label]
    return _build(merged, prov, f"prompt-{Path(prompt).stem}", file_label(base_path), order)


def setting_files() -> list[Path]:
    return sorted(p for p in paths.settings_dir().glob("*.toml") if p.stem != BASE_NAME)


def list_settings() -> list[Setting]:
    """Every setting in settings/ except the base, sorted by name (the order `--group` runs)."""
    return [load_setting(p) for p in setting_files()]


def settings_in_group(group: str) -> list[Setting]:
    found = [s for s in list_settings() if s.group == group]
    if not found:
        groups = sorted({s.group for s in list_settings() if s.group})
        raise BenchError(f"settings/: no setting has group = {group!r} (groups: {', '.join(groups) or 'none'})")
    return found


def is_lora_backend(backend: str) -> bool:
    info = backend_catalog().get(backend)
    if info is None:
        raise BenchError(f"unknown backend {backend!r}; available: {', '.join(sorted(backend_catalog()))}")
    return info.supports_lora
