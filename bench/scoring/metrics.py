"""The metric table: every fact about a metric in one row (no torch, no scorer imports).

A row is one output key (BLEU-4, CIDEr, ...). `family` is the name `--metrics` and
`scoring.metrics` take; one family is computed by one class (`compute`, "module:Class", loaded
only when scoring), which may fill several keys (bleu: BLEU-1..4; clipscore: CLIPScore and
RefCLIPScore). The scorer, results.json, the bootstrap, the report tables, tracking and the
settings validation all read this table, so adding a metric is its compute class plus one row.

`aggregate` says how the corpus value comes from per-image statistics, which is how the report's
bootstrap recomputes it on each resample:

    mean    the corpus value is the mean of the per-image scores (ROUGE-L, CLIPScore, ...)
    bleu    from the summed clipped n-gram counts and lengths (bench.report.cider_tables)
    cider   CIDEr-D with document frequencies recomputed on every resample
    meteor  from the summed per-image statistics of the METEOR 1.5 jar (bench.report.meteor)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bench.errors import BenchError

Aggregate = Literal["mean", "bleu", "cider", "meteor"]


@dataclass(frozen=True)
class MetricSpec:
    key: str  # the key in metrics.json / results.json and the report's column header
    family: str  # the --metrics / scoring.metrics name whose class computes it
    compute: str  # "module:Class" of that class
    display: str  # how the terminal and docs name it
    scale: str  # the range it is reported on
    aggregate: Aggregate
    higher_is_better: bool = True
    needs_images: bool = False  # computed only when the images are given (bench score --images)
    default: bool = True  # scored when a setting or `bench score` names no metrics
    headline: int | None = None  # position among the report's metric columns; None: not shown
    p_value: bool = False  # the report shows its paired p-value against the baseline
    # Recomputed by the report from the tokenized captions when a run did not record it.
    recomputable: bool = False


_TEXT = "bench.scoring.text_metrics"
_CLIP = "bench.scoring.clipscore:ClipScorer"

# Row order is the output key order: the pycocoevalcap metrics, then the CLIP ones.
METRICS: tuple[MetricSpec, ...] = (
    *(MetricSpec(f"BLEU-{n}", "bleu", f"{_TEXT}:BleuMetric", f"BLEU-{n}", "0-1", "bleu", recomputable=True,
                 headline=4 if n == 4 else None) for n in (1, 2, 3, 4)),
    MetricSpec("METEOR", "meteor", f"{_TEXT}:MeteorMetric", "METEOR 1.5", "0-1", "meteor", headline=5),
    MetricSpec("ROUGE-L", "rouge", f"{_TEXT}:RougeMetric", "ROUGE-L", "0-1", "mean", headline=6, recomputable=True),
    MetricSpec("CIDEr", "cider", f"{_TEXT}:CiderMetric", "CIDEr-D", "0-10", "cider", headline=1, p_value=True,
               recomputable=True),
    MetricSpec("CLIPScore", "clipscore", _CLIP, "CLIPScore", "0-2.5", "mean", needs_images=True, headline=2,
               p_value=True),
    MetricSpec("RefCLIPScore", "clipscore", _CLIP, "RefCLIPScore", "0-2.5", "mean", needs_images=True, headline=3),
)


# Functions, not constants: each reads METRICS when called, so a test that adds a row (a dummy
# metric) sees it everywhere.
def metric_specs() -> tuple[MetricSpec, ...]:
    return METRICS


def metric_keys() -> tuple[str, ...]:
    """Every output key, in output order."""
    return tuple(m.key for m in METRICS)


def spec(key: str) -> MetricSpec:
    for m in METRICS:
        if m.key == key:
            return m
    raise KeyError(key)


def families() -> tuple[str, ...]:
    """The metric names --metrics and scoring.metrics accept, in canonical order."""
    return tuple(dict.fromkeys(m.family for m in METRICS))


def default_families() -> tuple[str, ...]:
    return tuple(dict.fromkeys(m.family for m in METRICS if m.default))


def family_keys(family: str) -> tuple[str, ...]:
    return tuple(m.key for m in METRICS if m.family == family)


def family_compute(family: str) -> str:
    return next(m.compute for m in METRICS if m.family == family)


def image_families() -> tuple[str, ...]:
    return tuple(dict.fromkeys(m.family for m in METRICS if m.needs_images))


def keys_aggregated(aggregate: Aggregate) -> tuple[str, ...]:
    return tuple(m.key for m in METRICS if m.aggregate == aggregate)


def headline_keys() -> tuple[str, ...]:
    """The report's metric columns, in order."""
    return tuple(m.key for m in sorted((m for m in METRICS if m.headline is not None), key=lambda m: m.headline))


def p_value_keys() -> tuple[str, ...]:
    return tuple(m.key for m in sorted((m for m in METRICS if m.p_value), key=lambda m: m.headline or 0))


def recomputable_keys() -> tuple[str, ...]:
    return tuple(m.key for m in METRICS if m.recomputable)


def parse_metrics(spec_: str | tuple[str, ...] | list[str], flag: str = "--metrics") -> tuple[str, ...]:
    """"bleu,cider" or a sequence -> validated metric families in canonical order."""
    known = families()
    names = [m.strip().lower() for m in (spec_.split(",") if isinstance(spec_, str) else spec_) if m.strip()]
    unknown = [m for m in names if m not in known]
    if unknown:
        raise BenchError(f"{flag}: unknown metric {unknown[0]!r}; choose from {', '.join(known)}")
    if not names:
        raise BenchError(f"{flag}: no metric given; choose from {', '.join(known)}")
    return tuple(m for m in known if m in names)
