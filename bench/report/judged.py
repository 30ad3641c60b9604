"""The judge metric in `bench compare --judge NAME`: each run's captions judged (cached; see
bench.judge) and added to the run's per-image scores, so the report bootstraps and tests it like
every mean metric."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from bench.report.load import RunData


def with_judge_scores(runs: Sequence[RunData], spec: Any | None) -> tuple[list[RunData], list[str]]:
    """The runs with the judge's per-image scores (NaN where it gave none) and mean, plus notes;
    the runs as they are without a judge."""
    from bench.judge import METRIC, judge_rows

    if spec is None:
        return list(runs), []
    record = spec.record()
    notes = [
        f"{METRIC}: judge {record['judge']} (model {record['model']}, prompt {record['prompt']} version "
        f"{record['prompt_version']}, temperature 0, max_tokens {record['max_tokens']}, seed {record['seed']}); "
        "score = the judge's 0-100 answer / 100"
    ]
    out = []
    for run in runs:
        judged = judge_rows(spec, run.captions, [list(r) for r in run.refs], progress=sys.stderr.isatty())
        per_image = {i: dict(run.per_image.get(i, {})) for i in run.image_ids}
        for image_id, score in zip(run.image_ids, judged.scores):
            per_image[image_id][METRIC] = float(score)
        metrics = dict(run.metrics)
        if np.isfinite(judged.scores).any():
            metrics[METRIC] = float(np.nanmean(judged.scores))
        out.append(dataclasses.replace(run, per_image=per_image, metrics=metrics))
        notes += [f"{run.run}: {n}" for n in judged.notes]
    return out, notes


def section_notes(notes: Sequence[str], group: Sequence[RunData]) -> list[str]:
    """The judge's own note and the notes of this section's runs."""
    names = {r.run for r in group}
    return [n for n in notes if n.startswith("CLAIR:") or n.split(":", 1)[0] in names]


def payload(spec: Any | None) -> dict[str, Any]:
    """The judge's record for the report's JSON (nothing without a judge)."""
    return {} if spec is None else {"judge": spec.record()}
