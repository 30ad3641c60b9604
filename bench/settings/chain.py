"""The `extends` chain of a setting file, read and deep-merged with the file that set each key."""

from __future__ import annotations

import difflib
import os
import tomllib
from pathlib import Path
from typing import Any

from bench import paths
from bench.errors import BenchError
from bench.settings.schema import BASE_NAME, Provenance, check_file, file_error, file_label


def _deep_merge(
    into: dict[str, Any], new: dict[str, Any], prov: Provenance, label: str, prefix: str = ""
) -> None:
    for key, value in new.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            prov[dotted] = label  # the table itself: the last file that has it (even empty)
            _deep_merge(into[key], value, prov, label, f"{dotted}.")
        else:
            into[key] = _copy(value)
            _mark(prov, dotted, value, label)


def _copy(value: Any) -> Any:
    return {k: _copy(v) for k, v in value.items()} if isinstance(value, dict) else value


def _mark(prov: Provenance, dotted: str, value: Any, label: str) -> None:
    prov[dotted] = label
    if isinstance(value, dict):
        for k, v in value.items():
            _mark(prov, f"{dotted}.{k}", v, label)


def find_setting_file(name_or_path: str | Path) -> Path:
    text = str(name_or_path)
    candidate = Path(text).expanduser()
    if text.endswith(".toml") or os.sep in text:
        if candidate.is_file():
            return candidate
        raise BenchError(f"{text}: setting file not found")
    path = paths.settings_dir() / f"{text}.toml"
    if path.is_file():
        return path
    names = [p.stem for p in sorted(paths.settings_dir().glob("*.toml"))]
    close = difflib.get_close_matches(text, names, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else f" (known: {', '.join(names) or 'none'})"
    raise BenchError(f"settings/{text}.toml: no such setting{hint}")


def _read_toml(path: Path) -> dict[str, Any]:
    label = file_label(path)
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise file_error(label, f"invalid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise file_error(label, f"not UTF-8 text (byte {exc.start})") from exc
    except OSError as exc:
        raise file_error(label, f"cannot read ({exc.strerror or exc})") from exc


def _is_base(path: Path) -> bool:
    return path.resolve() == (paths.settings_dir() / f"{BASE_NAME}.toml").resolve()


def read_chain(path: Path) -> list[tuple[Path, dict[str, Any]]]:
    """The files from the root ancestor down to `path`, each validated."""
    chain: list[tuple[Path, dict[str, Any]]] = []
    seen: list[Path] = []
    current: Path | None = path
    while current is not None:
        resolved = current.resolve()
        if resolved in seen:
            cycle = " -> ".join(file_label(p) for p in [*seen, resolved])
            raise file_error(file_label(path), f"extends cycle: {cycle}")
        seen.append(resolved)
        checked = check_file(_read_toml(current), file_label(current), current.parent)
        chain.append((current, checked))
        parent = checked.get("extends")
        if parent is None:
            current = None if _is_base(current) else paths.settings_dir() / f"{BASE_NAME}.toml"
            if current is not None and not current.is_file():
                raise file_error(file_label(path), f"extends the base setting, but {file_label(current)} is missing")
        else:
            parent_path = Path(paths.expand(parent))
            if parent.endswith(".toml") or os.sep in parent:
                current = parent_path if parent_path.is_absolute() else current.parent / parent_path
            else:
                current = paths.settings_dir() / f"{parent}.toml"
            if not current.is_file():
                raise file_error(file_label(chain[-1][0]), f"extends: setting {parent!r} not found ({file_label(current)})")
    chain.reverse()
    return chain


def merge_chain(chain: list[tuple[Path, dict[str, Any]]]) -> tuple[dict[str, Any], Provenance]:
    merged: dict[str, Any] = {}
    prov: Provenance = {}
    for path, table in chain:
        _deep_merge(merged, {k: v for k, v in table.items() if k != "extends"}, prov, file_label(path))
    return merged, prov
