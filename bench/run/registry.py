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
from bench.io import atomic_write_json, atomic_write_text, encode_record, exclusive_lock, read_json, read_records
from bench.predictions_file import SHARD_GLOB
from bench.run.plan import RunPlan, config_diff, run_dir_for, run_label, split_json
from bench.run.results import load_results, normalize_metrics_json, provenance

# Everything a run writes; --force removes all of it (after taking the lock) so nothing stale stays.
RUN_FILES: tuple[str, ...] = (
    "results.json", "metrics.json", "predictions.jsonl", "run_state.json", "split.json", "config.json",
)
RUN_DIRS: tuple[str, ...] = ("train", "attend", "tracking")  # attend/: bench attend; tracking/: --log-with


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
    run_dir, label = plan.run_dir, run_label(plan.run_dir)
    if (run_dir / "results.json").exists():
        results = read_json(run_dir / "results.json")
        diff = config_diff(results.get("config", {}), plan.config)
        diff += _fingerprint_diff(results.get("fingerprint"), plan.split.fingerprint)
        if not diff:
            return results
        raise BenchError(
            f"{label}: holds finished results for a different config ({'; '.join(diff)}); "
            "re-run with --force to replace them"
        )
    has_outputs = (
        (run_dir / "predictions.jsonl").exists() or (run_dir / "train").exists() or any(run_dir.glob(SHARD_GLOB))
    )
    if (run_dir / "config.json").exists() and has_outputs:
        diff = config_diff(read_json(run_dir / "config.json"), plan.config)
        if (run_dir / "split.json").exists():
            diff += _fingerprint_diff(read_json(run_dir / "split.json").get("fingerprint"), plan.split.fingerprint)
        if diff:
            raise BenchError(
                f"{label}: holds a partial run of a different config ({'; '.join(diff)}); "
                "re-run with --force to start it afresh"
            )
    return None


def clear_run_dir(run_dir: Path) -> None:
    """Remove every output of a run (the lock file stays: it is held by the caller)."""
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for shard in run_dir.glob(SHARD_GLOB):  # captions of an interrupted multi-process run
        shard.unlink(missing_ok=True)
    for name in RUN_DIRS:
        shutil.rmtree(run_dir / name, ignore_errors=True)


def remove_stale_temps(run_dir: Path) -> None:
    """Drop temp files/folders a killed process left mid-write (we hold the lock: nobody writes)."""
    stale = sorted({*run_dir.rglob(".*.tmp"), *run_dir.rglob(".epoch-*.partial")}, key=lambda p: len(p.parts))
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def start_run(plan: RunPlan, force: bool) -> dict[str, Any]:
    """Ready the run folder (under the lock): config and split written, stale outputs gone.

    Returns the stages already finished (`run_state.json`).
    """
    run_dir = plan.run_dir
    config_path = run_dir / "config.json"
    if force or not config_path.exists() or config_diff(read_json(config_path), plan.config):
        clear_run_dir(run_dir)  # a differing config here has no outputs (checked before)
    atomic_write_json(run_dir / "config.json", plan.config)
    atomic_write_json(run_dir / "split.json", split_json(plan.split, plan.samples))
    (run_dir / "results.json").unlink(missing_ok=True)  # a stale one would claim completeness
    state_path = run_dir / "run_state.json"
    return read_json(state_path) if state_path.exists() else {}


# --- reading the registry ---------------------------------------------------------------------------

def _read_optional(path: Path) -> dict[str, Any]:
    try:
        return read_json(path) if path.exists() else {}
    except BenchError:
        return {}


def _run_info(run_dir: Path) -> RunInfo:
    setting, backend = run_dir.parent.name, run_dir.name
    results: dict[str, Any] | None = None
    if (run_dir / "results.json").exists():
        try:
            results = load_results(run_dir)
        except BenchError:
            results = None
    config, split = _read_optional(run_dir / "config.json"), _read_optional(run_dir / "split.json")
    if results is not None:
        status = "complete"
    elif any((run_dir / n).exists() for n in ("config.json", "predictions.jsonl", "train")):
        status = "partial"
    else:
        status = "empty"
    source = results or {}
    return RunInfo(
        name=f"{setting}/{backend}",
        setting=setting,
        backend=backend,
        kind=source.get("kind") or config.get("kind"),
        status=status,
        n_predictions=len(read_records(run_dir / "predictions.jsonl")),
        metrics=source.get("metrics"),
        dataset=source.get("dataset") or split.get("dataset"),
        fingerprint=source.get("fingerprint") or split.get("fingerprint"),
        path=run_dir,
    )


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


def _external_results(name: str, source: str, dataset: str, fingerprint: str, scored: dict[str, Any],
                      n: int, score_s: float, config: dict[str, Any]) -> dict[str, Any]:
    return {
        "run": f"{name}/external",
        "setting": name,
        "backend": "external",
        "kind": "external",
        "prompt": None,
        "prompt_text": None,
        "model": source,
        "dataset": dataset,
        "fingerprint": fingerprint,
        "n_images": int(scored.get("n_images") or n),
        "metrics": dict(scored["corpus"]),
        "params": None,
        "timings": {"train_s": 0.0, "generate_s": 0.0, "score_s": round(score_s, 3), "images_per_s": 0.0},
        **provenance(),
        "config": config,
    }


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
    run_dir = run_dir_for(name, "external")
    images = images or {}
    scored = normalize_metrics_json(result_json)
    config = {"name": name, "kind": "external", "backend": "external", "source": source,
              "data": {"dataset": dataset}, "fingerprint": fingerprint}
    samples = [{"image_id": i, "path": images.get(i), "refs": list(references[i])} for i in predictions]
    with exclusive_lock(run_dir):
        clear_run_dir(run_dir)
        atomic_write_json(run_dir / "config.json", config)
        atomic_write_json(run_dir / "split.json",
                          {"dataset": dataset, "fingerprint": fingerprint, "n": len(predictions), "samples": samples})
        atomic_write_text(
            run_dir / "predictions.jsonl",
            "".join(encode_record({"image_id": i, "caption": c}) for i, c in predictions.items()),
        )
        atomic_write_json(run_dir / "metrics.json", scored)
        results = _external_results(name, source, dataset, fingerprint, scored, len(predictions), score_s, config)
        atomic_write_json(run_dir / "results.json", results)
    return run_dir
