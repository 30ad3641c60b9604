"""The image-level bootstrap's primitives, numpy only: resample counts, intervals, paired p.

Here rather than in bench.report so that `bench run --log-with` (bench.tracking) can give
intervals without importing the report package (pandas, matplotlib, torch).
"""

from __future__ import annotations

import numpy as np


def resample_counts(n_images: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n_images) int multiplicities: row b says how often each image is drawn."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_images, size=(n_boot, n_images))
    flat = draws + (np.arange(n_boot) * n_images)[:, None]
    return np.bincount(flat.ravel(), minlength=n_boot * n_images).reshape(n_boot, n_images).astype(np.int64)


def percentile_ci(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap samples."""
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(samples, [tail, 100.0 - tail])
    return float(lo), float(hi)


def paired_p_value(run: np.ndarray, run_full: float, base: np.ndarray, base_full: float) -> float:
    """Two-sided paired bootstrap p-value of "run and baseline score the same".

    The resampled differences d_b, centred on the observed difference d, approximate its null
    distribution: p = (1 + #{|d_b - d| >= |d|}) / (B + 1). A run against itself (or against a run
    with identical scores) gives exactly 1.
    """
    observed = run_full - base_full
    diffs = (run - base) - observed
    extreme = int(np.count_nonzero(np.abs(diffs) >= abs(observed)))
    return (1 + extreme) / (len(run) + 1)
