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

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from pycocoevalcap.rouge.rouge import Rouge

from bench.report.cider_tables import (  # noqa: F401  (corpus_* are part of this module's API)
    _N,
    bleu_from_totals,
    cand_tables,
    cider_per_image,
    corpus_bleu,
    corpus_cider,
    corpus_metrics,
    idf_weights_sq,
    ref_norms_sq,
    ref_tables,
)
from bench.report.meteor import corpus_meteor
from bench.scoring.metrics import keys_aggregated
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
    progress: Callable[[int], None] | None = None,
) -> BootstrapResult:
    """Bootstrap every metric of every run on the SAME resamples of images (paired).

    `refs` and every run's candidates are tokenized text (PTB, as pycocoevalcap scores it).
    `progress(k)` is called after each chunk with the number of resamples done.
    """
    with _one_torch_thread():
        return _bootstrap(refs, runs, n_boot=n_boot, seed=seed, chunk=chunk, progress=progress)


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    # torch's CSR x dense kernel is ~4x slower with 2 threads than with 1 on a shared 2-core box.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _bootstrap(
    refs: Sequence[Sequence[str]],
    runs: Sequence[RunInput],
    *,
    n_boot: int,
    seed: int,
    chunk: int,
    progress: Callable[[int], None] | None,
) -> BootstrapResult:
    n = len(refs)
    counts = resample_counts(n, n_boot, seed)
    # Row 0 is the full sample (every image once): the point values.
    all_counts = np.vstack([np.ones((1, n), dtype=np.int64), counts])
    per_run, cider_full = _corpus_samples(refs, runs, all_counts, chunk, progress)
    full: dict[str, dict[str, float]] = {}
    samples: dict[str, dict[str, np.ndarray]] = {}
    for r in runs:
        values = {metric: np.concatenate(parts) for metric, parts in per_run[r.name].items()}
        values.update(_other_samples(r, all_counts))
        full[r.name] = {metric: float(v[0]) for metric, v in values.items()}
        samples[r.name] = {metric: v[1:] for metric, v in values.items()}
    return BootstrapResult(n_boot, seed, full, samples, cider_full)


def _corpus_samples(
    refs: Sequence[Sequence[str]],
    runs: Sequence[RunInput],
    all_counts: np.ndarray,
    chunk: int,
    progress: Callable[[int], None] | None,
) -> tuple[dict[str, dict[str, list[np.ndarray]]], dict[str, np.ndarray]]:
    """CIDEr and BLEU of every multiplicity row, chunk by chunk; and per-image CIDEr of row 0."""
    n = len(refs)
    tables = ref_tables(refs)
    cands = {r.name: cand_tables(tables, r.cands) for r in runs}
    corpus_keys = (*keys_aggregated("bleu"), *keys_aggregated("cider"))  # what this loop computes
    per_run: dict[str, dict[str, list[np.ndarray]]] = {r.name: {m: [] for m in corpus_keys} for r in runs}
    cider_full: dict[str, np.ndarray] = {}
    for start in range(0, len(all_counts), chunk):
        m = all_counts[start : start + chunk]
        mf = m.astype(np.float64)
        w2 = idf_weights_sq(tables, m)
        rn = ref_norms_sq(tables, w2)
        for r in runs:
            ct = cands[r.name]
            per_image = cider_per_image(tables, ct, w2, rn)  # (N, b)
            if start == 0:
                cider_full[r.name] = per_image[:, 0].copy()
            per_run[r.name]["CIDEr"].append((mf * per_image.T).sum(axis=1) / n)
            bleu = bleu_from_totals(mf @ ct.bleu_stats)
            for k in range(_N):
                per_run[r.name][f"BLEU-{k + 1}"].append(bleu[:, k])
        if progress is not None:
            progress(min(start + chunk, len(all_counts)) - 1)
    return per_run, cider_full


def _other_samples(run: RunInput, all_counts: np.ndarray) -> dict[str, np.ndarray]:
    """METEOR from the jar's statistics and the mean metrics, for every multiplicity row."""
    n = all_counts.shape[1]
    countsf = all_counts.astype(np.float64)
    out: dict[str, np.ndarray] = {}
    if run.meteor_stats is not None:
        stats = np.asarray(run.meteor_stats, dtype=np.float64)
        if stats.shape[0] != n:
            raise ValueError(f"{run.name}: METEOR statistics for {stats.shape[0]} images, expected {n}")
        out["METEOR"] = corpus_meteor(stats, countsf)
    for metric in keys_aggregated("mean"):
        s = np.asarray(run.per_image.get(metric, ()), dtype=np.float64)
        if s.shape == (n,) and np.all(np.isfinite(s)):
            out[metric] = countsf @ s / n
    return out
