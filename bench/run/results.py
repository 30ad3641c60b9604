"""A run's result files: `metrics.json` (per-image and corpus scores) and `results.json` (the
record `bench compare` reads: metrics, timings, memory, parameters, versions, config).

`results.json` is written last and atomically: its presence means the run is complete.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.cost import run_cost
from bench.errors import BenchError
from bench.io import read_json
from bench.run.environment import git_commit, library_versions, peak_memory
from bench.run.plan import RunPlan, run_label

METRIC_KEYS: tuple[str, ...] = (
    "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "CLIPScore", "RefCLIPScore",
)


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    results: dict[str, Any]
    cached: bool

    @property
    def name(self) -> str:
        return str(self.results.get("run", self.run_dir.name))


def metrics_json(result: Any) -> dict[str, Any]:
    """metrics.json in the run-folder format, from a bench.scoring ScoreResult."""
    return {
        "corpus": dict(result.corpus),
        "per_image": {k: dict(v) for k, v in result.per_image.items()},
        "n_images": int(result.n_images),
        "n_clip_truncated": int(getattr(result, "n_clip_truncated", 0)),
        "clip_model": getattr(result, "clip_model", None),
        # Per-image METEOR statistics: the report's METEOR intervals are aggregated from them.
        "meteor_stats": dict(getattr(result, "meteor_stats", None) or {}),
    }


def normalize_metrics_json(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Accept the run-folder shape or ScoreResult.to_json()'s flat one (metric keys at the top)."""
    if isinstance(obj.get("corpus"), dict):
        return dict(obj)
    return {
        "corpus": {k: v for k, v in obj.items() if k in METRIC_KEYS},
        "per_image": dict(obj.get("per_image", {})),
        "n_images": obj.get("n_images"),
        "n_clip_truncated": obj.get("n_clip_truncated", 0),
        "clip_model": obj.get("clip_model"),
        "meteor_stats": dict(obj.get("meteor_stats") or {}),
    }


def provenance(device: Any = None) -> dict[str, Any]:
    """Where and when: peak memory of this run, library versions, git commit, timestamp."""
    return {
        "memory": peak_memory(device),
        "versions": library_versions(),
        "git_commit": git_commit(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _params(train_info: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not train_info:
        return None
    total = train_info["total"] or 1
    return {
        "trainable": train_info["trainable"],
        "total": train_info["total"],
        "trainable_pct": round(100.0 * train_info["trainable"] / total, 4),
    }


def _timings(state: Mapping[str, Any], score_s: float) -> dict[str, float]:
    train_info = state.get("train")
    caption = state.get("caption", {})
    generate_s = float(caption.get("generate_s", 0.0))
    n_captioned = int(caption.get("n_captioned", 0))
    return {
        "load_s": round(float(state.get("load_s", 0.0)), 3),
        "train_s": round(float(train_info["train_s"]) if train_info else 0.0, 3),
        "generate_s": round(generate_s, 3),
        "model_s": round(float(caption.get("model_s", 0.0)), 3),
        "score_s": round(score_s, 3),
        "images_per_s": round(n_captioned / generate_s, 3) if generate_s > 0 else 0.0,
    }


def build_results(
    plan: RunPlan, scored: Mapping[str, Any], state: Mapping[str, Any], score_s: float, device: Any
) -> dict[str, Any]:
    """results.json of a finished run."""
    setting = plan.setting
    prov = provenance(device)
    return {
        "run": plan.name,
        "setting": setting.name,
        "backend": plan.backend,
        "kind": plan.kind,
        "prompt": setting.prompt,  # None for the LoRA captioners; set for zero-shot and VLM LoRA runs
        "prompt_text": plan.prompt_text,
        "model": setting.models[plan.backend].model,
        # zero-shot: what the backend resolved (family, prompt rule, image mode), see bench.backends.vlm
        "image_mode": state.get("model", {}).get("image_mode"),
        "model_resolved": state.get("model"),
        "dataset": plan.split.dataset,
        "fingerprint": plan.split.fingerprint,
        "n_images": len(plan.samples),
        # Captions cut by generation.max_new_tokens without an end token (fragments, scored as is).
        "n_truncated": int(state.get("caption", {}).get("n_truncated", 0)),
        # An endpoint run (bench.backends.served): server model ids, fingerprints, tokens, failures.
        **({"n_failed": int(state["served"].get("n_failed", 0)), "served": state["served"]} if state.get("served") else {}),
        "cost": run_cost(setting.cost, state, len(plan.samples)),
        "metrics": dict(scored.get("corpus", {})),
        "params": _params(state.get("train")),
        "timings": _timings(state, score_s),
        "memory": prov["memory"],
        "device": str(device),
        "versions": prov["versions"],
        "git_commit": prov["git_commit"],
        "created_at": prov["created_at"],
        "config": plan.config,
    }


def load_results(run_dir: str | Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    path = run_dir / "results.json"
    if not path.exists():
        raise BenchError(f"{run_label(run_dir)}: no results.json (the run is not complete; run it again to finish it)")
    results = read_json(path)
    if not isinstance(results, dict):
        raise BenchError(f"{path}: expected a JSON object")
    return results
