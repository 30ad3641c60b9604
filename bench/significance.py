"""Two questions every comparison table raises, answered once here.

- `holm`: Holm's (1979) step-down adjusted p-values, for a family of comparisons made at once
  (a sweep against one baseline), so that "significant" keeps its 5% meaning for the family.
- `detectable_difference`: the smallest true difference a paired bootstrap test on this split
  would find at 5% (two-sided) with 80% power, from the spread of the bootstrap distribution of
  the paired differences (normal approximation: (z_{1-alpha/2} + z_{power}) x its SD).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
# scipy.stats.norm.ppf is ndtri (scipy 1.x); scipy.special imports in a third of the time.
from scipy.special import ndtri

ALPHA = 0.05
POWER = 0.80


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values in the order given: the k-th smallest (1-based) becomes
    max over j <= k of min(1, (m - j + 1) p_(j)). Rejecting where adjusted <= alpha is Holm's
    step-down procedure at level alpha."""
    p = np.asarray(p_values, dtype=np.float64)
    m = len(p)
    if m == 0:
        return []
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(scaled)
    return [float(x) for x in adjusted]


def detectable_difference(diffs: np.ndarray, alpha: float = ALPHA, power: float = POWER) -> float:
    """Minimum detectable difference of a paired test whose bootstrap differences are `diffs`."""
    spread = float(np.std(np.asarray(diffs, dtype=np.float64), ddof=1))
    return float((ndtri(1.0 - alpha / 2.0) + ndtri(power)) * spread)
