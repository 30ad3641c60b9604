"""Group runs into comparable sections and compute everything a section's tables need.

Runs are only compared when they share the dataset, the split fingerprint AND the exact image set
(a run captioned with `data.limit` scores fewer images): each such group is one section.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass, field

import numpy as np

from bench.report.bootstrap import BootstrapResult, RunInput, bootstrap, rouge_per_image
from bench.report.compute_cache import ComputeCache
from bench.report.diagnostics import Cost, Degeneration, cost
from bench.report.load import RunData
from bench.report.meteor import JarStats
from bench.report.run_cache import LoadedRun
from bench.scoring.metrics import headline_keys, keys_aggregated, metric_keys, p_value_keys, recomputable_keys
from bench.significance import holm

_MISMATCH_TOL = 1e-6


@dataclass
class RunSummary:
    data: RunData
    tokens: tuple[str, ...]  # tokenized captions, in the section's image order
    repetitive: tuple[bool, ...]  # per caption, same order: diagnostics.is_degenerate
    values: dict[str, float]  # point values: as recorded (results.json), else recomputed
    ci: dict[str, tuple[float, float]]
    p: dict[str, float]  # paired bootstrap p-value vs the section's baseline
    recomputed: dict[str, float]  # the bootstrap's full-sample values
    per_image: dict[str, np.ndarray]  # metric -> (N,) in the section's image order
    degeneration: Degeneration
    cost: Cost
    # Holm-adjusted p-values: the family is every p-value of the leaderboard (each run against the
    # baseline on each p-value metric), the comparisons a reader of the section makes at once.
    p_holm: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.data.run


@dataclass
class Section:
    dataset: str
    fingerprint: str
    image_ids: tuple[str, ...]  # sorted: the resampling order does not depend on which runs exist
    refs: tuple[tuple[str, ...], ...]  # raw references, same order
    runs: list[RunSummary]  # sorted by CIDEr, best first
    baseline: str
    notes: list[str] = field(default_factory=list)
    boot: BootstrapResult | None = None

    @property
    def n_images(self) -> int:
        return len(self.image_ids)

    def metrics_present(self, names: Sequence[str] | None = None) -> list[str]:
        """The metrics (the table's headline columns unless `names`) that some run has."""
        return [m for m in (headline_keys() if names is None else names) if any(m in r.values for r in self.runs)]

    def run(self, name: str) -> RunSummary:
        return next(r for r in self.runs if r.name == name)


def group_runs(runs: Sequence[LoadedRun]) -> tuple[list[list[LoadedRun]], dict[str, list[str]]]:
    """Groups of comparable runs (largest group of a dataset first) and, per dataset, one line
    per group that differs from the main one."""
    by_key: dict[tuple[str, str, str], list[LoadedRun]] = {}
    for r in runs:
        by_key.setdefault((r.data.dataset, r.data.fingerprint, r.data.images_digest()), []).append(r)
    groups: list[list[LoadedRun]] = []
    notes: dict[str, list[str]] = {}
    for dataset in sorted({k[0] for k in by_key}):
        keys = sorted((k for k in by_key if k[0] == dataset), key=lambda k: (-len(by_key[k]), k[1], k[2]))
        main = by_key[keys[0]][0].data
        for key in keys:
            group = by_key[key]
            groups.append(group)
            if key is keys[0]:
                continue
            n = len(group)
            who = f"{n} run{'s' if n > 1 else ''} on {dataset} ({', '.join(r.name for r in group)})"
            if key[1] != main.fingerprint:
                notes.setdefault(dataset, []).append(f"{who} use a different split (fingerprint {key[1]} vs {main.fingerprint}) and are shown separately")
            else:
                notes.setdefault(dataset, []).append(
                    f"{who} score a different set of images ({len(group[0].data.image_ids)} vs {len(main.image_ids)}, "
                    "e.g. data.limit) and are shown separately"
                )
    return groups, notes


def _cider_key(r: RunSummary) -> tuple[float, str]:
    v = r.values.get("CIDEr")
    return (-(v if v is not None else -math.inf), r.name)


def default_baseline(runs: Sequence[RunSummary]) -> str:
    """The best zero-shot prompt run by CIDEr, else the best run."""
    zero = [r for r in runs if r.data.kind == "zero-shot"]
    return sorted(zero or runs, key=_cider_key)[0].name


def _meteor_stats(
    run: RunData, image_ids: Sequence[str], ref_tokens: list, cands: tuple[str, ...], jar: JarStats
) -> np.ndarray | None:
    """The run's per-image METEOR statistics in the section's image order: as recorded in
    metrics.json, else (runs scored before bench kept them) recomputed by the jar from the same
    tokenized text; None when the run has no METEOR."""
    if run.meteor_stats and all(i in run.meteor_stats for i in image_ids):
        return np.asarray([run.meteor_stats[i] for i in image_ids], dtype=np.float64)
    if "METEOR" not in run.metrics:
        return None
    return jar.stats(ref_tokens, cands)


def _bootstrap_inputs(group: Sequence[LoadedRun], image_ids: tuple[str, ...], ref_tokens: list) -> list[RunInput]:
    """Each run's tokenized captions, per-image scores and METEOR statistics in the section's order."""
    inputs: list[RunInput] = []
    with closing(JarStats()) as jar:
        for loaded in group:
            run = loaded.data
            pos = {image_id: k for k, image_id in enumerate(run.image_ids)}
            cands = tuple(loaded.tokens.captions[pos[i]] for i in image_ids)
            per_image: dict[str, np.ndarray] = {}
            for metric in (*keys_aggregated("meteor"), *keys_aggregated("mean")):
                values = [run.per_image.get(i, {}).get(metric) for i in image_ids]
                if all(v is not None for v in values):
                    per_image[metric] = np.asarray(values, dtype=np.float64)
            if "ROUGE-L" not in per_image:
                per_image["ROUGE-L"] = rouge_per_image(ref_tokens, cands)
            inputs.append(RunInput(run.run, cands, per_image, _meteor_stats(run, image_ids, ref_tokens, cands, jar)))
    return inputs


def _baseline_p_values(summaries: list[RunSummary], baseline: str | None, boot: BootstrapResult, notes: list[str]) -> str:
    """Pick the section's baseline and fill every run's paired p-values against it."""
    names = [r.name for r in summaries]
    if baseline is not None and baseline in names:
        base = baseline
    else:
        base = default_baseline(summaries)
        if baseline is not None:
            notes.append(f"baseline {baseline} is not among these runs; using {base} (the default)")
    for r in summaries:
        for m in metric_keys():
            p = boot.p_value(r.name, base, m)
            if p is not None:
                r.p[m] = p
    family = [(r, m) for r in summaries if r.name != base for m in p_value_keys() if m in r.p]
    for (r, m), adjusted in zip(family, holm([r.p[m] for r, m in family])):
        r.p_holm[m] = adjusted
    return base


def analyse_section(
    group: Sequence[LoadedRun],
    *,
    baseline: str | None,
    n_boot: int,
    seed: int,
    progress: Callable[[int, int, str], None] | None = None,
    cache: ComputeCache | None = None,
) -> Section:
    first = group[0].data
    order = sorted(range(len(first.image_ids)), key=lambda k: first.image_ids[k])
    image_ids = tuple(first.image_ids[k] for k in order)
    ref_tokens = [group[0].tokens.refs[k] for k in order]
    inputs = _bootstrap_inputs(group, image_ids, ref_tokens)

    boot = bootstrap(ref_tokens, inputs, n_boot=n_boot, seed=seed, progress=progress, cache=cache)

    notes: list[str] = []
    summaries = [_run_summary(run, inp, image_ids, boot, notes) for run, inp in zip(group, inputs)]
    summaries.sort(key=_cider_key)
    base = _baseline_p_values(summaries, baseline, boot, notes)
    raw_refs = tuple(first.refs[k] for k in order)
    return Section(first.dataset, first.fingerprint, image_ids, raw_refs, summaries, base, notes, boot)


def _run_summary(
    loaded: LoadedRun, inp: RunInput, image_ids: tuple[str, ...], boot: BootstrapResult, notes: list[str]
) -> RunSummary:
    """One run's values, CIs and diagnostics; a note when its recorded CIDEr/BLEU-4/METEOR differ
    from the recomputed ones."""
    run, per_image = loaded.data, dict(inp.per_image)
    pos = {image_id: k for k, image_id in enumerate(run.image_ids)}
    recomputed = boot.full[run.run]
    values = {m: run.metrics[m] for m in metric_keys() if m in run.metrics}
    for m in recomputable_keys():
        if m not in values and m in recomputed:
            values[m] = recomputed[m]
    mismatched = [
        m for m in ("CIDEr", "BLEU-4", "METEOR")
        if m in run.metrics and m in recomputed and abs(run.metrics[m] - recomputed[m]) > _MISMATCH_TOL
    ]
    if mismatched:
        m = mismatched[0]
        notes.append(
            f"{run.run}: recorded {m} {run.metrics[m]:.6f} differs from {recomputed[m]:.6f} recomputed from its "
            "predictions (different tokenization?); its CI is around the recomputed value"
        )
    ci = {m: iv for m in metric_keys() if (iv := boot.ci(run.run, m)) is not None}
    per_image["CIDEr"] = boot.cider_per_image[run.run]
    return RunSummary(
        data=run,
        tokens=tuple(inp.cands),
        repetitive=tuple(loaded.repetitive[pos[i]] for i in image_ids),
        values=values,
        ci=ci,
        p={},
        recomputed=recomputed,
        per_image=per_image,
        degeneration=loaded.degeneration,
        cost=cost(run.results),
    )
