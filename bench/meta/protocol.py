"""Meta-evaluation: how far each metric's per-caption scores agree with people.

    scores = score_rows(hset, metrics)              # bench's own Scorer, one id per row
    result = evaluate(hset, bench_spec, scores, n_boot=1000, seed=0)

Correlation benchmarks report Kendall's tau (scipy's `kendalltau`, the variant the benchmark's
papers use) x 100 between every metric and every human aspect; pairwise benchmarks report, per
category, the share of pairs where the metric scores the caption people chose higher. Intervals
are percentile intervals of a seeded bootstrap that resamples images (all rows of an image
together; for pairs, the pair).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import kendalltau

from bench.meta.sets import Benchmark, HumanSet

# The per-caption text metrics the published tables list, in their order.
META_METRICS = ("BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
_VARIANTS = {"tau-c": "c", "tau-b": "b"}


def score_rows(hset: HumanSet, scorer_metrics: Sequence[str] = ("bleu", "meteor", "rouge", "cider"),
               progress: bool = True) -> dict[str, np.ndarray]:
    """Per-row scores of the text metrics from bench's Scorer on the WHOLE set in one call, one id
    per row: CIDEr's document frequencies come from every row's references, as in the papers."""
    from bench.scoring.scorer import Scorer

    preds = {str(i): c for i, c in enumerate(hset.candidates)}
    refs = {str(i): r for i, r in enumerate(hset.refs)}
    with Scorer(metrics=scorer_metrics) as scorer:
        result = scorer.score(preds, refs, progress=progress)
    keys = [k for k in META_METRICS if k in result.corpus]
    return {k: np.asarray([result.per_image[str(i)][k] for i in range(hset.n_rows)]) for k in keys}


def correlation(metric: np.ndarray, human: np.ndarray, statistic: str) -> float:
    """Kendall's tau x 100 of the given variant (scipy.stats.kendalltau)."""
    return 100.0 * float(kendalltau(metric, human, variant=_VARIANTS[statistic]).statistic)


