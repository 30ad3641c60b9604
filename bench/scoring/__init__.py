"""Reference-exact caption scoring: pycocoevalcap metrics and CLIPScore/RefCLIPScore.

    metrics.py       the metric table (MetricSpec rows), read by everything that names a metric
    scorer.py        Scorer: every metric of one prediction set in one call
    text_metrics.py  PTB tokenization and the pycocoevalcap metrics; clipscore.py: CLIPScore
    resample.py      the bootstrap's numpy primitives (shared by the report and tracking)

Only light modules are re-exported: settings import the metric table, so importing this package
must not load numpy, PIL or torch (the Scorer is `bench.scoring.scorer.Scorer`).
"""

from bench.scoring.metrics import MetricSpec, parse_metrics
from bench.scoring.predictions import read_predictions
from bench.scoring.text_metrics import JAVA_MISSING, tokenize

__all__ = ["JAVA_MISSING", "MetricSpec", "parse_metrics", "read_predictions", "tokenize"]
