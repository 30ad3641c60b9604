"""The run registry: one folder per (setting, backend) under `bench.paths.runs_dir()`.

    runs/<setting>/<backend>/   (external systems: runs/<name>/external/)
      .lock  config.json  split.json  predictions.jsonl  train/  metrics.json  results.json

A run whose config and split fingerprint match its `results.json` is a cache hit, answered
without importing torch. A run folder never mixes configs: a different config on an existing run
is an error that asks for `--force`. `run_state.json` carries the finished stages' figures
(training, captioning) across a resume, so a run killed after captioning does not reload its model.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import paths
from bench.errors import BenchError
from bench.io import exclusive_lock, read_records
from bench.predictions_file import SHARD_GLOB
from bench.run.folder import CONFIG, SPLIT, MetricsRecord, ResultsRecord, RunFolder, SplitRecord, SplitSample, StageState
from bench.run.plan import RunPlan, config_diff, run_dir_for, run_label
from bench.run.results import provenance


@dataclass(frozen=True)
class RunInfo:
    name: str  # "<setting>/<backend>"
    setting: str
    backend: str
    kind: str | None
    status: str  # "complete" | "partial" | "empty"
    n_predictions: int
    metrics: dict[str, float] | None
    dataset: str | None
    fingerprint: str | None
    path: Path


# --- one run's folder, under its lock --------------------------------------------------------------

def _fingerprint_diff(old: Any, new: str) -> list[str]:
    return [] if old == new else [f"split fingerprint: {old} -> {new}"]


def cached_results(plan: RunPlan, force: bool) -> dict[str, Any] | None:
    """Results of a finished run with this config; None when there is work to do.

    A folder holding another config (finished, or partial with outputs) is an error: runs are
    never mixed; --force starts afresh.
    """
    if force:
        return None
    folder, label = RunFolder(plan.run_dir), run_label(plan.run_dir)
    if folder.complete:
        results = folder.read_results()
        diff = config_diff(results.config, plan.config) + _fingerprint_diff(results.fingerprint, plan.split.fingerprint)
        if not diff:
            return results.to_json()
        raise BenchError(
            f"{label}: holds finished results for a different config ({'; '.join(diff)}); "
            "re-run with --force to replace them"
        )
    has_outputs = folder.predictions.exists() or folder.has("train") or any(folder.path.glob(SHARD_GLOB))
    if folder.has(CONFIG) and has_outputs:
        diff = config_diff(folder.read_config(), plan.config)
        if folder.has(SPLIT):
            diff += _fingerprint_diff(folder.read_split().fingerprint, plan.split.fingerprint)
        if diff:
            raise BenchError(
                f"{label}: holds a partial run of a different config ({'; '.join(diff)}); "
                "re-run with --force to start it afresh"
            )
    return None


def clear_run_dir(run_dir: Path) -> None:
    """Remove every output of a run (the lock file stays: it is held by the caller)."""
    RunFolder(run_dir).clear()


def remove_stale_temps(run_dir: Path) -> None:
    """Drop temp files/folders a killed process left mid-write (we hold the lock: nobody writes)."""
    stale = sorted({*run_dir.rglob(".*.tmp"), *run_dir.rglob(".epoch-*.partial")}, key=lambda p: len(p.parts))
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def start_run(plan: RunPlan, force: bool) -> StageState:
    """Ready the run folder (under the lock): config and split written, stale outputs gone.

    Returns the stages already finished (`run_state.json`).
    """
    folder = RunFolder(plan.run_dir)
    if force or not folder.has(CONFIG) or config_diff(folder.read_config(), plan.config):
        folder.clear()  # a differing config here has no outputs (checked before)
    folder.write_config(plan.config)
    folder.write_split(SplitRecord.of(plan.split, plan.samples))
    folder.discard_results()  # a stale one would claim completeness
    return folder.read_state()


# --- reading the registry ---------------------------------------------------------------------------

def _run_info(run_dir: Path) -> RunInfo:
    setting, backend = run_dir.parent.name, run_dir.name
    folder = RunFolder(run_dir)
    results: ResultsRecord | None = None
    if folder.complete:
        try:
            results = folder.read_results()
        except BenchError:
            results = None
    config, split = _optional(folder.read_config), _optional(folder.read_split)
    if results is not None:
        status = "complete"
    elif any(folder.has(n) for n in (CONFIG, "predictions.jsonl", "train")):
        status = "partial"
    else:
        status = "empty"
    return RunInfo(
        name=f"{setting}/{backend}",
        setting=setting,
        backend=backend,
        kind=results.kind if results else config.get("kind") if isinstance(config, dict) else None,
        status=status,
        n_predictions=len(read_records(folder.predictions)),
        metrics=results.metrics if results else None,
        dataset=results.dataset if results else split.dataset if split else None,
        fingerprint=results.fingerprint if results else split.fingerprint if split else None,
        path=run_dir,
    )


def _optional(read: Any) -> Any:
    """What `read` returns, or None for a missing or damaged file (listing never fails on one)."""
    try:
        return read()
    except (BenchError, FileNotFoundError):
        return None


def list_runs(root: Path | None = None) -> list[RunInfo]:
    """Every run folder (`<root>/<setting>/<backend>/`), sorted by name."""
    root = root or paths.runs_dir()
    if not root.is_dir():
        return []
    return [
        _run_info(run_dir)
        for setting_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        for run_dir in sorted(p for p in setting_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    ]


# --- external systems (bench score --as-run) ----------------------------------------------------------

def check_run_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith("."):
        raise BenchError(f"--as-run {name!r}: a run name must be a plain folder name (no '/', not starting with '.')")


def _external_results(name: str, source: str, split: SplitRecord, scored: MetricsRecord, score_s: float,
                      config: dict[str, Any]) -> ResultsRecord:
    prov = provenance()
    return ResultsRecord(
        run=f"{name}/external", setting=name, backend="external", kind="external", model=source,
        dataset=split.dataset, fingerprint=split.fingerprint, n_images=int(scored.n_images or len(split.samples)),
        metrics=dict(scored.corpus),
        timings={"train_s": 0.0, "generate_s": 0.0, "score_s": round(score_s, 3), "images_per_s": 0.0},
        memory=prov["memory"], versions=prov["versions"], git_commit=prov["git_commit"],
        created_at=prov["created_at"], config=config,
    )


def record_external_run(
    name: str,
    predictions: dict[str, str],
    references: dict[str, list[str]],
    result_json: dict[str, Any],
    *,
    dataset: str,
    fingerprint: str,
    images: dict[str, str] | None,
    source: str,
    score_s: float = 0.0,
) -> Path:
    """Register captions produced elsewhere as runs/<name>/external/, in the run-folder format."""
    check_run_name(name)
    missing = [i for i in predictions if i not in references]
    if missing:
        raise BenchError(f"{source}: prediction for image_id {missing[0]!r} has no references")
    folder = RunFolder(run_dir_for(name, "external"))
    images = images or {}
    scored = MetricsRecord.of_score_json(result_json)
    config = {"name": name, "kind": "external", "backend": "external", "source": source,
              "data": {"dataset": dataset}, "fingerprint": fingerprint}
    split = SplitRecord(dataset, fingerprint, tuple(
        SplitSample(i, images.get(i), tuple(references[i])) for i in predictions))
    with exclusive_lock(folder.path):
        folder.clear()
        folder.write_config(config)
        folder.write_split(split)
        folder.write_predictions(predictions)
        folder.write_metrics(scored)
        folder.write_results(_external_results(name, source, split, scored, score_s, config))
    return folder.path
