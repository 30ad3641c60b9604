"""`bench run` (placeholder until implemented)."""

from __future__ import annotations

from bench.errors import BenchError


def run() -> None:
    raise BenchError("bench run: not implemented yet")
