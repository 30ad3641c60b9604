"""Finished runs for the report, read through the run-folder owner (bench.run.folder):
results.json, split.json, predictions.jsonl, metrics.json, train/loss.csv, attend/*.png.

A run is finished when its results.json exists (it is written last, atomically). Anything
malformed in a finished run is a one-line BenchError naming the file and the key.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.io import read_records
from bench.paths import expand, project_dir
from bench.run.folder import METRICS, PREDICTIONS, RESULTS, SPLIT, RunFolder

# The members load_run reads: a run whose bytes of these are unchanged reads the same
# (bench.report.run_cache keys its entries on them).
MEMBERS_READ = (RESULTS, SPLIT, PREDICTIONS, METRICS)


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


def image_path(raw: Any) -> Path | None:
    """A split.json image path on this machine (${BENCH_SHARED_DATA} expanded, relative to the project)."""
    if not isinstance(raw, str) or not raw:
        return None
    p = Path(expand(raw))
    return p if p.is_absolute() else project_dir() / p


def read_results(folder: Path) -> dict[str, Any]:
    """results.json of a finished run, with the keys the report needs checked (bench.run.folder)."""
    return RunFolder(folder).read_results().to_json()


def load_run(folder: Path, results: dict[str, Any] | None = None) -> RunData:
    """Read one finished run folder (results.json present)."""
    rf = RunFolder(folder)
    record = rf.read_results()
    results = record.to_json() if results is None else results
    split = rf.read_split()
    if split.fingerprint and split.fingerprint != record.fingerprint:
        raise BenchError(f"{rf.path / SPLIT}: key 'fingerprint' is {split.fingerprint!r} but results.json says "
                         f"{record.fingerprint!r}")
    ids = [s.image_id for s in split.samples]
    captions, flags = _read_captions(rf.predictions, ids)
    scored = rf.read_metrics()
    # Corpus metrics as results.json records them, else as metrics.json does.
    metrics = record.metrics or (scored.corpus if scored else {})
    loss = rf.member("train") / "loss.csv"
    attend = rf.member("attend")
    return RunData(
        run=record.run,
        folder=folder,
        kind=record.kind,
        setting=record.setting,
        backend=record.backend,
        prompt=record.prompt,
        prompt_text=record.prompt_text,
        model=record.model,
        image_mode=record.image_mode,
        dataset=record.dataset,
        fingerprint=record.fingerprint,
        image_ids=tuple(ids),
        image_paths=tuple(image_path(s.path) for s in split.samples),
        refs=tuple(s.refs for s in split.samples),
        captions=tuple(captions[i] for i in ids),
        metrics=metrics,
        per_image=scored.per_image if scored else {},
        meteor_stats={k: tuple(v) for k, v in scored.meteor_stats.items()} if scored else {},
        caption_flags=flags,
        results=results,
        loss_csv=loss if loss.is_file() else None,
        attend_pngs=tuple(sorted(attend.glob("*.png"))) if attend.is_dir() else (),
    )


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


def select_runs(runs_root: Path, *, dataset: str | None = None, runs_glob: str | None = None) -> list[tuple[Path, dict[str, Any]]]:
    """(folder, results.json) of every finished run under runs_root (runs/<setting>/<backend>/),
    filtered by dataset and by an fnmatch pattern on the run name, in folder order. Only
    results.json is read: runs left out are never read further."""
    if not runs_root.is_dir():
        return []
    chosen = []
    for folder in sorted(p for p in runs_root.glob("*/*") if RunFolder(p).complete):
        results = read_results(folder)
        if dataset is not None and results["dataset"] != dataset:
            continue
        if runs_glob is not None and not fnmatch.fnmatchcase(results["run"], runs_glob):
            continue
        chosen.append((folder, results))
    return chosen


def check_unique(runs: list[tuple[Path, dict[str, Any]]]) -> None:
    """One-line error when two folders of select_runs() claim the same run name."""
    seen: dict[str, Path] = {}
    for folder, results in runs:
        name = results["run"]
        if name in seen:
            raise BenchError(f"{folder}/results.json: key 'run' is {name!r}, already used by {seen[name]}")
        seen[name] = folder


def find_runs(runs_root: Path, *, dataset: str | None = None, runs_glob: str | None = None) -> list[RunData]:
    """Every finished run of select_runs(), read whole, sorted by run name."""
    chosen = select_runs(runs_root, dataset=dataset, runs_glob=runs_glob)
    check_unique(chosen)
    return sorted((load_run(folder, results) for folder, results in chosen), key=lambda r: r.run)


def inputs_digest(run: RunData) -> str:
    """Changes whenever the text to tokenize changes (for the tokens.json cache)."""
    payload = json.dumps([run.image_ids, run.captions, run.refs], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()
