"""One exception type for every user-facing failure.

The CLI catches `BenchError` and prints its message as one line with a non-zero exit, never a
traceback. Messages name the file and the field at fault, so raise it as close to the bad input as
possible, e.g. ``BenchError("settings/x.toml: lora.r must be >= 1, got 0")``.
"""

from __future__ import annotations


def where_it_belongs(key: str, prefix: str, levels: dict[str, tuple[str, ...]]) -> str | None:
    """For an unknown key of a TOML file at level `prefix` ("" the top, "hf." a table): "; it
    belongs under [hf] (hf.path)" when another level of that file (`levels`: level -> its
    keys) has the key, else None. Settings and dataset files both word it so."""
    here = "models.<backend>." if prefix.startswith("models.") and prefix.count(".") == 2 else prefix
    found = [lvl for lvl, keys in levels.items() if lvl != here and key in keys]
    if not found:
        return None
    places = [f"at the top level ({key})" if not lvl else f"under [{lvl[:-1]}] ({lvl}{key})" for lvl in found]
    return f"; it belongs {' or '.join(places)}"


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
