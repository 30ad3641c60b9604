"""What a section's p-values are worth: how many comparisons it makes, which wins survive Holm's
adjustment, and how large a difference its images could detect.

The family of comparisons is the leaderboard's: every run against the section's baseline on each
of the p-value metrics (the Holm-adjusted values are `RunSummary.p_holm`, filled by `section`). A win is a
run scoring above the baseline with p < 0.05; it survives when its Holm-adjusted p is < 0.05
too. Detectable differences come from the bootstrap distribution of each run's paired
differences with the baseline (`bench.significance.detectable_difference`), summarised per metric
as the median over the section's comparisons.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bench.report.markdown import cell
from bench.report.section import Section
from bench.scoring.metrics import p_value_keys
from bench.significance import ALPHA, POWER, detectable_difference


METHOD = (
    "Holm p: the same p-value adjusted by Holm's step-down method over every comparison of the "
    "section's leaderboard (each run against the baseline on CIDEr and CLIPScore, and CLAIR with a "
    "judge), so that the chance of any false win stays at 5%; a raw win (above the baseline, "
    "p < 0.05) reads (holds) or (lost) after the adjustment. Detectable difference: (1.96 + 0.84) x "
    "the standard deviation of the bootstrap paired differences, the smallest true difference this "
    "many images find at p < 0.05 four times in five."
)


@dataclass(frozen=True)
class Comparison:
    run: str
    metric: str
    diff: float  # run minus baseline
    p: float
    p_holm: float

    @property
    def win(self) -> bool:
        return self.diff > 0 and self.p < ALPHA

    @property
    def survives(self) -> bool:
        return self.win and self.p_holm < ALPHA


@dataclass(frozen=True)
class Detectable:
    metric: str
    n_images: int
    value: float  # median over the comparisons
    low: float  # smallest and largest over the comparisons
    high: float
    n_comparisons: int


def comparisons(section: Section) -> list[Comparison]:
    base = section.run(section.baseline)
    return [
        Comparison(r.name, m, r.values[m] - base.values[m], r.p[m], r.p_holm[m])
        for r in section.runs
        for m in p_value_keys()
        if m in r.p_holm and m in r.values and m in base.values
    ]


def detectable(section: Section) -> list[Detectable]:
    """Per metric with bootstrap samples, the minimum detectable difference (see module doc)."""
    boot = section.boot
    if boot is None:
        return []
    base = boot.samples.get(section.baseline, {})
    out = []
    for m in section.metrics_present():
        values = [
            detectable_difference(boot.samples[r.name][m] - base[m])
            for r in section.runs
            if r.name != section.baseline and m in boot.samples.get(r.name, {}) and m in base
        ]
        if values:
            out.append(Detectable(m, section.n_images, float(np.median(values)), min(values), max(values), len(values)))
    return out


def detectable_line(d: Detectable) -> str:
    """'With N images, CIDEr differences under D are not detectable' (the terminal prints it too)."""
    return f"With {d.n_images:,} images, {d.metric} differences under {d.value:.4f} are not detectable"


def summary_lines(section: Section) -> tuple[str, ...]:
    """For the terminal: wins that survive the adjustment, and the CIDEr detectable difference."""
    found = comparisons(section)
    if not found:
        return ()
    wins = [c for c in found if c.win]
    lines = [f"{len(found)} comparisons; wins at p < {ALPHA:g}: {len(wins)}, after Holm: {sum(c.survives for c in wins)}"]
    lines += [detectable_line(d) for d in detectable(section) if d.metric in p_value_keys()]
    return tuple(lines)


def markdown(section: Section) -> str:
    """The section's paragraph on many comparisons and detectable differences."""
    found = comparisons(section)
    lines = ["### How far to trust the differences\n"]
    if not found:
        lines.append("One run only: no comparison, so no adjustment and no detectable difference.\n")
        return "\n".join(lines)
    wins = [c for c in found if c.win]
    kept = [c for c in wins if c.survives]
    lines.append(
        f"{len(found)} comparisons against the baseline in this section ({len(found) // max(1, len({c.metric for c in found}))} "
        f"runs x {', '.join(sorted({c.metric for c in found}, key=p_value_keys().index))}); Holm-adjusted p-values "
        f"(columns \"Holm p\") keep the chance of any false win at {ALPHA:.0%}. "
        f"Wins (above the baseline, p < {ALPHA:g}): {len(wins)}; surviving the adjustment: {len(kept)}"
        + (": " + ", ".join(f"{cell(c.run, 60)} on {c.metric}" for c in kept) if kept else "")
        + ".\n"
    )
    lost = [c for c in wins if not c.survives]
    if lost:
        lines.append("Not surviving it: " + ", ".join(f"{cell(c.run, 60)} on {c.metric}" for c in lost) + ".\n")
    for d in detectable(section):
        spread = "" if d.n_comparisons == 1 else f"; median of {d.n_comparisons} comparisons, {d.low:.4f} to {d.high:.4f}"
        lines.append(f"- {cell(detectable_line(d), None)} ({POWER:.0%} power, two-sided {ALPHA:.0%} test{spread}).")
    return "\n".join(lines) + "\n"


def payload(section: Section) -> dict[str, Any]:
    found = comparisons(section)
    return {
        "family": "every run against the baseline on " + ", ".join(p_value_keys()),
        "n_comparisons": len(found),
        "alpha": ALPHA,
        "comparisons": [{**asdict(c), "win": c.win, "survives": c.survives} for c in found],
        "detectable": {"power": POWER, "alpha": ALPHA, "metrics": [asdict(d) for d in detectable(section)]},
    }
