"""Reference-exact caption scoring: pycocoevalcap metrics and CLIPScore/RefCLIPScore.

The metric table is `bench.scoring.metrics`; heavy libraries (torch, transformers) are imported
only when CLIP scores are computed.
"""

from bench.scoring.metrics import MetricSpec, parse_metrics
from bench.scoring.predictions import read_predictions
from bench.scoring.scorer import Scorer, ScoreResult
from bench.scoring.text_metrics import JAVA_MISSING, tokenize

__all__ = ["JAVA_MISSING", "MetricSpec", "ScoreResult", "Scorer", "parse_metrics", "read_predictions", "tokenize"]
