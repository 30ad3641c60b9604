"""The run folder's records: one dataclass per JSON member, built from JSON with every key
checked (a one-line BenchError naming the file and the key). Only bench.run.folder, which owns
the files, turns files into these records and back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from bench.errors import BenchError

KINDS = ("zero-shot", "lora", "external")


@dataclass(frozen=True)
class SplitSample:
    image_id: str
    path: str | None  # as recorded: absolute, project-relative, "" or None (no image)
    refs: tuple[str, ...]


@dataclass(frozen=True)
class SplitRecord:
    dataset: str
    fingerprint: str
    samples: tuple[SplitSample, ...]

    @classmethod
    def of(cls, split: Any, samples: Any) -> "SplitRecord":
        """From a bench.data Split and the samples a run captions."""
        return cls(split.dataset, split.fingerprint,
                   tuple(SplitSample(s.image_id, str(s.path), tuple(s.refs)) for s in samples))

    def to_json(self) -> dict[str, Any]:
        samples = [{"image_id": s.image_id, "path": s.path, "refs": list(s.refs)} for s in self.samples]
        return {"dataset": self.dataset, "fingerprint": self.fingerprint, "n": len(self.samples), "samples": samples}


@dataclass(frozen=True)
class TrainRecord:
    epochs_done: int
    steps: int
    final_loss: float | None
    train_s: float
    trainable: int  # parameters
    total: int
    n_pairs: int


@dataclass(frozen=True)
class CaptionRecord:
    generate_s: float = 0.0  # wall seconds, summed over sessions (slowest rank of each)
    model_s: float = 0.0  # seconds inside the model's generate
    n_captioned: int = 0
    n_truncated: int = 0  # captions cut by max_new_tokens without an end token


@dataclass
class StageState:
    """run_state.json: what the finished stages measured; a stage absent here has not finished."""

    load_s: float = 0.0
    model: dict[str, Any] | None = None  # zero-shot: what the backend resolved (family, image mode)
    train: TrainRecord | None = None
    caption: CaptionRecord | None = None
    # an endpoint run (bench.backends.served): its requests' summary (bench.served.records)
    served: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"load_s": self.load_s}
        for key in ("model", "train", "caption", "served"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value if isinstance(value, dict) else asdict(value)
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "StageState":
        train, caption = obj.get("train"), obj.get("caption")
        return cls(
            load_s=float(obj.get("load_s", 0.0)),
            model=obj.get("model"),
            train=TrainRecord(**_known(TrainRecord, train)) if isinstance(train, dict) else None,
            caption=CaptionRecord(**_known(CaptionRecord, caption)) if isinstance(caption, dict) else None,
            served=obj.get("served") if isinstance(obj.get("served"), dict) else None,
        )


@dataclass(frozen=True)
class MetricsRecord:
    corpus: dict[str, float]
    per_image: dict[str, dict[str, float]]
    n_images: int | None
    n_clip_truncated: int = 0
    clip_model: str | None = None
    # image_id -> the METEOR jar's statistics: the report's METEOR intervals are aggregated from them.
    meteor_stats: dict[str, list[float]] = field(default_factory=dict)

    @classmethod
    def of(cls, result: Any) -> "MetricsRecord":
        """From a bench.scoring ScoreResult."""
        return cls(dict(result.corpus), {k: dict(v) for k, v in result.per_image.items()}, int(result.n_images),
                   int(getattr(result, "n_clip_truncated", 0)), getattr(result, "clip_model", None),
                   dict(getattr(result, "meteor_stats", None) or {}))

    @classmethod
    def of_score_json(cls, obj: Mapping[str, Any]) -> "MetricsRecord":
        """From `bench score --json --per-image` output (metric keys at the top) or this shape."""
        from bench.scoring.metrics import metric_keys

        corpus = obj["corpus"] if isinstance(obj.get("corpus"), dict) else {
            k: v for k, v in obj.items() if k in metric_keys()}
        return cls(dict(corpus), dict(obj.get("per_image", {})), obj.get("n_images"),
                   obj.get("n_clip_truncated", 0), obj.get("clip_model"), dict(obj.get("meteor_stats") or {}))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class ResultsRecord:
    """results.json. Keys after `config` in the file are optional: absent when None."""

    run: str  # "<setting>/<backend>"
    setting: str
    backend: str
    kind: str  # one of KINDS
    prompt: str | None = None  # None for the LoRA captioners and external runs
    prompt_text: str | None = None
    model: str = ""
    image_mode: str | None = None  # zero-shot: what the backend resolved (bench.backends.vlm)
    model_resolved: dict[str, Any] | None = None
    dataset: str
    fingerprint: str
    n_images: int
    n_truncated: int | None = None  # captions cut by max_new_tokens (None: not recorded)
    # An endpoint run: images still failing (0 when complete), and what the server reported
    # (model ids, fingerprints, tokens, decoding sent; bench.served.records).
    n_failed: int | None = None
    served: dict[str, Any] | None = None
    cost: dict[str, Any] | None = None  # bench.cost: tokens per image, $ per 1,000 captions
    metrics: dict[str, float]
    params: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    memory: dict[str, Any] | None = None
    device: str | None = None
    versions: dict[str, Any] = field(default_factory=dict)
    git_commit: str | None = None
    created_at: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    processes: int | None = None  # a multi-process run's world size

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in ("image_mode", "model_resolved", "n_truncated", "n_failed", "served", "cost", "memory", "device",
                    "processes"):
            if out[key] is None:
                del out[key]
        return out


def _known(cls: type, obj: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in obj.items() if k in names}


# --- checked reading ---------------------------------------------------------------------------

def _need(obj: Any, key: str, path: Path, kind: type | tuple[type, ...], where: str = "") -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise BenchError(f"{path}: missing key '{where}{key}'")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise BenchError(f"{path}: key '{where}{key}' has the wrong type ({type(value).__name__})")
    return value


def _opt_str(obj: Mapping[str, Any], key: str, path: Path) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise BenchError(f"{path}: key '{key}' must be a string or null")
    return value


def _metric_dict(obj: Any, path: Path, where: str) -> dict[str, float]:
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise BenchError(f"{path}: key '{where}' must be an object of metric values")
    out: dict[str, float] = {}
    for name, value in obj.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise BenchError(f"{path}: key '{where}.{name}' must be a finite number")
        out[str(name)] = float(value)
    return out


def _meteor_stats(obj: Any, path: Path) -> dict[str, list[float]]:
    """metrics.json "meteor_stats": image_id -> the jar's statistics (finite numbers)."""
    from bench.scoring.text_metrics import METEOR_STATS_LENGTH as n

    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise BenchError(f"{path}: key 'meteor_stats' must be an object keyed by image_id")
    out: dict[str, list[float]] = {}
    for image_id, row in obj.items():
        ok = isinstance(row, list) and len(row) == n and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in row
        )
        if not ok:
            raise BenchError(f"{path}: key 'meteor_stats.{image_id}' must be a list of {n} finite numbers")
        out[str(image_id)] = [float(v) for v in row]
    return out


