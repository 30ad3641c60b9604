"""Corpus METEOR of resampled images from the jar's own per-image statistics.

pycocoevalcap sends one `SCORE ||| refs ||| hyp` line per image to METEOR 1.5 (`-l en -norm`) and
gets back that image's sufficient statistics (23 numbers); its `EVAL` line then returns each
image's score and the corpus score, which the jar computes from the SUMMED statistics
(`MeteorStats.addStats`, then `MeteorScorer.computeMetrics`), not as a mean of image scores.
This module is that aggregation in numpy, for any multiplicity vector of images, so a bootstrap
resample's METEOR is the value the jar would give the resampled image list.

Layout of a statistics row (`MeteorStats.toString`): test length, reference length, test and
reference function words, then for each of the 4 modules (exact, stem, synonym, paraphrase)
test content / reference content / test function / reference function matches, then chunks,
test word matches, reference word matches.
"""

from __future__ import annotations

import numpy as np

from bench.scoring.text_metrics import METEOR_STATS_LENGTH as STATS_LENGTH

N_MODULES = 4
# The jar's English parameters (alpha, beta, gamma, delta) and module weights, as it prints
# them in its eval ID: meteor-1.5-wo-en-norm-0.85_0.2_0.6_0.75-ex_st_sy_pa-1.0_0.6_0.8_0.6.
ALPHA, BETA, GAMMA, DELTA = 0.85, 0.2, 0.6, 0.75
MODULE_WEIGHTS = (1.0, 0.6, 0.8, 0.6)

_TEST_LEN, _REF_LEN, _TEST_FUNC, _REF_FUNC = 0, 1, 2, 3
_CHUNKS, _TEST_WORD_MATCHES, _REF_WORD_MATCHES = 20, 21, 22


def _column(kind: int, module: int) -> int:
    """kind 0..3 = test content, reference content, test function, reference function."""
    return 4 + 4 * module + kind


def _total_matches(stats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    test = sum(stats[:, _column(0, m)] + stats[:, _column(2, m)] for m in range(N_MODULES))
    ref = sum(stats[:, _column(1, m)] + stats[:, _column(3, m)] for m in range(N_MODULES))
    return test, ref


def _perfect(stats: np.ndarray) -> np.ndarray:
    """Segments where the hypothesis equals the reference: the jar calls fragmentation 0 there."""
    test, ref = _total_matches(stats)
    return (test == stats[:, _TEST_LEN]) & (ref == stats[:, _REF_LEN]) & (stats[:, _CHUNKS] == 1)


def aggregable(stats: np.ndarray) -> np.ndarray:
    """Per-image rows whose sum is the jar's aggregate: addStats skips a perfect segment's chunk."""
    stats = np.asarray(stats, dtype=np.float64)
    if stats.ndim != 2 or stats.shape[1] != STATS_LENGTH:
        raise ValueError(f"METEOR statistics must be rows of {STATS_LENGTH} numbers, got shape {stats.shape}")
    out = stats.copy()
    out[_perfect(stats), _CHUNKS] = 0.0
    return out


def meteor_from_totals(totals: np.ndarray) -> np.ndarray:
    """(b,) METEOR of (b, 23) summed statistics: MeteorScorer.computeMetrics, division by zero
    giving 0 as in the jar (NaN -> 0, then max(score, 0))."""
    t = np.atleast_2d(np.asarray(totals, dtype=np.float64))
    test_len, ref_len = t[:, _TEST_LEN], t[:, _REF_LEN]
    test_func, ref_func = t[:, _TEST_FUNC], t[:, _REF_FUNC]
    test_weighted_len = DELTA * (test_len - test_func) + (1.0 - DELTA) * test_func
    ref_weighted_len = DELTA * (ref_len - ref_func) + (1.0 - DELTA) * ref_func
    test_matches = np.zeros(len(t))
    ref_matches = np.zeros(len(t))
    # The jar's summation order: content matches of every module, then function matches.
    for m, w in enumerate(MODULE_WEIGHTS):
        test_matches += t[:, _column(0, m)] * w * DELTA
        ref_matches += t[:, _column(1, m)] * w * DELTA
    for m, w in enumerate(MODULE_WEIGHTS):
        test_matches += t[:, _column(2, m)] * w * (1.0 - DELTA)
        ref_matches += t[:, _column(3, m)] * w * (1.0 - DELTA)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        precision = test_matches / test_weighted_len
        recall = ref_matches / ref_weighted_len
        f_mean = 1.0 / (((1.0 - ALPHA) / precision) + (ALPHA / recall))
        frag = t[:, _CHUNKS] / ((t[:, _TEST_WORD_MATCHES] + t[:, _REF_WORD_MATCHES]) / 2)
        frag = np.where(_perfect(t), 0.0, frag)
        score = f_mean * (1.0 - GAMMA * np.power(frag, BETA))
    return np.maximum(np.nan_to_num(score, nan=0.0, posinf=np.inf, neginf=-np.inf), 0.0)


def corpus_meteor(stats: np.ndarray, counts: np.ndarray | None = None) -> np.ndarray:
    """Corpus METEOR of each multiplicity row of `counts` (b, N) over per-image stats (N, 23);
    counts None: every image once, which is the jar's own corpus score."""
    rows = aggregable(stats)
    m = np.ones((1, len(rows))) if counts is None else np.atleast_2d(np.asarray(counts, dtype=np.float64))
    return meteor_from_totals(m @ rows)


class JarStats:
    """Per-image statistics from the METEOR jar itself, for runs recorded before bench kept them
    in metrics.json: recomputed from the run's PTB-tokenized captions and references, the text
    `bench score` sent to the jar. The JVM starts on first use; `close()` stops it."""

    def __init__(self) -> None:
        self._metric = None

    def stats(self, refs: list[tuple[str, ...]] | list[list[str]], cands: tuple[str, ...] | list[str]) -> np.ndarray:
        from bench.scoring.text_metrics import MeteorMetric

        if self._metric is None:
            self._metric = MeteorMetric()
        keys = [str(k) for k in range(len(cands))]
        _, _, rows = self._metric.compute_with_stats(
            {k: list(r) for k, r in zip(keys, refs)}, {k: [c] for k, c in zip(keys, cands)}
        )
        return np.asarray(rows, dtype=np.float64)

    def close(self) -> None:
        if self._metric is not None:
            self._metric.close()
            self._metric = None
