"""`bench demo` (placeholder until implemented)."""

from __future__ import annotations

from bench.errors import BenchError


def demo() -> None:
    raise BenchError("bench demo: not implemented yet")