def split_from_json(obj: Any, path: Path) -> SplitRecord:
    samples = _need(obj, "samples", path, list)
    out: list[SplitSample] = []
    for k, s in enumerate(samples):
        image_id = _need(s, "image_id", path, (str, int), f"samples[{k}].")
        refs = _need(s, "refs", path, list, f"samples[{k}].")
        if not refs or not all(isinstance(r, str) for r in refs):
            raise BenchError(f"{path}: key 'samples[{k}].refs' must be a non-empty list of strings")
        raw = s.get("path")
        out.append(SplitSample(str(image_id), raw if isinstance(raw, str) else None, tuple(refs)))
    if not out:
        raise BenchError(f"{path}: key 'samples' is empty")
    if len({s.image_id for s in out}) != len(out):
        raise BenchError(f"{path}: key 'samples' lists an image_id twice")
    fingerprint = obj.get("fingerprint")
    return SplitRecord(str(obj.get("dataset") or ""), fingerprint if isinstance(fingerprint, str) else "", tuple(out))


def metrics_from_json(obj: Any, path: Path) -> MetricsRecord:
    if not isinstance(obj, dict):
        raise BenchError(f"{path}: expected a JSON object")
    raw = obj.get("per_image") or {}
    if not isinstance(raw, dict):
        raise BenchError(f"{path}: key 'per_image' must be an object keyed by image_id")
    per_image = {str(i): _metric_dict(v, path, f"per_image.{i}") for i, v in raw.items()}
    return MetricsRecord(_metric_dict(obj.get("corpus"), path, "corpus"), per_image, obj.get("n_images"),
                         int(obj.get("n_clip_truncated") or 0), obj.get("clip_model"),
                         _meteor_stats(obj.get("meteor_stats"), path))


def results_from_json(obj: Any, path: Path) -> ResultsRecord:
    if not isinstance(obj, dict):
        raise BenchError(f"{path}: expected a JSON object")
    run, kind = _need(obj, "run", path, str), _need(obj, "kind", path, str)
    dataset, fingerprint = _need(obj, "dataset", path, str), _need(obj, "fingerprint", path, str)
    if kind not in KINDS:
        raise BenchError(f"{path}: key 'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
    setting = str(obj.get("setting") or run.split("/")[0])
    backend = str(obj.get("backend") or (run.split("/")[-1] if "/" in run else ""))
    rest = {k: obj[k] for k in ("model_resolved", "n_truncated", "n_failed", "served", "cost", "params", "memory",
                                "device", "processes", "git_commit") if obj.get(k) is not None}
    return ResultsRecord(
        run=run, setting=setting, backend=backend, kind=kind, dataset=dataset, fingerprint=fingerprint,
        prompt=_opt_str(obj, "prompt", path), prompt_text=_opt_str(obj, "prompt_text", path),
        image_mode=_opt_str(obj, "image_mode", path), model=str(obj.get("model") or ""),
        n_images=int(obj.get("n_images") or 0), metrics=_metric_dict(obj.get("metrics"), path, "metrics"),
        timings=dict(obj.get("timings") or {}), versions=dict(obj.get("versions") or {}),
        created_at=str(obj.get("created_at") or ""),
        config=obj["config"] if isinstance(obj.get("config"), dict) else {}, **rest,
    )
