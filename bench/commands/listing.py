"""`bench listing` (placeholder until implemented)."""

from __future__ import annotations

from bench.errors import BenchError


def list_() -> None:
    raise BenchError("bench listing: not implemented yet")