def pair_choice(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The caption a metric prefers: 1 when it scores the second higher, else 0 (ties go to the
    first caption, as in Hessel et al.'s and pacscore's Pascal-50S code)."""
    return (a < b).astype(np.int64)


def group_resamples(groups: Sequence[str], n_boot: int, seed: int) -> list[np.ndarray]:
    """Row indices of `n_boot` bootstrap samples that draw images (groups) with replacement."""
    names, inverse = np.unique(np.asarray(groups), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    starts = np.searchsorted(inverse[order], np.arange(len(names) + 1))
    rows_of = [order[starts[g]:starts[g + 1]] for g in range(len(names))]
    rng = np.random.default_rng(seed)
    return [np.concatenate([rows_of[g] for g in rng.integers(0, len(names), len(names))]) for _ in range(n_boot)]


@dataclass(frozen=True)
class MetaRow:
    """One metric on one human aspect (or one Pascal-50S category)."""

    metric: str
    aspect: str
    value: float  # tau x 100, or accuracy in %
    lo: float
    hi: float
    n: int  # rows (correlation) or pairs (pairwise)
    ties: int = 0  # pairs the metric scores equal (pairwise only)


@dataclass(frozen=True)
class Margin:
    """How far the best metric of an aspect leads the runner-up, on the same resamples (paired)."""

    best: str
    runner_up: str
    diff: float
    lo: float
    hi: float

    @property
    def settled(self) -> bool:
        return self.lo > 0


@dataclass
class MetaResult:
    benchmark: str
    statistic: str
    protocol: str
    n_rows: int
    n_images: int
    n_boot: int
    seed: int
    metrics: tuple[str, ...]
    aspects: tuple[str, ...]
    rows: list[MetaRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    margins: dict[str, Margin] = field(default_factory=dict)

    def row(self, metric: str, aspect: str) -> MetaRow:
        return next(r for r in self.rows if r.metric == metric and r.aspect == aspect)

    def best(self, aspect: str) -> MetaRow:
        """The metric that agrees best with people on this aspect (highest value; ties by name)."""
        rows = [r for r in self.rows if r.aspect == aspect and r.value == r.value] or [
            r for r in self.rows if r.aspect == aspect]  # NaN: a metric that scored nothing here
        return max(rows, key=lambda r: (r.value, r.metric))


def _interval(samples: np.ndarray) -> tuple[float, float]:
    lo, hi = np.nanpercentile(samples, [2.5, 97.5])
    return float(lo), float(hi)


def evaluate(
    hset: HumanSet,
    spec: Benchmark,
    scores: Mapping[str, np.ndarray],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> MetaResult:
    """Every metric of `scores` against people, with bootstrap intervals (see module doc)."""
    metrics = tuple(scores)
    if spec.kind == "pairwise":
        aspects = tuple(dict.fromkeys(hset.category))
    else:
        aspects = tuple(hset.human)
    result = MetaResult(spec.name, spec.statistic, spec.protocol, hset.n_rows, hset.n_images, n_boot, seed,
                        metrics, aspects)
    if spec.kind == "pairwise":
        result.rows, samples = _pairwise_rows(hset, scores, n_boot, seed, progress)
    else:
        result.rows, samples = _correlation_rows(hset, spec.statistic, scores, n_boot, seed, progress)
    for a in aspects:
        ranked = sorted((r for r in result.rows if r.aspect == a and r.value == r.value), key=lambda r: (-r.value, r.metric))
        if len(ranked) >= 2:
            first, second = ranked[0], ranked[1]
            lo, hi = _interval(samples[(first.metric, a)] - samples[(second.metric, a)])
            result.margins[a] = Margin(first.metric, second.metric, first.value - second.value, lo, hi)
    return result


Samples = dict[tuple[str, str], np.ndarray]  # (metric, aspect) -> bootstrap values, same resamples


def _correlation_rows(hset: HumanSet, statistic: str, scores: Mapping[str, np.ndarray], n_boot: int, seed: int,
                      progress: Callable[[int], None] | None) -> tuple[list[MetaRow], Samples]:
    # A row a metric could not score (a judge answer that never parsed) is NaN: left out of that
    # metric's statistic, never counted as a low score.
    scores = {m: s for m, s in scores.items()}
    resamples = group_resamples(hset.groups, n_boot, seed)
    samples = {(m, a): np.empty(n_boot) for m in scores for a in hset.human}
    for b, rows in enumerate(resamples):
        for a, human in hset.human.items():
            h = human[rows]
            for m, s in scores.items():
                samples[(m, a)][b] = _finite_correlation(s[rows], h, statistic)
        if progress is not None:
            progress(b + 1)
    out = []
    for m, s in scores.items():
        for a, human in hset.human.items():
            lo, hi = _interval(samples[(m, a)])
            ok = np.isfinite(s)
            out.append(MetaRow(m, a, correlation(s[ok], human[ok], statistic), lo, hi, int(ok.sum())))
    return out, samples


def _finite_correlation(s: np.ndarray, h: np.ndarray, statistic: str) -> float:
    ok = np.isfinite(s)
    return correlation(s, h, statistic) if ok.all() else correlation(s[ok], h[ok], statistic)


def _pairwise_rows(hset: HumanSet, scores: Mapping[str, np.ndarray], n_boot: int, seed: int,
                   progress: Callable[[int], None] | None) -> tuple[list[MetaRow], Samples]:
    assert hset.pair_a is not None and hset.pair_b is not None and hset.label is not None
    cats = np.asarray(hset.category)
    rng = np.random.default_rng(seed)
    draws = {c: rng.integers(0, int((cats == c).sum()), size=(n_boot, int((cats == c).sum())))
             for c in dict.fromkeys(hset.category)}
    out, samples = [], {}
    for m, s in scores.items():
        a, b = s[hset.pair_a], s[hset.pair_b]
        # A pair with an unscored caption (NaN: a judge answer that never parsed) is left out.
        correct = np.where(np.isfinite(a) & np.isfinite(b), (pair_choice(a, b) == hset.label).astype(float), np.nan)
        for c, draw in draws.items():
            in_cat = correct[cats == c]
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a resample without a scored pair
                samples[(m, c)] = 100.0 * np.nanmean(in_cat[draw], axis=1)
            lo, hi = _interval(samples[(m, c)])
            ties = int((a == b)[cats == c].sum())
            n = int(np.isfinite(in_cat).sum())
            out.append(MetaRow(m, c, 100.0 * float(np.nanmean(in_cat)) if n else float("nan"), lo, hi, n, ties))
    if progress is not None:
        progress(n_boot)
    return out, samples
