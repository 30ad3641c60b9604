"""Reading reference captions from the common captioning formats.

Formats (`fmt`), all auto-detected from the extension and the structure:

- ``coco``: COCO captions annotations, ``{"images": [{"id", "file_name"}], "annotations":
  [{"image_id", "caption"}]}``; image_id = str(coco id).
- ``karpathy``: Karpathy-split JSON, ``{"images": [{"filename", "filepath"?, "split",
  "sentences": [{"raw"}], "cocoid"?}]}``; image_id = str(cocoid), else the file stem. The split
  is kept on each entry.
- ``csv``: Flickr/Kaggle ``image,caption`` CSV/TXT with a header (``,``, tab or ``|``
  separated; quoted captions may hold commas), one row per reference; also the original
  ``Flickr8k.token.txt`` (``file.jpg#0<TAB>caption``, no header). image_id = file stem.
- ``map``: ``{image_id_or_file: [refs...]}``.
- ``jsonl``: one object per line (or a JSON list of them) with ``image_id``/``image``/
  ``file_name`` and ``caption`` (one reference; rows of one image are gathered) or
  ``captions``/``refs`` (all of them).
- ``magic``: the MAGIC system-output layout, a list of ``{"image_name", "captions", ...}``.

Every problem is a one-line BenchError naming the file and the field, line or index at fault.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.data.ids import normalize_id
from bench.data.reftext import (
    EntryCollector,
    field_error,
    file_name_or_none,
    key_string,
    parse_json,
    read_text,
    ref_list,
    ref_string,
)
from bench.data.types import RefEntry
from bench.errors import BenchError

FORMATS = ("auto", "coco", "karpathy", "csv", "map", "jsonl", "magic")
_FORMAT_ALIASES = {"kaggle": "csv", "flickr": "csv", "txt": "csv", "json-map": "map", "records": "jsonl"}
_CSV_EXTENSIONS = (".txt", ".csv", ".tsv", ".token")
_JSONL_EXTENSIONS = (".jsonl", ".ndjson")
_IMAGE_COLUMNS = ("image", "image_name", "file_name", "filename", "image_id", "img")
_CAPTION_COLUMNS = ("caption", "comment", "sentence", "text", "raw")
_RECORD_ID_KEYS = ("image_id", "image", "file_name", "image_name", "filename")
_RECORD_LIST_KEYS = ("captions", "refs", "references")
_TOKEN_LINE = re.compile(r"^([^\t#]+)#\d+\t")


# --- formats -----------------------------------------------------------------------------------

def _parse_coco(path: Path, data: dict[str, Any]) -> list[RefEntry]:
    images, annotations = data.get("images"), data.get("annotations")
    if not isinstance(images, list):
        raise field_error(path, "", "field 'images' must be a list")
    if not isinstance(annotations, list):
        raise field_error(path, "", "field 'annotations' must be a list")
    files: dict[str, str | None] = {}
    for i, img in enumerate(images):
        where = f"images[{i}]"
        if not isinstance(img, dict) or "id" not in img:
            raise field_error(path, where, "field 'id' is missing")
        image_id = key_string(path, where, "id", img["id"])
        if image_id in files:
            raise field_error(path, where, f"duplicate image id {image_id!r}")
        name = img.get("file_name")
        files[image_id] = key_string(path, where, "file_name", name) if name is not None else None
    refs: dict[str, list[str]] = {image_id: [] for image_id in files}
    for j, ann in enumerate(annotations):
        where = f"annotations[{j}]"
        if not isinstance(ann, dict) or "image_id" not in ann:
            raise field_error(path, where, "field 'image_id' is missing")
        if "caption" not in ann:
            raise field_error(path, where, "field 'caption' is missing")
        image_id = key_string(path, where, "image_id", ann["image_id"])
        if image_id not in refs:
            raise field_error(path, where, f"image_id {image_id!r} is not listed in 'images'")
        refs[image_id].append(ref_string(path, where, "caption", ann["caption"]))
    for i, (image_id, caps) in enumerate(refs.items()):
        if not caps:
            raise field_error(path, f"images[{i}]", f"image {image_id!r} has zero references")
    if not refs:
        raise field_error(path, "", "field 'images' is empty")
    return [RefEntry(image_id, files[image_id], tuple(caps)) for image_id, caps in refs.items()]


def _parse_karpathy(path: Path, data: dict[str, Any]) -> list[RefEntry]:
    collector = EntryCollector(path)
    for i, img in enumerate(data["images"]):
        where = f"images[{i}]"
        if not isinstance(img, dict):
            raise field_error(path, where, "expected an object")
        if "filename" not in img:
            raise field_error(path, where, "field 'filename' is missing")
        filename = key_string(path, where, "filename", img["filename"])
        filepath = img.get("filepath")
        file_name = f"{key_string(path, where, 'filepath', filepath)}/{filename}" if filepath else filename
        split = img.get("split")
        if split is not None and not isinstance(split, str):
            raise field_error(path, where, f"field 'split' must be a string, got {type(split).__name__}")
        image_id = key_string(path, where, "cocoid", img["cocoid"]) if "cocoid" in img else normalize_id(filename)
        sentences = img.get("sentences")
        if not isinstance(sentences, list):
            raise field_error(path, where, "field 'sentences' must be a list")
        if not sentences:
            raise field_error(path, where, f"image {image_id!r} has zero references (field 'sentences' is empty)")
        refs = []
        for k, sent in enumerate(sentences):
            if isinstance(sent, dict) and "raw" in sent:
                refs.append(ref_string(path, where, f"sentences[{k}].raw", sent["raw"]))
            elif isinstance(sent, dict) and isinstance(sent.get("tokens"), list):
                refs.append(ref_string(path, where, f"sentences[{k}].tokens", " ".join(map(str, sent["tokens"]))))
            else:
                raise field_error(path, where, f"field 'sentences[{k}].raw' is missing")
        collector.add(where, filename, RefEntry(image_id, file_name, tuple(refs), split))
    return collector.result()


def _parse_csv(path: Path, text: str) -> list[RefEntry]:
    first = text.split("\n", 1)[0]
    if _TOKEN_LINE.match(first):
        return _parse_token_txt(path, text)
    delimiter = next((d for d in (",", "\t", "|") if d in first), ",")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise field_error(path, "", "file is empty") from None
    except csv.Error as exc:
        raise field_error(path, "line 1", f"unreadable CSV header ({exc})") from None
    img_col = next((header.index(c) for c in _IMAGE_COLUMNS if c in header), None)
    cap_col = next((header.index(c) for c in _CAPTION_COLUMNS if c in header), None)
    if img_col is None or cap_col is None:
        raise field_error(
            path, "line 1",
            f"header must name an image column ({'/'.join(_IMAGE_COLUMNS)}) and a caption column "
            f"({'/'.join(_CAPTION_COLUMNS)}), got {header}",
        )
    width = len(header)
    collector = EntryCollector(path)
    lineno = 1
    try:
        for row in reader:
            lineno = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) > width and cap_col == width - 1:
                # An unquoted caption with the delimiter in it: the rest of the row is the caption.
                row = row[:cap_col] + [delimiter.join(row[cap_col:])]
            where = f"line {lineno}"
            if len(row) <= max(img_col, cap_col):
                raise field_error(path, where, f"field '{header[cap_col]}' is missing")
            image = key_string(path, where, header[img_col], row[img_col])
            caption = ref_string(path, where, header[cap_col], row[cap_col])
            entry = RefEntry(normalize_id(image), image, (caption,))
            collector.add(where, image, entry, merge=True)
    except csv.Error as exc:
        raise field_error(path, f"line {lineno}", f"unreadable CSV ({exc})") from None
    return collector.result()


def _parse_token_txt(path: Path, text: str) -> list[RefEntry]:
    collector = EntryCollector(path)
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"line {lineno}"
        key, tab, caption = line.partition("\t")
        if not tab:
            raise field_error(path, where, "expected 'file.jpg#N<TAB>caption'")
        image = key_string(path, where, "image", key.rsplit("#", 1)[0])
        entry = RefEntry(normalize_id(image), image, (ref_string(path, where, "caption", caption),))
        collector.add(where, image, entry, merge=True)
    return collector.result()


def _parse_map(path: Path, text: str, data: dict[str, Any]) -> list[RefEntry]:
    def no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise field_error(path, "", f"duplicate image id {key!r}")
            seen.add(key)
        return dict(pairs)

    # json.loads keeps the last of two equal keys silently; parse again to catch duplicates.
    json.loads(text, object_pairs_hook=no_duplicate_keys)
    collector = EntryCollector(path)
    for key, value in data.items():
        where = f"key {key!r}"
        image = key_string(path, where, "image id", key)
        entry = RefEntry(normalize_id(image), file_name_or_none(image), ref_list(path, where, key, value))
        collector.add(where, image, entry)
    return collector.result()


def _parse_records(path: Path, records: list[tuple[str, Any]]) -> list[RefEntry]:
    """JSONL lines or JSON list items: (where, object) pairs."""
    collector = EntryCollector(path)
    complete: set[str] = set()  # ids given with a full list, which nothing may extend
    for where, obj in records:
        if not isinstance(obj, dict):
            raise field_error(path, where, f"expected a JSON object, got {type(obj).__name__}")
        id_key = next((k for k in _RECORD_ID_KEYS if k in obj), None)
        if id_key is None:
            raise field_error(path, where, f"field 'image_id' is missing (or one of {', '.join(_RECORD_ID_KEYS[1:])})")
        image = key_string(path, where, id_key, obj[id_key])
        named = (obj[k] for k in ("file_name", "image", "filename", "image_name") if isinstance(obj.get(k), str))
        file_name = next(named, None) or file_name_or_none(image)
        image_id = normalize_id(image)
        list_key = next((k for k in _RECORD_LIST_KEYS if k in obj), None)
        if list_key is not None:
            refs = ref_list(path, where, list_key, obj[list_key])
        elif "caption" in obj:
            refs = (ref_string(path, where, "caption", obj["caption"]),)
        else:
            raise field_error(path, where, "field 'caption' is missing (or 'captions'/'refs')")
        if image_id in complete or (list_key is not None and image_id in collector.entries):
            raise field_error(path, where, f"duplicate image id {image_id!r}")
        if list_key is not None:
            complete.add(image_id)
        collector.add(where, image, RefEntry(image_id, file_name, refs), merge=True)
    return collector.result()


def _parse_jsonl(path: Path, text: str) -> list[RefEntry]:
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append((f"line {lineno}", json.loads(line)))
        except json.JSONDecodeError as exc:
            raise field_error(path, f"line {lineno}", f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    return _parse_records(path, records)


def _parse_magic(path: Path, data: list[Any]) -> list[RefEntry]:
    collector = EntryCollector(path)
    for i, item in enumerate(data):
        where = f"[{i}]"
        if not isinstance(item, dict) or "image_name" not in item:
            raise field_error(path, where, "field 'image_name' is missing")
        image = key_string(path, where, "image_name", item["image_name"])
        if "captions" not in item:
            raise field_error(path, where, "field 'captions' is missing")
        split = item.get("split") if isinstance(item.get("split"), str) else None
        entry = RefEntry(normalize_id(image), image, ref_list(path, where, "captions", item["captions"]), split)
        collector.add(where, image, entry)
    return collector.result()


# --- detection ---------------------------------------------------------------------------------

def _json_format(data: Any) -> str | None:
    if isinstance(data, dict):
        images = data.get("images")
        if "annotations" in data and isinstance(images, list):
            return "coco"
        if isinstance(images, list) and images and isinstance(images[0], dict) and "sentences" in images[0]:
            return "karpathy"
        values = list(data.values())
        if values and all(isinstance(v, list) for v in values) and not any(v and isinstance(v[0], dict) for v in values):
            return "map"
        return None
    if isinstance(data, list) and data and isinstance(data[0], dict):
        if "image_name" in data[0] and "captions" in data[0]:
            return "magic"
        if any(k in data[0] for k in _RECORD_ID_KEYS):
            return "jsonl"
    return None


_EXPECTED = (
    "expected COCO captions ('images' + 'annotations'), Karpathy ('images' with 'sentences'), "
    "a map {image_id: [refs]}, a list of {image_id, caption(s)} objects, or the MAGIC layout"
)


def _from_json(path: Path, text: str, fmt: str) -> list[RefEntry]:
    data = parse_json(path, text)
    detected = _json_format(data)
    if fmt == "auto":
        if detected is None:
            if isinstance(data, (dict, list)) and not data:
                raise field_error(path, "", "no images with references found (empty JSON)")
            if isinstance(data, dict) and all(isinstance(v, str) for v in data.values()):
                raise field_error(path, "", "values must be lists of references; this looks like a predictions map {image_id: caption}")
            raise field_error(path, "", f"unknown structure: {_EXPECTED}")
        fmt = detected
    parsers: dict[str, Callable[[], list[RefEntry]]] = {
        "coco": lambda: _parse_coco(path, _expect(path, data, dict, "coco")),
        "karpathy": lambda: _parse_karpathy(path, _expect_karpathy(path, data)),
        "map": lambda: _parse_map(path, text, _expect(path, data, dict, "map")),
        "magic": lambda: _parse_magic(path, _expect(path, data, list, "magic")),
        "jsonl": lambda: _parse_records(path, [(f"[{i}]", o) for i, o in enumerate(_expect(path, data, list, "jsonl"))]),
    }
    return parsers[fmt]()


def _expect(path: Path, data: Any, kind: type, fmt: str) -> Any:
    if not isinstance(data, kind):
        raise field_error(path, "", f"format {fmt!r} expects a JSON {'object' if kind is dict else 'list'}, got {type(data).__name__}")
    return data


def _expect_karpathy(path: Path, data: Any) -> dict[str, Any]:
    data = _expect(path, data, dict, "karpathy")
    if not isinstance(data.get("images"), list):
        raise field_error(path, "", "field 'images' must be a list")
    return data


def read_references(path: str | Path, fmt: str = "auto") -> list[RefEntry]:
    """All images of a reference file with their captions, in file order (see the module doc)."""
    path = Path(path)
    fmt = _FORMAT_ALIASES.get(fmt, fmt)
    if fmt not in FORMATS:
        raise BenchError(f"{path}: unknown references format {fmt!r}; choose one of {', '.join(FORMATS)}")
    text = read_text(path)
    if not text.strip():
        raise field_error(path, "", "file is empty")
    suffix = path.suffix.lower()
    if fmt == "csv":
        return _parse_csv(path, text)
    if fmt == "jsonl" and not text.lstrip().startswith("["):
        return _parse_jsonl(path, text)
    if fmt != "auto":
        return _from_json(path, text, fmt)
    head = text.lstrip()[:1]
    if suffix in _JSONL_EXTENSIONS:
        return _parse_jsonl(path, text)
    if suffix in _CSV_EXTENSIONS and head not in ("{", "["):
        return _parse_csv(path, text)
    if head == "{" and "\n" in text.strip() and _looks_like_jsonl(text):
        return _parse_jsonl(path, text)
    if head in ("{", "["):
        return _from_json(path, text, "auto")
    return _parse_csv(path, text)


def _looks_like_jsonl(text: str) -> bool:
    """Several lines that are each a complete JSON object (a .json file written as JSONL)."""
    first_two = []
    for line in io.StringIO(text):  # lazily: annotation files can be large
        if line.strip():
            first_two.append(line)
        if len(first_two) == 2:
            break
    try:
        return len(first_two) == 2 and all(isinstance(json.loads(line), dict) for line in first_two)
    except json.JSONDecodeError:
        return False
