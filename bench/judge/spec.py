"""A judge setting (`judges/<name>.toml`) and its versioned prompt (`judges/prompts/<name>.toml`).

The setting pins everything that decides a judgement: endpoint, model, prompt file, decoding
(temperature 0, max_tokens, seed). The prompt file carries a `version`: cached judgements are
keyed by it, so editing the text without bumping it would reuse stale answers.
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.paths import project_dir

METRIC = "CLAIR"  # the report's name for the judge's per-image score (0-1: the answer / 100)


def judges_dir() -> Path:
    return project_dir() / "judges"


@dataclass(frozen=True)
class JudgePrompt:
    version: str
    system: str
    template: str  # with {candidate} and {references}

    @property
    def sha256(self) -> str:
        return hashlib.sha256(f"{self.system}\n{self.template}".encode()).hexdigest()

    def render(self, candidate: str, references: list[str]) -> str:
        return self.template.format(candidate=f"- {candidate}", references="\n".join(f"- {r}" for r in references))


@dataclass(frozen=True)
class JudgeSpec:
    name: str
    path: Path
    prompt_name: str
    prompt: JudgePrompt
    base_url: str
    model: str
    api_key_env: str | None = None
    temperature: float = 0.0
    max_tokens: int = 256
    seed: int | None = 0
    max_concurrency: int = 8
    timeout_s: float = 120.0
    parse_retries: int = 2  # new requests after an unparsable answer, then it is counted failed
    max_retry_s: float = 300.0  # the client's time bound on transport retries

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    def record(self) -> dict[str, Any]:
        """What the report records about the judge (never the key)."""
        return {
            "judge": self.name, "model": self.model, "base_url": self.base_url, "prompt": self.prompt_name,
            "prompt_version": self.prompt.version, "prompt_sha256": self.prompt.sha256,
            "temperature": self.temperature, "max_tokens": self.max_tokens, "seed": self.seed,
        }


def _toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise BenchError(f"{path}: file not found")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BenchError(f"{path}: not valid TOML ({exc})") from exc


def _get(data: dict[str, Any], key: str, kind: type | tuple[type, ...], path: Path, default: Any = ...) -> Any:
    if key not in data:
        if default is ...:
            raise BenchError(f"{path}: missing field {key!r}")
        return default
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise BenchError(f"{path}: field {key!r} must be {names}, got {value!r}")
    return value


def read_prompt(path: Path) -> JudgePrompt:
    data = _toml(path)
    prompt = JudgePrompt(_get(data, "version", str, path), _get(data, "system", str, path, ""),
                         _get(data, "template", str, path))
    for slot in ("{candidate}", "{references}"):
        if slot not in prompt.template:
            raise BenchError(f"{path}: field 'template' needs {slot}")
    return prompt


_FIELDS = {"prompt", "base_url", "model", "api_key_env", "temperature", "max_tokens", "seed", "max_concurrency",
           "timeout_s", "parse_retries", "max_retry_s"}


def load_judge(name_or_path: str | Path) -> JudgeSpec:
    """A judge by name (`judges/<name>.toml`) or by path; every field checked, one-line errors."""
    text = str(name_or_path)
    path = Path(text) if text.endswith(".toml") or "/" in text else judges_dir() / f"{text}.toml"
    data = _toml(path)
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise BenchError(f"{path}: unknown field {unknown[0]!r}; fields: {', '.join(sorted(_FIELDS))}")
    temperature = float(_get(data, "temperature", (int, float), path, 0.0))
    if temperature != 0.0:
        raise BenchError(f"{path}: field 'temperature' must be 0 (a judge decodes greedily), got {temperature}")
    prompt_name = _get(data, "prompt", str, path)
    prompt_path = path.parent / "prompts" / f"{prompt_name}.toml"
    spec = JudgeSpec(
        name=path.stem, path=path, prompt_name=prompt_name, prompt=read_prompt(prompt_path),
        base_url=_get(data, "base_url", str, path), model=_get(data, "model", str, path),
        api_key_env=_get(data, "api_key_env", str, path, None), temperature=0.0,
        max_tokens=_get(data, "max_tokens", int, path, 256), seed=_get(data, "seed", int, path, 0),
        max_concurrency=_get(data, "max_concurrency", int, path, 8),
        timeout_s=float(_get(data, "timeout_s", (int, float), path, 120.0)),
        parse_retries=_get(data, "parse_retries", int, path, 2),
        max_retry_s=float(_get(data, "max_retry_s", (int, float), path, 300.0)),
    )
    for key in ("max_tokens", "max_concurrency"):
        if getattr(spec, key) < 1:
            raise BenchError(f"{path}: field {key!r} must be >= 1, got {getattr(spec, key)}")
    if spec.parse_retries < 0:
        raise BenchError(f"{path}: field 'parse_retries' must be >= 0, got {spec.parse_retries}")
    return spec
