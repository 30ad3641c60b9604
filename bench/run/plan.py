"""Settings -> run plans: everything one run needs, resolved and validated without torch.

A plan fixes the setting (with --data / --limit applied), the backend, the split and the images
to caption, the prompt of a zero-shot run and the `config.json` the run folder will hold. Every
bad input (backend, dataset, prompt) is raised while planning, before any run starts.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import paths
from bench.config import TRANSPORT_FIELDS, TRANSPORT_OPTIONS, Setting
from bench.data.types import Sample, Split
from bench.errors import BenchError
from bench.backends.table import backend_spec, is_lora_backend

# Config keys that label a run without changing its outputs: editing them is no reason to recompute.
_LABEL_KEYS: tuple[str, ...] = ("name", "source", "group", "description", "backends", "models", "cost")


@dataclass(frozen=True)
class RunPlan:
    """Everything needed to execute or cache-check one run, computed without torch."""

    setting: Setting  # with --data / --limit applied
    backend: str
    kind: str  # "lora" | "zero-shot"
    run_dir: Path
    split: Split
    samples: tuple[Sample, ...]  # the validation images captioned and scored, in order
    prompt: Any  # the PromptTemplate of a prompt setting (zero-shot or VLM LoRA; bench.prompts), else None
    prompt_text: str | None
    config: dict[str, Any]  # what config.json holds

    @property
    def name(self) -> str:
        return f"{self.setting.name}/{self.backend}"


def run_label(run_dir: Path) -> str:
    """`runs/x/y` when inside the project, the absolute path otherwise (for messages)."""
    try:
        return str(run_dir.resolve().relative_to(paths.project_dir()))
    except ValueError:
        return str(run_dir)


def run_dir_for(setting_name: str, backend: str, root: Path | None = None) -> Path:
    return (root or paths.runs_dir()) / setting_name / backend


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def with_backend_defaults(setting: Setting, backend: str) -> Setting:
    """The backend's defaults (its row in bench.backends.table) made explicit, so config.json says
    what ran: max_new_tokens and default options (`image_mode = "auto"` for the VLMs)."""
    info = backend_spec(backend)
    gen = setting.generation
    if gen.max_new_tokens is None:
        gen = dataclasses.replace(gen, max_new_tokens=info.default_max_new_tokens)
    models = setting.models
    if backend in models and info.default_options:
        model = models[backend]
        models = {**models, backend: dataclasses.replace(model, options={**info.default_options, **model.options})}
    return dataclasses.replace(setting, generation=gen, models=models)


def _without_empty_sweep(config: dict[str, Any]) -> dict[str, Any]:
    # Sweep fields are empty in every run's setting (bench.sweep expands them): leaving them out
    # keeps the config.json of runs made before sweeps existed identical.
    if not config.get("prompts"):
        config.pop("prompts", None)
    for table in (config.get("model"), *config.get("models", {}).values()):
        if isinstance(table, dict) and not table.get("models"):
            table.pop("models", None)
        for key in TRANSPORT_FIELDS:  # endpoint fields, empty for in-process backends
            if isinstance(table, dict) and not table.get(key):
                table.pop(key, None)
    if not any(v is not None for v in (config.get("cost") or {}).values()):
        config.pop("cost", None)  # no prices: the config.json of runs made before prices existed
    return config


def resolved_config(setting: Setting, backend: str, kind: str, prompt_text: str | None) -> dict[str, Any]:
    """config.json: the whole resolved setting plus what this run uses from it."""
    model = setting.models[backend]
    fields = dataclasses.asdict(setting)
    fields.pop("vlm_lora")  # derived from the file, recorded as kind = "lora" (config.json unchanged)
    fields.pop("flags")  # where values came from, not what the run does
    return _without_empty_sweep(_jsonable(
        {
            **fields,
            "backend": backend,
            "kind": kind,
            "model": dataclasses.asdict(model),
            "prompt_text": prompt_text,
        }
    ))


def run_identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a config that determines a run's outputs."""
    ident = {k: v for k, v in config.items() if k not in _LABEL_KEYS}
    if config.get("kind") != "lora":  # zero-shot runs neither train nor use LoRA settings
        ident.pop("lora", None)
        ident.pop("train", None)
    model = ident.get("model")
    if isinstance(model, dict):  # where the endpoint is, not what it serves
        options = {k: v for k, v in (model.get("options") or {}).items() if k not in TRANSPORT_OPTIONS}
        ident["model"] = {**{k: v for k, v in model.items() if k not in TRANSPORT_FIELDS}, "options": options}
    if isinstance(ident.get("scoring"), dict):  # batch size changes speed, not scores
        ident["scoring"] = {k: v for k, v in ident["scoring"].items() if k != "clip_batch_size"}
    return ident


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): obj}


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between two configs' identities ("lora.r: 32 -> 64")."""
    a, b = _flatten(run_identity(old)), _flatten(run_identity(new))
    return [f"{k}: {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _load_split(dataset: str, limit: int | None, splits: dict[tuple[str, int | None], Split] | None) -> Split:
    """The dataset's split, loaded once per command (`splits` caches it across plans)."""
    from bench.data import load_dataset, make_split

    key = (dataset, limit)
    if splits is not None and key in splits:
        return splits[key]
    split = make_split(load_dataset(dataset), limit=limit)
    if splits is not None:
        splits[key] = split
    return split


def _with_overrides(setting: Setting, dataset: str | None, limit: int | None) -> Setting:
    if limit is not None and limit < 1:
        raise BenchError(f"--limit must be >= 1 (got {limit})")
    data = setting.data
    if dataset is not None:
        data = dataclasses.replace(data, dataset=dataset)
    if limit is not None:
        data = dataclasses.replace(data, limit=limit)
    return dataclasses.replace(setting, data=data)


def plan_run(
    setting: Setting,
    backend: str,
    *,
    limit: int | None = None,
    dataset: str | None = None,
    root: Path | None = None,
    splits: dict[tuple[str, int | None], Split] | None = None,
) -> RunPlan:
    """Resolve a run without touching its folder: overrides, split, prompt, config."""
    if backend not in setting.backends:
        raise BenchError(
            f"--backend {backend}: setting {setting.name!r} ({setting.source}) runs {', '.join(setting.backends)}"
        )
    setting = with_backend_defaults(_with_overrides(setting, dataset, limit), backend)
    data = setting.data
    split = _load_split(data.dataset, data.limit, splits)
    samples = tuple(split.val[: data.limit] if data.limit else split.val)
    if not samples:
        raise BenchError(f"dataset {data.dataset!r}: the validation split is empty")
    # LoRA captioners always train; a zero-shot VLM trains when its prompt setting has its own
    # [lora] table (Setting.vlm_lora, see bench.settings.checks.vlm_lora_requested).
    kind = "lora" if is_lora_backend(backend) or setting.vlm_lora else "zero-shot"
    if kind == "lora" and not split.train:
        raise BenchError(
            f"dataset {data.dataset!r}: the split has no training images, so {backend!r} has nothing to "
            "fine-tune its LoRA on; use a zero-shot setting or another dataset"
        )
    template = None
    if setting.prompt:  # zero-shot runs and VLM LoRA runs caption with it
        from bench.prompts import load_prompt

        template = load_prompt(setting.prompt)
    prompt_text = template.template if template is not None else None
    return RunPlan(
        setting=setting,
        backend=backend,
        kind=kind,
        run_dir=run_dir_for(setting.name, backend, root),
        split=split,
        samples=samples,
        prompt=template,
        prompt_text=prompt_text,
        config=resolved_config(setting, backend, kind, prompt_text),
    )
