"""Reference-exact caption scoring: pycocoevalcap metrics and CLIPScore/RefCLIPScore.

Heavy libraries (torch, transformers) are imported only when CLIP scores are computed.
"""

from bench.scoring.clipscore import CLIP_PREFIX, CLIP_WEIGHT, DEFAULT_CLIP_MODEL, ClipScorer
from bench.scoring.predictions import read_predictions
from bench.scoring.scorer import ALL_METRICS, METRIC_KEYS, TEXT_METRICS, Scorer, ScoreResult, parse_metrics
from bench.scoring.text_metrics import JAVA_MISSING, require_java, tokenize

__all__ = [
    "ALL_METRICS",
    "CLIP_PREFIX",
    "CLIP_WEIGHT",
    "ClipScorer",
    "DEFAULT_CLIP_MODEL",
    "JAVA_MISSING",
    "METRIC_KEYS",
    "ScoreResult",
    "Scorer",
    "TEXT_METRICS",
    "parse_metrics",
    "read_predictions",
    "require_java",
    "tokenize",
]
