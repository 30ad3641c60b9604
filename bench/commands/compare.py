"""`bench compare` (placeholder until implemented)."""

from __future__ import annotations

from bench.errors import BenchError


def compare() -> None:
    raise BenchError("bench compare: not implemented yet")
