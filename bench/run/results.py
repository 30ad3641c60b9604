"""What a finished run records in `results.json` (the record `bench compare` reads: metrics,
timings, memory, parameters, versions, config); its format is bench.run.folder's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.cost import run_cost
from bench.run.environment import git_commit, library_versions, peak_memory
from bench.run.folder import CaptionRecord, MetricsRecord, ResultsRecord, StageState, TrainRecord
from bench.run.plan import RunPlan


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    results: dict[str, Any]  # results.json (ResultsRecord.to_json())
    cached: bool

    @property
    def name(self) -> str:
        return str(self.results.get("run", self.run_dir.name))


def provenance(device: Any = None) -> dict[str, Any]:
    """Where and when: peak memory of this run, library versions, git commit, timestamp."""
    return {
        "memory": peak_memory(device),
        "versions": library_versions(),
        "git_commit": git_commit(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _params(train: TrainRecord | None) -> dict[str, Any] | None:
    if train is None:
        return None
    total = train.total or 1
    return {"trainable": train.trainable, "total": train.total,
            "trainable_pct": round(100.0 * train.trainable / total, 4)}


def _timings(state: StageState, score_s: float) -> dict[str, float]:
    caption = state.caption or CaptionRecord()
    generate_s = float(caption.generate_s)
    return {
        "load_s": round(float(state.load_s), 3),
        "train_s": round(float(state.train.train_s) if state.train else 0.0, 3),
        "generate_s": round(generate_s, 3),
        "model_s": round(float(caption.model_s), 3),
        "score_s": round(score_s, 3),
        "images_per_s": round(caption.n_captioned / generate_s, 3) if generate_s > 0 else 0.0,
    }


def build_results(
    plan: RunPlan, scored: MetricsRecord, state: StageState, score_s: float, device: Any, processes: int | None = None
) -> ResultsRecord:
    """results.json of a finished run."""
    setting = plan.setting
    prov = provenance(device)
    return ResultsRecord(
        run=plan.name,
        setting=setting.name,
        backend=plan.backend,
        kind=plan.kind,
        prompt=setting.prompt,  # None for the LoRA captioners; set for zero-shot and VLM LoRA runs
        prompt_text=plan.prompt_text,
        model=setting.models[plan.backend].model,
        # zero-shot: what the backend resolved (family, prompt rule, image mode), see bench.backends.vlm
        image_mode=(state.model or {}).get("image_mode"),
        model_resolved=state.model,
        dataset=plan.split.dataset,
        fingerprint=plan.split.fingerprint,
        n_images=len(plan.samples),
        # Captions cut by generation.max_new_tokens without an end token (fragments, scored as is).
        n_truncated=int(state.caption.n_truncated if state.caption else 0),
        # An endpoint run (bench.backends.served): server model ids, fingerprints, tokens, failures.
        n_failed=int(state.served.get("n_failed", 0)) if state.served else None,
        served=state.served,
        cost=run_cost(setting.cost, state.served, (state.caption or CaptionRecord()).generate_s, len(plan.samples)),
        metrics=dict(scored.corpus),
        params=_params(state.train),
        timings=_timings(state, score_s),
        memory=prov["memory"],
        device=str(device),
        versions=prov["versions"],
        git_commit=prov["git_commit"],
        created_at=prov["created_at"],
        config=plan.config,
        processes=processes,
    )
