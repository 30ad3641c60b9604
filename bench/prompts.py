"""Prompt templates for zero-shot captioners, one TOML file each in `prompts/<name>.toml`.

    template = "<image>\\nBriefly describe this image in a sentence. Thank you."
    description = "..."
    source = "where the wording comes from"
    sentences = 1   # sentences kept by post-processing; 0 keeps all

The template holds the `<image>` placeholder exactly once; the backend turns it into the model's
own chat format (for LLaVA through the processor's chat template), so a prompt file never spells
out "USER:" / "ASSISTANT:" itself.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from bench.errors import BenchError
from bench.paths import expand, prompts_dir

IMAGE_PLACEHOLDER = "<image>"

# key -> (accepted python type, default); `template` has no default.
_FIELDS: dict[str, tuple[type, object]] = {
    "template": (str, None),
    "description": (str, ""),
    "source": (str, ""),
    "sentences": (int, 1),
}


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    template: str
    description: str
    source: str
    sentences: int  # how many sentences post-processing keeps; 0 = all
    path: Path

    @property
    def image_first(self) -> bool:
        """True when no instruction text comes before the image placeholder."""
        before, _, _ = self.template.partition(IMAGE_PLACEHOLDER)
        return not before.strip()

    @property
    def text(self) -> str:
        """The instruction without the placeholder (what goes in the chat message's text part)."""
        before, _, after = self.template.partition(IMAGE_PLACEHOLDER)
        return " ".join(part.strip() for part in (before, after) if part.strip())

    def render(self, image_token: str) -> str:
        """The template with the placeholder replaced by a model's image token (no chat template)."""
        return self.template.replace(IMAGE_PLACEHOLDER, image_token)


def _type_name(t: type) -> str:
    return {str: "a string", int: "an integer"}[t]


def parse_prompt(data: dict[str, object], path: Path) -> PromptTemplate:
    """Validate the parsed TOML of one prompt file; every error names the file and the key."""
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise BenchError(
            f"{path}: unknown key {unknown[0]!r} (allowed: {', '.join(_FIELDS)})"
        )
    values: dict[str, object] = {}
    for key, (kind, default) in _FIELDS.items():
        if key not in data:
            if default is None:
                raise BenchError(f"{path}: missing key {key!r}")
            values[key] = default
            continue
        value = data[key]
        # bool is an int subclass: `sentences = true` is a type error, not 1
        if not isinstance(value, kind) or isinstance(value, bool):
            raise BenchError(f"{path}: key {key!r} must be {_type_name(kind)}, got {type(value).__name__}")
        values[key] = value
    template = str(values["template"])
    count = template.count(IMAGE_PLACEHOLDER)
    if count != 1:
        raise BenchError(
            f"{path}: key 'template' must contain the {IMAGE_PLACEHOLDER} placeholder exactly once, found {count}"
        )
    if not template.replace(IMAGE_PLACEHOLDER, "").strip():
        raise BenchError(f"{path}: key 'template' has no instruction text besides {IMAGE_PLACEHOLDER}")
    sentences = int(values["sentences"])  # type: ignore[call-overload]
    if sentences < 0:
        raise BenchError(f"{path}: key 'sentences' must be >= 0 (0 keeps all), got {sentences}")
    return PromptTemplate(
        name=path.stem,
        template=template,
        description=str(values["description"]),
        source=str(values["source"]),
        sentences=sentences,
        path=path,
    )


def read_prompt_file(path: Path) -> PromptTemplate:
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise BenchError(f"{path}: prompt file not found") from exc
    except OSError as exc:
        raise BenchError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BenchError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise BenchError(f"{path}: invalid TOML: {str(exc).splitlines()[0]}") from exc
    return parse_prompt(data, path)


def _looks_like_path(name_or_path: str) -> bool:
    return name_or_path.endswith(".toml") or "/" in name_or_path or "\\" in name_or_path


def prompt_names(folder: Path | None = None) -> list[str]:
    folder = folder or prompts_dir()
    return sorted(p.stem for p in folder.glob("*.toml")) if folder.is_dir() else []


def load_prompt(name_or_path: str | Path, folder: Path | None = None) -> PromptTemplate:
    """A prompt by name (`prompts/<name>.toml`) or by path to a TOML file."""
    if isinstance(name_or_path, Path):
        return read_prompt_file(name_or_path)
    if _looks_like_path(name_or_path):
        return read_prompt_file(Path(expand(name_or_path)))
    folder = folder or prompts_dir()
    path = folder / f"{name_or_path}.toml"
    if not path.is_file():
        names = prompt_names(folder)
        available = ", ".join(names) if names else f"none (no *.toml in {folder})"
        raise BenchError(f"unknown prompt {name_or_path!r}; available: {available}")
    return read_prompt_file(path)


def list_prompts(folder: Path | None = None) -> list[PromptTemplate]:
    """Every prompt in the prompts folder, sorted by name; a bad file raises its own error."""
    folder = folder or prompts_dir()
    return [read_prompt_file(folder / f"{name}.toml") for name in prompt_names(folder)]
