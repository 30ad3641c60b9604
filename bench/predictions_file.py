"""A run's `predictions.jsonl` and the per-rank shards of a multi-process run.

Records are checksummed JSON lines (`bench.io`); a torn last line is dropped on read. A run on
several processes writes `predictions.rank<k>.jsonl` beside the main file, and `merge_shards`
folds them in once, in sample order: the bytes one process would have written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bench.errors import BenchError
from bench.io import atomic_write_text, encode_record, read_records

if TYPE_CHECKING:
    from bench.data.types import Sample

SHARD_GLOB = "predictions.rank*.jsonl"


def existing_predictions(path: Path, samples: Sequence[Sample]) -> dict[str, str]:
    """Intact records of `path` (truncating a torn last line), checked against the samples."""
    known = {s.image_id for s in samples}
    found: dict[str, str] = {}
    for n, rec in enumerate(read_records(path, repair=True), start=1):
        image_id, caption = rec.get("image_id"), rec.get("caption")
        if not isinstance(image_id, str) or not isinstance(caption, str):
            raise BenchError(f"{path} record {n}: needs string fields 'image_id' and 'caption'")
        if image_id not in known:
            raise BenchError(f"{path} record {n}: image_id {image_id!r} is not in this run's split; use --force")
        if image_id in found:
            raise BenchError(f"{path} record {n}: image_id {image_id!r} appears twice; use --force")
        found[image_id] = caption
    return found


def write_in_order(path: Path, samples: Sequence[Sample], captions: dict[str, str]) -> None:
    """Write the captions of `samples` that `captions` has, in sample order, atomically.

    The records are those an uninterrupted single process appends, so the bytes are the same.
    """
    text = "".join(
        encode_record({"image_id": s.image_id, "caption": captions[s.image_id]}) for s in samples if s.image_id in captions
    )
    atomic_write_text(path, text)


def shard_path(predictions_path: Path, rank: int) -> Path:
    """`predictions.jsonl` -> `predictions.rank<k>.jsonl` beside it."""
    predictions_path = Path(predictions_path)
    return predictions_path.with_name(f"{predictions_path.stem}.rank{rank}{predictions_path.suffix}")


def shard_files(predictions_path: Path) -> list[Path]:
    """The shard files beside `predictions_path`, in rank order."""
    predictions_path = Path(predictions_path)
    pattern = f"{predictions_path.stem}.rank*{predictions_path.suffix}"
    found = []
    for path in predictions_path.parent.glob(pattern):
        middle = path.name[len(predictions_path.stem) + len(".rank") : -len(predictions_path.suffix) or None]
        if middle.isdigit():
            found.append((int(middle), path))
    return [p for _, p in sorted(found)]


def merge_in_order(order: Sequence[str], parts: Sequence[tuple[str, Mapping[str, str]]]) -> dict[str, str]:
    """The union of `parts` ((source name, {image_id: caption})), keyed in the order of `order`.

    The same id in two parts must carry the same caption: that happens when a merge was cut
    between writing `predictions.jsonl` and deleting the shards, and the copies are equal.
    """
    merged: dict[str, str] = {}
    origin: dict[str, str] = {}
    for name, captions in parts:
        for image_id, caption in captions.items():
            if image_id in merged and merged[image_id] != caption:
                raise BenchError(
                    f"{name}: image_id {image_id!r} has caption {caption!r} but {origin[image_id]} has "
                    f"{merged[image_id]!r}; use --force"
                )
            merged.setdefault(image_id, caption)
            origin.setdefault(image_id, name)
    return {i: merged[i] for i in order if i in merged}


def merge_shards(predictions_path: Path, samples: Sequence[Sample]) -> dict[str, str]:
    """Fold every `predictions.rank<k>.jsonl` into `predictions.jsonl`, in sample order.

    Returns the captions now in `predictions.jsonl`. The merged file is written atomically before
    the shards are deleted, so a crash in between loses nothing (the copies are equal). Without
    shard files and with records already in sample order, nothing is written.
    """
    predictions_path = Path(predictions_path)
    shards = shard_files(predictions_path)
    main = existing_predictions(predictions_path, samples)
    parts = [(str(predictions_path), main)] + [(str(p), existing_predictions(p, samples)) for p in shards]
    merged = merge_in_order([s.image_id for s in samples], parts)
    if shards or list(main) != list(merged):
        write_in_order(predictions_path, samples, merged)
        for path in shards:
            path.unlink(missing_ok=True)
    return merged
