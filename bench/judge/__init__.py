"""The judge metric (CLAIR-style, Chan et al. 2023): a language model reads a candidate caption and
its references and answers a 0-100 score with a reason, as JSON. Off unless a judge setting is
given (`bench compare --judge NAME`, `bench meta --judge NAME`)."""

from bench.judge.judging import Judged, cache_file, cache_key, judge_rows, parse_answer
from bench.judge.spec import METRIC, JudgePrompt, JudgeSpec, judges_dir, load_judge

__all__ = [
    "METRIC",
    "JudgePrompt",
    "JudgeSpec",
    "Judged",
    "cache_file",
    "cache_key",
    "judge_rows",
    "judges_dir",
    "load_judge",
    "parse_answer",
]
