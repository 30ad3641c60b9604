"""`bench run --shard I/N`: the I-th of N deterministic shares of the planned runs.

A sweep split over a job array (SLURM `--array=1-N`, or any scheduler) runs each planned run in
exactly one shard: runs are dealt round-robin in plan order, which depends only on the settings
and flags, so every shard computes the same plan and takes its own share. Two shards that did
overlap would still be harmless: a run folder is locked while it runs, and a finished run is a
cache hit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from bench.errors import BenchError

T = TypeVar("T")


def parse_shard(spec: str) -> tuple[int, int]:
    """"I/N" -> (I, N), 1 <= I <= N; a one-line error naming the flag otherwise."""
    index, sep, count = spec.partition("/")
    if not sep or not index.strip().isdigit() or not count.strip().isdigit():
        raise BenchError(f"--shard {spec}: must be I/N, e.g. --shard 2/4 (the 2nd of 4 shares)")
    i, n = int(index), int(count)
    if n < 1 or not 1 <= i <= n:
        raise BenchError(f"--shard {spec}: I must be between 1 and N (got {i} of {n})")
    return i, n


def shard_share(items: Sequence[T], index: int, count: int) -> list[T]:
    """Items index-1, index-1+count, ... : every item in exactly one of the `count` shares."""
    return list(items[index - 1 :: count])
