"""Read finished runs straight from the run-folder format (results.json, split.json,
predictions.jsonl, metrics.json, train/loss.csv, attend/*.png).

A run is finished when its results.json exists (it is written last, atomically). Anything
malformed in a finished run is a one-line BenchError naming the file and the key.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.io import read_json, read_records
from bench.paths import expand, project_dir

KINDS = ("zero-shot", "lora", "external")


@dataclass(frozen=True)
class RunData:
    """One finished run, its captions aligned with the images of its split.json."""

    run: str  # "<setting>/<backend>"
    folder: Path
    kind: str
    setting: str
    backend: str
    prompt: str | None
    prompt_text: str | None
    model: str
    image_mode: str | None  # zero-shot runs: "pad", "crop" or "native" (what the run used)
    dataset: str
    fingerprint: str
    image_ids: tuple[str, ...]
    image_paths: tuple[Path | None, ...]
    refs: tuple[tuple[str, ...], ...]
    captions: tuple[str, ...]
    metrics: dict[str, float]  # recorded corpus metrics (results.json, else metrics.json)
    per_image: dict[str, dict[str, float]]  # image_id -> metric -> value (metrics.json)
    results: dict[str, Any]
    loss_csv: Path | None
    attend_pngs: tuple[Path, ...]
    # image_id -> the METEOR jar's statistics of that image (metrics.json "meteor_stats"); empty
    # for runs scored before bench kept them.
    meteor_stats: dict[str, tuple[float, ...]] = field(default_factory=dict)
    # image_id -> "truncated" / "failed" where its predictions record says so (the explorer's filters).
    caption_flags: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def config(self) -> dict[str, Any]:
        cfg = self.results.get("config")
        return cfg if isinstance(cfg, dict) else {}

    def images_digest(self) -> str:
        """Identifies the exact image set (runs with another set are never paired)."""
        return hashlib.sha256("\n".join(self.image_ids).encode()).hexdigest()[:12]


def _need(obj: Any, key: str, path: Path, kind: type | tuple[type, ...], where: str = "") -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise BenchError(f"{path}: missing key '{where}{key}'")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise BenchError(f"{path}: key '{where}{key}' has the wrong type ({type(value).__name__})")
    return value


def _opt_str(obj: dict[str, Any], key: str, path: Path) -> str | None:
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


def _meteor_stats(obj: Any, path: Path) -> dict[str, tuple[float, ...]]:
    """metrics.json "meteor_stats": image_id -> 23 finite numbers."""
    from bench.report.meteor import STATS_LENGTH

    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise BenchError(f"{path}: key 'meteor_stats' must be an object keyed by image_id")
    out: dict[str, tuple[float, ...]] = {}
    for image_id, row in obj.items():
        ok = isinstance(row, list) and len(row) == STATS_LENGTH and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in row
        )
        if not ok:
            raise BenchError(f"{path}: key 'meteor_stats.{image_id}' must be a list of {STATS_LENGTH} finite numbers")
        out[str(image_id)] = tuple(float(v) for v in row)
    return out


def _image_path(raw: Any) -> Path | None:
    if not isinstance(raw, str) or not raw:
        return None
    p = Path(expand(raw))
    return p if p.is_absolute() else project_dir() / p


def read_results(folder: Path) -> dict[str, Any]:
    """results.json of a finished run, with the keys the report needs checked."""
    res_path = folder / "results.json"
    results = read_json(res_path)
    if not isinstance(results, dict):
        raise BenchError(f"{res_path}: expected a JSON object")
    for key in ("run", "kind", "dataset", "fingerprint"):
        _need(results, key, res_path, str)
    if results["kind"] not in KINDS:
        raise BenchError(f"{res_path}: key 'kind' must be one of {', '.join(KINDS)}, got {results['kind']!r}")
    return results


def load_run(folder: Path, results: dict[str, Any] | None = None) -> RunData:
    """Read one finished run folder (results.json present)."""
    res_path = folder / "results.json"
    results = read_results(folder) if results is None else results
    run, kind = results["run"], results["kind"]
    dataset, fingerprint = results["dataset"], results["fingerprint"]
    metrics = _metric_dict(results.get("metrics"), res_path, "metrics")
    ids, paths, refs = _read_split(folder / "split.json", fingerprint)
    captions, flags = _read_captions(folder / "predictions.jsonl", ids)
    metrics, per_image, meteor_stats = _read_metrics(folder / "metrics.json", metrics)

    loss = folder / "train" / "loss.csv"
    attend = folder / "attend"
    return RunData(
        run=run,
        folder=folder,
        kind=kind,
        setting=str(results.get("setting") or run.split("/")[0]),
        backend=str(results.get("backend") or (run.split("/")[-1] if "/" in run else "")),
        prompt=_opt_str(results, "prompt", res_path),
        prompt_text=_opt_str(results, "prompt_text", res_path),
        model=str(results.get("model") or ""),
        image_mode=_opt_str(results, "image_mode", res_path),
        dataset=dataset,
        fingerprint=fingerprint,
        image_ids=tuple(ids),
        image_paths=tuple(paths),
        refs=tuple(refs),
        captions=tuple(captions[i] for i in ids),
        metrics=metrics,
        per_image=per_image,
        meteor_stats=meteor_stats,
        caption_flags=flags,
        results=results,
        loss_csv=loss if loss.is_file() else None,
        attend_pngs=tuple(sorted(attend.glob("*.png"))) if attend.is_dir() else (),
    )


def _read_split(split_path: Path, fingerprint: str) -> tuple[list[str], list[Path | None], list[tuple[str, ...]]]:
    """Image ids, image paths and references of the run's split.json, in split order."""
    split = read_json(split_path)
    samples = _need(split, "samples", split_path, list)
    if split.get("fingerprint", fingerprint) != fingerprint:
        raise BenchError(
            f"{split_path}: key 'fingerprint' is {split.get('fingerprint')!r} but results.json says {fingerprint!r}"
        )
    ids: list[str] = []
    paths: list[Path | None] = []
    refs: list[tuple[str, ...]] = []
    for k, s in enumerate(samples):
        image_id = _need(s, "image_id", split_path, (str, int), f"samples[{k}].")
        sample_refs = _need(s, "refs", split_path, list, f"samples[{k}].")
        if not sample_refs or not all(isinstance(r, str) for r in sample_refs):
            raise BenchError(f"{split_path}: key 'samples[{k}].refs' must be a non-empty list of strings")
        ids.append(str(image_id))
        paths.append(_image_path(s.get("path")))
        refs.append(tuple(sample_refs))
    if not ids:
        raise BenchError(f"{split_path}: key 'samples' is empty")
    if len(set(ids)) != len(ids):
        raise BenchError(f"{split_path}: key 'samples' lists an image_id twice")
    return ids, paths, refs


