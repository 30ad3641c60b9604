"""Seeded image-level bootstrap of corpus captioning metrics, with paired p-values.

Each resample draws N images with replacement (N = number of images) and recomputes the corpus
metric on that multiset of images, exactly as the reference implementation would score the
resampled lists, so the full sample (every image once) reproduces the reported value:

* CIDEr (pycocoevalcap's CIDEr-D) with its document frequencies recomputed on every resample,
  and BLEU-1..4 from the summed clipped n-gram counts and lengths (`bench.report.cider_tables`);
* METEOR from the summed per-image statistics of the METEOR 1.5 jar, aggregated as the jar
  aggregates them (`bench.report.meteor`): the jar's corpus score is not a mean of image scores;
* ROUGE-L, CLIPScore and RefCLIPScore, whose corpus values ARE means of per-image scores, as the
  mean of the resampled per-image scores.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from pycocoevalcap.rouge.rouge import Rouge

from bench.report.cider_chunks import CorpusSamples, corpus_samples
from bench.report.cider_tables import (  # noqa: F401  (corpus_* are part of this module's API)
    cand_tables,
    corpus_bleu,
    corpus_cider,
    corpus_metrics,
    ref_tables,
)
from bench.report.compute_cache import ComputeCache
from bench.report.meteor import corpus_meteor
from bench.scoring.metrics import keys_aggregated, spec
from bench.scoring.resample import (  # noqa: F401  (part of this module's API)
    paired_p_value,
    percentile_ci,
    resample_counts,
)


def rouge_per_image(refs: Sequence[Sequence[str]], cands: Sequence[str]) -> np.ndarray:
    """pycocoevalcap's ROUGE-L of each image (for runs whose metrics.json lacks per-image values)."""
    rouge = Rouge()
    return np.asarray([rouge.calc_score([c], list(r)) for c, r in zip(cands, refs)], dtype=np.float64)


# --- the whole bootstrap of one section ----------------------------------------------------------

@dataclass
class RunInput:
    """One run of a section: tokenized candidates aligned with the section's images, the
    per-image scores (aligned the same way) of the metrics that are means (aggregate "mean" in
    the metric table; others are ignored), and the METEOR jar's per-image statistics (N, 23), if
    METEOR was scored."""

    name: str
    cands: Sequence[str]
    per_image: Mapping[str, np.ndarray] = field(default_factory=dict)
    meteor_stats: np.ndarray | None = None


@dataclass
class BootstrapResult:
    n_boot: int
    seed: int
    full: dict[str, dict[str, float]]  # run -> metric -> value on the full sample
    samples: dict[str, dict[str, np.ndarray]]  # run -> metric -> (n_boot,) resampled values
    cider_per_image: dict[str, np.ndarray]  # run -> (N,) per-image CIDEr on the full sample

    def ci(self, run: str, metric: str, level: float = 0.95) -> tuple[float, float] | None:
        s = self.samples.get(run, {}).get(metric)
        return None if s is None else percentile_ci(s, level)

    def p_value(self, run: str, baseline: str, metric: str) -> float | None:
        a, b = self.samples.get(run, {}).get(metric), self.samples.get(baseline, {}).get(metric)
        if a is None or b is None:
            return None
        return paired_p_value(a, self.full[run][metric], b, self.full[baseline][metric])


def bootstrap(
    refs: Sequence[Sequence[str]],
    runs: Sequence[RunInput],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    chunk: int = 200,
    progress: Callable[[int, int, str], None] | None = None,
    cache: ComputeCache | None = None,
) -> BootstrapResult:
    """Bootstrap every metric of every run on the SAME resamples of images (paired).

    `refs` and every run's candidates are tokenized text (PTB, as pycocoevalcap scores it).
    `progress(done, total, run)` is called after each run's share of each chunk of at most
    `chunk` resamples. With a cache, runs computed before on the same references, resamples and
    seed are read back instead of recomputed.
    """
    n = len(refs)
    counts = resample_counts(n, n_boot, seed)
    # Row 0 is the full sample (every image once): the point values.
    all_counts = np.vstack([np.ones((1, n), dtype=np.int64), counts])
    corpus = _corpus_samples(refs, runs, all_counts, chunk, progress, cache, seed)
    full: dict[str, dict[str, float]] = {}
    samples: dict[str, dict[str, np.ndarray]] = {}
    countsf = all_counts.astype(np.float64)
    for r in runs:
        values = dict(corpus[r.name].values)
        values.update(_other_samples(r, countsf))
        full[r.name] = {metric: float(v[0]) for metric, v in values.items()}
        samples[r.name] = {metric: v[1:] for metric, v in values.items()}
    return BootstrapResult(n_boot, seed, full, samples, {r.name: corpus[r.name].cider_per_image for r in runs})


def _corpus_samples(
    refs: Sequence[Sequence[str]],
    runs: Sequence[RunInput],
    all_counts: np.ndarray,
    chunk: int,
    progress: Callable[[int, int, str], None] | None,
    cache: ComputeCache | None,
    seed: int,
) -> dict[str, CorpusSamples]:
    """CIDEr and BLEU of every multiplicity row and per-image CIDEr of row 0, for every run:
    cached runs read back, the others computed together (the reference work once)."""
    section = cache.section(refs, len(all_counts) - 1, seed) if cache else ""
    keys = {r.name: cache.key(section, r.cands) for r in runs} if cache else {}
    out = {r.name: got for r in runs if cache and (got := cache.get(keys[r.name], all_counts.shape)) is not None}
    todo = [r for r in runs if r.name not in out]
    if todo:
        tables = cache.ref_tables(refs) if cache else ref_tables(refs)
        computed = corpus_samples(tables, {r.name: cand_tables(tables, r.cands) for r in todo}, all_counts, chunk, progress)
        for name, result in computed.items():
            if cache:
                cache.put(keys[name], result)
            out[name] = result
    return out


def _other_samples(run: RunInput, countsf: np.ndarray) -> dict[str, np.ndarray]:
    """METEOR from the jar's statistics and the mean metrics, for every multiplicity row (the
    multiplicities as float64, converted once per section)."""
    n = countsf.shape[1]
    out: dict[str, np.ndarray] = {}
    if run.meteor_stats is not None:
        stats = np.asarray(run.meteor_stats, dtype=np.float64)
        if stats.shape[0] != n:
            raise ValueError(f"{run.name}: METEOR statistics for {stats.shape[0]} images, expected {n}")
        out["METEOR"] = corpus_meteor(stats, countsf)
    for metric in keys_aggregated("mean"):
        s = np.asarray(run.per_image.get(metric, ()), dtype=np.float64)
        if s.shape != (n,):
            continue
        ok = np.isfinite(s)
        if ok.all():
            out[metric] = countsf @ s / n
        elif spec(metric).judge and ok.any():  # the judged images of each resample only
            with np.errstate(invalid="ignore", divide="ignore"):  # a resample of unjudged images only: NaN
                out[metric] = (countsf @ np.where(ok, s, 0.0)) / (countsf @ ok.astype(np.float64))
    return out
