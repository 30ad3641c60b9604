"""The scorers of one command: each CLIP model and METEOR JVM loads once per process."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class ScorerPool:
    """`bench run --group` scores many runs with the same scoring config; without the pool every
    run would load CLIP and start the JVM again. Close it (or use it as a context manager) when
    the command ends.
    """

    def __init__(self) -> None:
        self._scorers: dict[tuple[Any, ...], Any] = {}

    def get(self, metrics: Sequence[str], clip_model: str, device: str, clip_batch_size: int) -> Any:
        from bench.scoring.scorer import Scorer

        key = (tuple(metrics), clip_model, device, clip_batch_size)
        if key not in self._scorers:
            self._scorers[key] = Scorer(
                metrics=metrics, clip_model=clip_model, device=device, clip_batch_size=clip_batch_size
            )
        return self._scorers[key]

    def close(self) -> None:
        scorers, self._scorers = self._scorers, {}
        for scorer in scorers.values():
            scorer.close()

    def __enter__(self) -> "ScorerPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
