"""`bench score` (placeholder until implemented)."""

from __future__ import annotations

from bench.errors import BenchError


def score() -> None:
    raise BenchError("bench score: not implemented yet")
