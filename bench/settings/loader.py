"""Load and validate settings: `settings/*.toml` files that extend `base.toml` (the package's
public entry points; `bench.settings` re-exports them).

A setting file states only what differs from the file it extends (`extends = "base"` unless it
is the base itself). Tables are deep-merged, other values replaced. Every file is checked
strictly against the dataclasses in `bench.config`: an unknown key (with the closest known one
suggested), a wrong type or an impossible value is a `BenchError` naming the file that set the
key, e.g. ``settings/x.toml: lora.r must be >= 1 (got 0)``.

The work is split by step: `schema` (keys and types of one file), `chain` (the extends chain and
the deep merge), `checks` (checks across keys). This module builds the `Setting` and holds the
public entry points.

Nothing here imports torch: backend names and kinds are rows of `bench.backends.table`, so that
a cached `bench run` answers in well under 2 s.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from bench import paths
from bench.config import ModelConfig, Setting
from bench.errors import BenchError
from bench.sweep import check_sweep, model_slug
from bench.backends.table import backend_table
from bench.settings.chain import find_setting_file, merge_chain, read_chain
from bench.settings.checks import blame, check_prompt, prompt_names, range_checks, semantic_checks, vlm_lora_requested
from bench.settings.schema import (
    BASE_NAME,
    LORA_ONLY_SECTIONS,
    SCALARS,
    SECTIONS,
    Provenance,
    file_error,
    file_label,
    resolve_path_value,
)

def _build(merged: dict[str, Any], prov: Provenance, name: str, label: str, order: list[str]) -> Setting:
    backends = semantic_checks(merged, prov, label)
    catalog = backend_table()
    models: dict[str, ModelConfig] = {}
    for backend, table in merged.get("models", {}).items():
        sweep = tuple(table.get("models", ()))
        model = table.get("model") or (sweep[0] if sweep else None) or catalog[backend].default_model
        if model:
            models[backend] = ModelConfig(
                model=model,
                quantization=table.get("quantization", "none"),
                options=dict(table.get("options", {})),
                models=sweep,
                base_url=table.get("base_url", ""),
                api_key_env=table.get("api_key_env", ""),
            )
    for backend in backends:
        if backend not in models:
            default = catalog[backend].default_model
            if not default:
                raise file_error(label, f"models.{backend}.model is missing (no default model for {backend!r})")
            models[backend] = ModelConfig(model=default)
    sections = {key: cls(**merged.get(key, {})) for key, cls in SECTIONS.items()}
    setting = Setting(
        name=name,
        source=label,
        backends=backends,
        models=models,
        **sections,
        **{k: merged[k] for k in SCALARS if k in merged},
        vlm_lora=vlm_lora_requested(prov, merged.get("prompt")),
    )
    for check in range_checks(setting):
        if not check.ok:
            raise file_error(blame(check, prov, order, label), f"{check.key} {check.message}")
    if setting.prompt:
        check_prompt(setting.prompt, prov.get("prompt", label))
    for prompt_name in setting.prompts:
        check_prompt(prompt_name, prov.get("prompts", label))
    check_sweep(setting, prov.get("prompts", label))
    return setting


def load_setting(name_or_path: str | Path) -> Setting:
    """A setting by name (`settings/<name>.toml`) or by path to a .toml file, fully validated."""
    path = find_setting_file(name_or_path)
    chain = read_chain(path)
    merged, prov = merge_chain(chain)
    return _build(merged, prov, path.stem, file_label(path), [file_label(p) for p, _ in chain])


def prompt_setting(
    prompt: str, *, base: str | Path = BASE_NAME, model: str | None = None, endpoint: str | None = None,
    api_key_env: str | None = None,
) -> Setting:
    """The zero-shot setting `bench run --prompt NAME [--model ID_OR_DIR]` runs: the base setting
    with that prompt; with a model, on the `vlm` backend (run name prompt-NAME--MODEL); with an
    endpoint too, on the `openai` backend: the model the endpoint serves under that name."""
    base_path = find_setting_file(base)
    chain = read_chain(base_path)
    merged, prov = merge_chain(chain)
    label = "bench run --prompt"
    known = prompt_names()
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
    name = f"prompt-{Path(prompt).stem}"
    if model is not None:
        if not model.strip():
            raise BenchError("bench run --model: give a hub id or a model folder")
        if endpoint:  # a served model's id is a name, never a path
            table = dict(merged.get("models", {}).get("openai", {}))
            table.update({"model": model, "base_url": endpoint})
            if api_key_env:
                table["api_key_env"] = api_key_env
            merged["backends"] = ["openai"]
            merged.setdefault("models", {})["openai"] = table
            merged["description"] = f"zero-shot {model} served at {endpoint} with prompt {prompt!r} (bench run --endpoint)"
        else:
            merged["backends"] = ["vlm"]
            merged.setdefault("models", {})["vlm"] = {"model": resolve_path_value(model, Path.cwd())}
            merged["description"] = f"zero-shot {model} with prompt {prompt!r} (bench run --prompt --model)"
        name = f"{name}--{model_slug(model)}"
    order = [*(file_label(p) for p, _ in chain), label]
    return _build(merged, prov, name, file_label(base_path), order)


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


def expanded(settings: list[Setting]) -> list[Setting]:
    """Each setting, a sweep replaced by its one-run settings (bench.sweep)."""
    from bench.sweep import expand_setting

    lora = {name: info.supports_lora for name, info in backend_table().items()}
    return [one for s in settings for one in expand_setting(s, lora)]
