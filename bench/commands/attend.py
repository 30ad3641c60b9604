"""`bench attend` (placeholder until implemented)."""

from __future__ import annotations

from bench.errors import BenchError


def attend() -> None:
    raise BenchError("bench attend: not implemented yet")