def _read_captions(pred_path: Path, ids: list[str]) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    """image_id -> caption from predictions.jsonl (every image of the split must have one), and
    image_id -> the flags its record carries: `"truncated": true`, or an `"error"` (failed)."""
    if not pred_path.exists():
        raise BenchError(f"{pred_path}: file not found")
    captions: dict[str, str] = {}
    flags: dict[str, tuple[str, ...]] = {}
    for k, rec in enumerate(read_records(pred_path)):
        image_id, caption = rec.get("image_id"), rec.get("caption")
        if not isinstance(image_id, (str, int)) or not isinstance(caption, str):
            raise BenchError(f"{pred_path}: record {k + 1} needs a string 'image_id' and 'caption'")
        captions[str(image_id)] = caption
        marks = (("truncated",) if rec.get("truncated") is True else ()) + (("failed",) if rec.get("error") else ())
        if marks:
            flags[str(image_id)] = marks
    missing = [i for i in ids if i not in captions]
    if missing:
        raise BenchError(f"{pred_path}: no caption for image_id {missing[0]!r} (listed in split.json; {len(missing)} missing)")
    return captions, flags


def _read_metrics(
    metrics_path: Path, metrics: dict[str, float]
) -> tuple[dict[str, float], dict[str, dict[str, float]], dict[str, tuple[float, ...]]]:
    """(corpus metrics: results.json's if any, else metrics.json's; per-image scores; METEOR
    statistics) of a run; empty when metrics.json does not exist."""
    per_image: dict[str, dict[str, float]] = {}
    if not metrics_path.exists():
        return metrics, per_image, {}
    scored = read_json(metrics_path)
    if not isinstance(scored, dict):
        raise BenchError(f"{metrics_path}: expected a JSON object")
    if not metrics:
        metrics = _metric_dict(scored.get("corpus"), metrics_path, "corpus")
    raw = scored.get("per_image") or {}
    if not isinstance(raw, dict):
        raise BenchError(f"{metrics_path}: key 'per_image' must be an object keyed by image_id")
    for image_id, values in raw.items():
        per_image[str(image_id)] = _metric_dict(values, metrics_path, f"per_image.{image_id}")
    return metrics, per_image, _meteor_stats(scored.get("meteor_stats"), metrics_path)


def find_runs(runs_root: Path, *, dataset: str | None = None, runs_glob: str | None = None) -> list[RunData]:
    """Every finished run under runs_root (runs/<setting>/<backend>/results.json), filtered by
    dataset and by an fnmatch pattern on the run name, sorted by run name."""
    if not runs_root.is_dir():
        return []
    # Filter on results.json first: runs left out are never read further.
    chosen = []
    for path in sorted(runs_root.glob("*/*/results.json")):
        results = read_results(path.parent)
        if dataset is not None and results["dataset"] != dataset:
            continue
        if runs_glob is not None and not fnmatch.fnmatchcase(results["run"], runs_glob):
            continue
        chosen.append((path.parent, results))
    found = [load_run(folder, results) for folder, results in chosen]
    names = [r.run for r in found]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        where = [str(r.folder) for r in found if r.run == dup[0]]
        raise BenchError(f"{where[1]}/results.json: key 'run' is {dup[0]!r}, already used by {where[0]}")
    return sorted(found, key=lambda r: r.run)


def inputs_digest(run: RunData) -> str:
    """Changes whenever the text to tokenize changes (for the tokens.json cache)."""
    payload = json.dumps([run.image_ids, run.captions, run.refs], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()
