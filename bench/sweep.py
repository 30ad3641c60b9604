"""Sweeps: a zero-shot setting that lists several prompts and/or models runs once per pair.

    prompts = ["brief", "llava_concise"]          # instead of prompt = "..."
    [models.vlm]
    models = ["HuggingFaceTB/SmolVLM-256M-Instruct", "Qwen/Qwen2-VL-2B-Instruct"]

expands into one setting per (prompt, model), named `<setting>--<prompt>--<model>` (the model as
`model_slug` spells it), each an ordinary zero-shot setting with one prompt and one model: its own
run folder, cache and row in the report's zero-shot table. `bench list` shows the expansion.
No torch here, and nothing that imports bench.settings (which imports this module).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from bench.config import Setting
from bench.errors import BenchError


def model_slug(model: str) -> str:
    """A folder-name spelling of a model: `org__name` for a hub id, the folder name for a path."""
    text = model.rstrip("/")
    path = Path(text).expanduser()
    if path.is_absolute() or text.startswith((".", "~")) or path.exists():
        text = path.name
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", text.replace("/", "__")).strip("._")
    return slug or "model"


def is_sweep(setting: Setting) -> bool:
    return bool(setting.prompts) or any(m.models for b, m in setting.models.items() if b in setting.backends)


def check_sweep(setting: Setting, label: str) -> None:
    """A sweep names prompts or models for zero-shot backends only, each once."""
    if setting.prompt and setting.prompts:
        raise BenchError(f"{label}: give prompt = \"NAME\" or prompts = [...], not both")
    if len(set(setting.prompts)) != len(setting.prompts):
        raise BenchError(f"{label}: prompts lists a prompt twice ({list(setting.prompts)})")
    for backend in setting.backends:
        models = setting.models[backend].models
        slugs = [model_slug(m) for m in models]
        if len(set(slugs)) != len(slugs):
            raise BenchError(f"{label}: models.{backend}.models names two models with the same run name ({slugs})")


def expand_setting(setting: Setting, is_lora: dict[str, bool]) -> list[Setting]:
    """The settings a sweep stands for, in order (prompt-major); a plain setting: itself."""
    if not is_sweep(setting):
        return [setting]
    lora = [b for b in setting.backends if is_lora[b]]
    if lora:
        raise BenchError(f"{setting.source}: prompts/models sweeps run zero-shot backends only, not {', '.join(lora)}")
    prompts = setting.prompts or ((setting.prompt,) if setting.prompt else ())
    expanded = []
    for prompt in prompts:
        for backend in setting.backends:
            config = setting.models[backend]
            for model in config.models or (config.model,):
                name = f"{setting.name}--{Path(prompt).stem}--{model_slug(model)}"
                one = dataclasses.replace(config, model=model, models=())
                expanded.append(dataclasses.replace(
                    setting, name=name, backends=(backend,), models={**setting.models, backend: one},
                    prompt=prompt, prompts=(),
                ))
    return expanded
