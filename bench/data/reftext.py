"""Reading annotation text and checking its fields: the helpers every reference format shares.

Every problem is a one-line BenchError naming the file and the field, line or index at fault.
"""

from __future__ import annotations

import codecs
import json
from pathlib import Path
from typing import Any

from bench.data.ids import has_image_extension
from bench.data.types import RefEntry
from bench.errors import BenchError


def field_error(path: Path, where: str, message: str) -> BenchError:
    return BenchError(f"{path}{' ' + where if where else ''}: {message}")


# --- raw reading -------------------------------------------------------------------------------

def read_text(path: Path) -> str:
    """UTF-8 text of a file (a BOM is allowed); errors name the byte offset and line."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BenchError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise BenchError(f"{path}: is a folder, expected a references file") from None
    except OSError as exc:
        raise BenchError(f"{path}: cannot read ({exc.strerror or exc})") from None
    offset = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[offset:].decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[offset : offset + exc.start].count(b"\n") + 1
        raise BenchError(f"{path} line {line}: not UTF-8 text (byte {offset + exc.start})") from None


def parse_json(path: Path, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise field_error(path, f"line {exc.lineno} column {exc.colno}", f"invalid JSON ({exc.msg})") from None
    except RecursionError:
        raise field_error(path, "", "invalid JSON (nested too deeply)") from None


# --- small checks shared by the formats --------------------------------------------------------

def ref_string(path: Path, where: str, field: str, value: Any) -> str:
    if not isinstance(value, str):
        raise field_error(path, where, f"field '{field}' must be a string, got {type(value).__name__}")
    text = value.strip()
    if not text:
        raise field_error(path, where, f"field '{field}' is empty")
    return text


def ref_list(path: Path, where: str, field: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise field_error(path, where, f"field '{field}' must be a list of reference strings, got {type(value).__name__}")
    if not value:
        raise field_error(path, where, f"field '{field}' is an empty caption list")
    return tuple(ref_string(path, where, f"{field}[{k}]", item) for k, item in enumerate(value))


def key_string(path: Path, where: str, field: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise field_error(path, where, f"field '{field}' must be a string or an integer, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise field_error(path, where, f"field '{field}' is empty")
    return text


def file_name_or_none(key: str) -> str | None:
    """A key that names a file (image extension or a folder in it), kept to find the image."""
    return key if has_image_extension(key) or "/" in key or "\\" in key else None


class EntryCollector:
    """Entries in first-seen order, refusing two different keys that normalise to one id."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, RefEntry] = {}
        self.origin: dict[str, str] = {}  # image_id -> the raw key that introduced it

    def add(self, where: str, raw_key: str, entry: RefEntry, *, merge: bool = False) -> None:
        old = self.entries.get(entry.image_id)
        if old is None:
            self.entries[entry.image_id] = entry
            self.origin[entry.image_id] = raw_key
            return
        if not merge or self.origin[entry.image_id] != raw_key:
            raise field_error(self.path, where, f"duplicate image id {entry.image_id!r} (also given as {self.origin[entry.image_id]!r})")
        self.entries[entry.image_id] = RefEntry(old.image_id, old.file_name, old.refs + entry.refs, old.split)

    def result(self) -> list[RefEntry]:
        if not self.entries:
            raise field_error(self.path, "", "no images with references found")
        return list(self.entries.values())
