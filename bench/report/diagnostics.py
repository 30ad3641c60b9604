"""Per-run degeneration statistics of the captions, and cost columns from results.json.

Definitions (on PTB-tokenized captions: lowercased, punctuation removed, as they are scored):
* length: number of words of a caption; `mean_length` is the mean over captions.
* repeated: a caption DEGENERATES if some word 3-gram occurs twice or more in it ("a dog on a
  dog on a"), or a word occurs 3+ times in a row ("tropical tropical tropical");
  `repeated_share` is the share of captions that do.
* distinct-1 / distinct-2 (Li et al. 2016): distinct word unigrams / bigrams across all captions
  of the run divided by the total number of unigrams / bigrams (bigrams within a caption).
* vocab_size: number of distinct words across all captions.
* empty_share: share of captions with no word after tokenization (empty, blank or punctuation).
* truncated_share: share of captions that stopped at `generation.max_new_tokens` without an end
  token (fragments), from the run's `n_truncated`; None where the run did not record it
  (external systems, runs made before bench counted it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

VERSION = 1  # of the definitions above: bump when one changes (bench.report.run_cache keys on it)
REPEAT_NGRAM = 3
REPEAT_RUN = 3


def is_degenerate(words: Sequence[str], n: int = REPEAT_NGRAM, run: int = REPEAT_RUN) -> bool:
    """True if a word n-gram repeats or a word occurs `run`+ times in a row."""
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if len(set(grams)) < len(grams):
        return True
    streak = 1
    for prev, word in zip(words, words[1:]):
        streak = streak + 1 if word == prev else 1
        if streak >= run:
            return True
    return False


@dataclass(frozen=True)
class Degeneration:
    n_captions: int
    mean_length: float
    repeated_share: float
    distinct_1: float
    distinct_2: float
    vocab_size: int
    empty_share: float
    truncated_share: float | None = None


def recorded_count(results: Any, key: str) -> int | None:
    """An integer count a run's results.json holds under `key` (None when absent or not a count)."""
    value = results.get(key) if isinstance(results, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def degeneration(tokenized: Sequence[str], n_truncated: int | None = None) -> Degeneration:
    """Statistics of a run's tokenized captions (one string per image); `n_truncated` from its
    results.json."""
    captions = [t.split() for t in tokenized]
    n = len(captions)
    if n == 0:
        return Degeneration(0, 0.0, 0.0, 0.0, 0.0, 0, 0.0)
    unigrams = [w for words in captions for w in words]
    bigrams = [tuple(words[i : i + 2]) for words in captions for i in range(len(words) - 1)]
    return Degeneration(
        n_captions=n,
        mean_length=len(unigrams) / n,
        repeated_share=sum(is_degenerate(words) for words in captions) / n,
        distinct_1=len(set(unigrams)) / len(unigrams) if unigrams else 0.0,
        distinct_2=len(set(bigrams)) / len(bigrams) if bigrams else 0.0,
        vocab_size=len(set(unigrams)),
        empty_share=sum(not words for words in captions) / n,
        truncated_share=None if n_truncated is None else n_truncated / n,
    )


@dataclass(frozen=True)
class Cost:
    trainable: int | None
    total: int | None
    trainable_pct: float | None
    train_s: float | None
    generate_s: float | None
    images_per_s: float | None
    peak_rss_mb: float | None
    peak_cuda_mb: float | None
    # results.json's cost block (bench.cost): endpoint tokens per image and $ per 1,000 captions
    tokens_per_image: float | None = None
    usd_per_1000: float | None = None


def _num(obj: Any, key: str) -> float | None:
    if not isinstance(obj, dict):
        return None
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def cost(results: dict[str, Any]) -> Cost:
    """Cost columns of a run from its results.json (missing or null values stay None).

    An external run's timings and memory are those of `bench score`, not of the system, and a
    zero-shot run trains nothing: those columns stay None rather than showing a misleading 0.
    """
    kind = results.get("kind")
    if kind == "external":
        return Cost(None, None, None, None, None, None, None, None)
    params, timings, memory = results.get("params"), results.get("timings"), results.get("memory")
    if kind != "lora":
        params = None
        timings = {k: v for k, v in timings.items() if k != "train_s"} if isinstance(timings, dict) else timings
    trainable, total = _num(params, "trainable"), _num(params, "total")
    pct = _num(params, "trainable_pct")
    if pct is None and trainable is not None and total:
        pct = 100.0 * trainable / total
    return Cost(
        trainable=None if trainable is None else int(trainable),
        total=None if total is None else int(total),
        trainable_pct=pct,
        train_s=_num(timings, "train_s"),
        generate_s=_num(timings, "generate_s"),
        images_per_s=_num(timings, "images_per_s"),
        peak_rss_mb=_num(memory, "peak_rss_mb"),
        peak_cuda_mb=_num(memory, "peak_cuda_mb"),
        tokens_per_image=_num(results.get("cost"), "tokens_per_image"),
        usd_per_1000=_num(results.get("cost"), "usd_per_1000_captions"),
    )
