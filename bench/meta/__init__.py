"""Meta-evaluation against human judgments (`bench meta`): the benchmarks' readers (`sets`), the
published protocols (`protocol`) and the report (`report`)."""

from bench.meta.protocol import META_METRICS, MetaResult, MetaRow, correlation, evaluate, pair_choice, score_rows
from bench.meta.report import write_meta_report
from bench.meta.sets import BENCHMARKS, Benchmark, HumanSet, benchmark

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "HumanSet",
    "META_METRICS",
    "MetaResult",
    "MetaRow",
    "benchmark",
    "correlation",
    "evaluate",
    "pair_choice",
    "score_rows",
    "write_meta_report",
]
