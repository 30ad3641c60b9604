"""One exception type for every user-facing failure.

The CLI catches `BenchError` and prints its message as one line with a non-zero exit, never a
traceback. Messages name the file and the field at fault, so raise it as close to the bad input as
possible, e.g. ``BenchError("settings/x.toml: lora.r must be >= 1, got 0")``.
"""

from __future__ import annotations


class BenchError(Exception):
    """A problem with the user's input or environment, reported in one line."""

    exit_code: int = 2

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class RunLockedError(BenchError):
    """Another process holds the run folder."""

    exit_code = 3
