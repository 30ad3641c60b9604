"""Matching image keys across files: predictions, references and image folders.

Ids are compared as strings after `normalize_id`, so `1000268201_693b08cb0e.jpg`,
`images/1000268201_693b08cb0e.jpg` and `1000268201_693b08cb0e` are one image; a COCO image is also
found by its numeric id and by its file name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from bench.data.types import RefEntry
from bench.errors import BenchError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# COCO_val2014_000000027440.jpg -> 27440, the id COCO annotation files and result lists use.
_COCO_FILE = re.compile(r"^COCO_[A-Za-z]+\d{4}_0*(\d+)$")


def has_image_extension(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def normalize_id(key: str | int) -> str:
    """The comparison key of an image id or file name: no folders, no image extension."""
    text = str(key).strip().replace("\\", "/")
    name = text.rsplit("/", 1)[-1] or text
    stem, dot, _ = name.rpartition(".")
    if dot and stem and has_image_extension(name):
        return stem
    return name


def entry_keys(entry: RefEntry) -> list[str]:
    """Every key an entry answers to: its id, its file name, and a COCO file's numeric id."""
    keys = [normalize_id(entry.image_id)]
    if entry.file_name:
        keys.append(normalize_id(entry.file_name))
    for key in list(keys):
        match = _COCO_FILE.match(key)
        if match:
            keys.append(match.group(1))
    return list(dict.fromkeys(keys))


def index_entries(entries: Iterable[RefEntry]) -> dict[str, RefEntry | None]:
    """key -> entry; None marks a key that two different entries answer to (ambiguous)."""
    index: dict[str, RefEntry | None] = {}
    for entry in entries:
        for key in entry_keys(entry):
            other = index.get(key, entry)
            index[key] = entry if other is entry else None
    return index


def match_predictions(
    pred_ids: Iterable[str], entries: Sequence[RefEntry], *, source: str = "predictions"
) -> dict[str, RefEntry]:
    """{prediction key: its reference entry} for every prediction key that names a known image.

    Keys that match nothing are left out: the caller compares the result with its keys (unknown
    predictions) and with `entries` (images without a prediction) and decides whether that is an
    error. Two keys naming one image, or a key two images answer to, raise BenchError naming
    `source`.
    """
    index = index_entries(entries)
    matched: dict[str, RefEntry] = {}
    claimed: dict[str, str] = {}
    for key in pred_ids:
        norm = normalize_id(key)
        if norm not in index:
            continue
        entry = index[norm]
        if entry is None:
            raise BenchError(f"{source}: id {key!r} matches more than one reference image")
        if entry.image_id in claimed:
            raise BenchError(
                f"{source}: ids {claimed[entry.image_id]!r} and {key!r} both name image {entry.image_id!r}"
            )
        claimed[entry.image_id] = key
        matched[key] = entry
    return matched
