"""Reading caption predictions. (References are read by `bench.data.read_references`.)

Accepted layouts for a predictions file:
- a JSON map ``{image_id: caption}``;
- a COCO results list ``[{"image_id": ..., "caption": ...}]``, or JSONL of those objects (what
  ``bench run`` writes; extra keys such as ``_crc`` are ignored);
- the magic-flickr30k layout: ``[{"image_name", "captions": [refs], "prediction"}]``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.errors import BenchError


def _read_text(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise BenchError(f"{path}: file not found") from exc
    except IsADirectoryError as exc:
        raise BenchError(f"{path}: is a directory, expected a predictions file") from exc
    except UnicodeDecodeError as exc:
        raise BenchError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    except OSError as exc:
        raise BenchError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if not text.strip():
        raise BenchError(f"{path}: file is empty")
    return text.lstrip("\ufeff")


def _json_error(path: Path, exc: json.JSONDecodeError, line_offset: int = 0) -> BenchError:
    return BenchError(f"{path}: invalid JSON at line {exc.lineno + line_offset} column {exc.colno}: {exc.msg}")


def load_json_or_jsonl(path: Path) -> Any:
    """The parsed JSON document, or the list of objects of a JSONL file."""
    text = _read_text(path)
    if path.suffix.lower() != ".jsonl":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            first = text.lstrip().split("\n", 1)[0]
            if not _is_json_object(first):
                raise _json_error(path, exc) from exc
    items: list[Any] = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise BenchError(f"{path} line {lineno}: invalid JSON at column {exc.colno}: {exc.msg}") from exc
    return items


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False


def _as_id(path: Path, where: str, value: Any, key: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise BenchError(f"{path} {where}: field '{key}' must be a string or integer id, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise BenchError(f"{path} {where}: field '{key}' is empty")
    return text


def _is_magic(items: list[Any]) -> bool:
    return bool(items) and isinstance(items[0], dict) and "image_name" in items[0] and "prediction" in items[0]


def read_predictions(path: str | Path) -> dict[str, str]:
    """{image_id: caption} in file order. Empty captions are kept (they score 0)."""
    path = Path(path)
    data = load_json_or_jsonl(path)
    preds: dict[str, str] = {}
    if isinstance(data, dict):
        if not data:
            raise BenchError(f"{path}: no predictions (empty JSON object)")
        for key, caption in data.items():
            if not isinstance(caption, str):
                raise BenchError(
                    f"{path}: prediction for image {key!r} is not a string (got {type(caption).__name__})"
                )
            preds[_as_id(path, f"key {key!r}", key, "image_id")] = caption
        return preds
    if not isinstance(data, list):
        raise BenchError(
            f"{path}: expected a JSON object {{image_id: caption}} or a list of "
            f"{{\"image_id\", \"caption\"}} objects, got {type(data).__name__}"
        )
    if not data:
        raise BenchError(f"{path}: no predictions (empty list)")
    id_key, cap_key = ("image_name", "prediction") if _is_magic(data) else ("image_id", "caption")
    first_seen: dict[str, int] = {}
    for i, item in enumerate(data, start=1):
        where = f"item {i}"
        if not isinstance(item, dict):
            raise BenchError(f"{path} {where}: expected an object with '{id_key}' and '{cap_key}'")
        for key in (id_key, cap_key):
            if key not in item:
                raise BenchError(f"{path} {where}: missing field '{key}'")
        image_id = _as_id(path, where, item[id_key], id_key)
        caption = item[cap_key]
        if not isinstance(caption, str):
            raise BenchError(
                f"{path} {where}: prediction for image {image_id!r} is not a string (got {type(caption).__name__})"
            )
        if image_id in first_seen:
            raise BenchError(f"{path} {where}: duplicate image id {image_id!r} (first at item {first_seen[image_id]})")
        first_seen[image_id] = i
        preds[image_id] = caption
    return preds
