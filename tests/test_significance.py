"""Holm's adjustment against an independent implementation and a simulated null sweep; the
minimum detectable difference checked by simulated splits (about 80% of them find p < 0.05)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.report.bootstrap import paired_p_value, resample_counts
from bench.significance import ALPHA, detectable_difference, holm


def holm_by_definition(p: list[float]) -> list[float]:
    """Holm (1979) written from its definition with explicit ranks (no numpy)."""
    m = len(p)
    ranked = sorted(range(m), key=lambda i: (p[i], i))
    rank = {i: k for k, i in enumerate(ranked)}  # 0-based
    out = []
    for i in range(m):
        out.append(max(min(1.0, (m - k) * p[ranked[k]]) for k in range(rank[i] + 1)))
    return out


def holm_rejections(p: list[float], alpha: float) -> set[int]:
    """Holm's step-down procedure: reject in increasing order while p_(k) <= alpha / (m - k)."""
    m, rejected = len(p), set()
    for k, i in enumerate(sorted(range(m), key=lambda i: (p[i], i))):
        if p[i] > alpha / (m - k):
            break
        rejected.add(i)
    return rejected


def test_holm_equals_an_independent_implementation_on_random_p_values() -> None:
    rng = np.random.default_rng(0)
    for trial in range(300):
        m = int(rng.integers(1, 25))
        p = list(rng.uniform(0, 1, m) ** rng.uniform(0.5, 4))  # many small ones too
        if trial % 10 == 0:
            p[: m // 2] = [p[0]] * (m // 2)  # ties
        got = holm(p)
        assert got == pytest.approx(holm_by_definition(p), abs=1e-12)
        assert {i for i, a in enumerate(got) if a <= ALPHA} == holm_rejections(p, ALPHA)
        assert all(a >= raw for a, raw in zip(got, p))
    assert holm([]) == []


def _null_sweep(n_sweeps: int, n_runs: int, n_images: int, n_boot: int, seed: int) -> tuple[float, float]:
    """Share of sweeps with at least one false win, raw and Holm-adjusted: every run is the
    baseline's images with fresh noise of the same size (no run is truly better)."""
    rng = np.random.default_rng(seed)
    raw_any = holm_any = 0
    for s in range(n_sweeps):
        quality = rng.beta(2, 5, n_images)  # how hard each image is, shared by every run
        runs = quality + rng.normal(0, 0.15, (n_runs + 1, n_images))  # row 0: the baseline
        counts = resample_counts(n_images, n_boot, seed=seed * 1000 + s).astype(np.float64)
        samples = counts @ runs.T / n_images  # (n_boot, runs)
        full = runs.mean(axis=1)
        p = [paired_p_value(samples[:, k], full[k], samples[:, 0], full[0]) for k in range(1, n_runs + 1)]
        wins = [full[k + 1] > full[0] for k in range(n_runs)]
        raw_any += any(w and x < ALPHA for w, x in zip(wins, p))
        holm_any += any(w and x < ALPHA for w, x in zip(wins, holm(p)))
    return raw_any / n_sweeps, holm_any / n_sweeps


def test_null_sweep_holm_keeps_false_wins_at_or_under_5_percent() -> None:
    raw, adjusted = _null_sweep(n_sweeps=300, n_runs=20, n_images=100, n_boot=400, seed=1)
    assert adjusted <= 0.05, adjusted
    assert raw > 0.1, raw  # without the adjustment a 20-run sweep "wins" by chance most of the time


@pytest.mark.parametrize("n_images", [60, 200])
def test_detectable_difference_has_80_percent_power(n_images: int) -> None:
    rng = np.random.default_rng(n_images)
    n_boot = 500

    def split(delta: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        r = np.random.default_rng(seed)
        base = r.gamma(2.0, 0.3, n_images)  # skewed, like per-image CIDEr
        run = base + delta + r.standard_t(5, n_images) * 0.25
        return base, run

    # The figure a report prints, from a split's bootstrap of paired differences; the median over
    # 15 pilot splits, so that one pilot's luck does not decide the test.
    pilots = []
    for k in range(15):
        base, run = split(0.0, seed=10_000 + k)
        counts = resample_counts(n_images, n_boot, seed=k).astype(np.float64)
        pilots.append(detectable_difference(counts @ (run - base) / n_images))
    mdd = float(np.median(pilots))

    hits, n_splits = 0, 400
    for s in range(n_splits):
        base, run = split(mdd, seed=s)
        c = resample_counts(n_images, n_boot, seed=int(rng.integers(1 << 30))).astype(np.float64)
        p = paired_p_value(c @ run / n_images, run.mean(), c @ base / n_images, base.mean())
        hits += p < ALPHA
    print(f"power at the detectable difference, {n_images} images: {hits / n_splits:.3f}")
    assert 0.72 <= hits / n_splits <= 0.88, hits / n_splits


def test_the_demo_verdict_prints_the_detectable_difference_beside_it() -> None:
    from bench.demo.verdict import verdict_from_report

    runs = [{"run": f"{s}/{b}", "kind": k, "setting": s, "backend": b, "metrics": {"CIDEr": {"value": v, "lo": v - 0.1, "hi": v + 0.1}}}
            for s, b, k, v in (("z", "llava", "zero-shot", 0.3), ("a", "x", "lora", 0.8), ("b", "x", "lora", 0.9))]
    section = {"runs": runs, "comparisons": {"detectable": {"power": 0.8, "metrics": [
        {"metric": "CIDEr", "n_images": 100, "value": 0.1234}, {"metric": "BLEU-4", "n_images": 100, "value": 0.01}]}}}
    verdict = verdict_from_report({"sections": [section]})
    assert verdict.caveats == ("With 100 images, CIDEr differences under 0.1234 are not detectable (80% power)",)
    assert len(verdict.lines) == 2 and all(": " in line for line in verdict.lines)  # the claims, unchanged
    del section["comparisons"]  # a report from before this figure existed: the verdict as it was
    assert verdict_from_report({"sections": [section]}).caveats == ()
