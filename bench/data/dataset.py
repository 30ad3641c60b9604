"""Dataset declarations (`datasets/<name>.toml`), the deterministic split and its fingerprint.

A declaration names the annotations, the images folder and how the validation split is chosen::

    description = "..."
    annotations = "${BENCH_SHARED_DATA}/flickr8k-1k/captions.txt"
    images = "${BENCH_SHARED_DATA}/flickr8k-1k/images"
    format = "auto"                    # see bench.data.refs.FORMATS; "hf" + an [hf] table: bench.data.hf
    generator = { variant = "target", n = 600, seed = 0 }   # optional: built-in synthetic data
    [split]
    val_size = 500                     # a seeded split of this size (with seed = ...), or
    # val_ids = "val_ids.txt"          # an explicit id list, one per line, or
    # karpathy_split = "val"           # the split a Karpathy-style file assigns

Relative paths are relative to the .toml file. The split lives here, never in a setting, so every
run of a dataset scores the same images; its fingerprint goes into every run record.
"""

from __future__ import annotations

import hashlib
import json
import random
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from bench.data.ids import has_image_extension, index_entries, normalize_id
from bench.data.images import safe_image_path
from bench.data.refs import _FORMAT_ALIASES, FORMATS, read_references, read_text
from bench.data.types import CaptionDataset, RefEntry, Sample, Split, SplitSpec
from bench.errors import BenchError, where_it_belongs
from bench.paths import datasets_dir, expand

_TOP_KEYS: dict[str, type] = {
    "description": str, "annotations": str, "images": str, "format": str, "split": dict, "generator": dict,
    "hf": dict,
}
_SPLIT_KEYS: dict[str, type] = {"val_size": int, "seed": int, "val_ids": str, "karpathy_split": str}
_GENERATOR_KEYS: dict[str, type] = {"variant": str, "n": int, "seed": int, "size": int}
_TYPE_NAMES = {str: "a string", int: "an integer", dict: "a table"}
_HELD_OUT_SPLITS = ("val", "test")  # Karpathy splits never used for training
_GUESSED_EXTENSIONS = (".jpg", ".png", ".jpeg")


class _HasRefs(Protocol):
    image_id: str
    refs: tuple[str, ...]


# --- fingerprint ---------------------------------------------------------------------------------

def fingerprint(samples: Iterable[_HasRefs]) -> str:
    """sha256 (first 16 hex) of the sorted (image_id, refs) pairs: same samples -> same string."""
    pairs = sorted([s.image_id, list(s.refs)] for s in samples)
    payload = json.dumps(pairs, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


# --- declarations --------------------------------------------------------------------------------

def dataset_path(name_or_path: str | Path) -> Path:
    """The .toml of a dataset name (datasets/<name>.toml) or the path itself."""
    text = str(name_or_path)
    if text.endswith(".toml") or "/" in text or "\\" in text:
        path = Path(text).expanduser()
        if not path.is_file():
            raise BenchError(f"{path}: dataset file not found")
        return path
    path = datasets_dir() / f"{text}.toml"
    if not path.is_file():
        known = ", ".join(list_datasets()) or "none"
        raise BenchError(f"unknown dataset {text!r}: no {path} (available: {known})")
    return path


def list_datasets() -> list[str]:
    folder = datasets_dir()
    return sorted(p.stem for p in folder.glob("*.toml")) if folder.is_dir() else []


def _misplaced(key: str, prefix: str) -> str:
    """"; it belongs under [hf] (hf.path)" when `key` is a key of another table of the file."""
    from bench.data.hf import HF_KEYS

    levels = {"": _TOP_KEYS, "split.": _SPLIT_KEYS, "generator.": _GENERATOR_KEYS, "hf.": HF_KEYS}
    return where_it_belongs(key, prefix, {lvl: tuple(keys) for lvl, keys in levels.items()}) or ""


def _check_table(src: Path, table: dict[str, Any], schema: dict[str, type], prefix: str = "") -> None:
    for key, value in table.items():
        name = f"{prefix}{key}"
        if key not in schema:
            hint = _misplaced(key, prefix) or f" (allowed: {', '.join(prefix + k for k in schema)})"
            raise BenchError(f"{src}: unknown key '{name}'{hint}")
        want = schema[key]
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            raise BenchError(f"{src}: key '{name}' must be {_TYPE_NAMES[want]}, got {type(value).__name__} {shown}")


def _path(src: Path, value: str) -> Path:
    path = Path(expand(value))
    return path if path.is_absolute() else (src.parent / path)


def _split_spec(src: Path, table: dict[str, Any]) -> SplitSpec:
    _check_table(src, table, _SPLIT_KEYS, "split.")
    ways = [k for k in ("val_size", "val_ids", "karpathy_split") if k in table]
    if len(ways) != 1:
        raise BenchError(f"{src}: [split] must give exactly one of val_size, val_ids, karpathy_split (got {ways or 'none'})")
    if "seed" in table and "val_size" not in table:
        raise BenchError(f"{src}: key 'split.seed' only applies with split.val_size")
    if "val_size" in table and table["val_size"] < 1:
        raise BenchError(f"{src}: key 'split.val_size' must be >= 1, got {table['val_size']}")
    val_ids = None
    if "val_ids" in table:
        val_ids = _path(src, table["val_ids"])
        if not val_ids.is_file():
            raise BenchError(f"{src}: key 'split.val_ids': file not found: {val_ids}")
    if "karpathy_split" in table and not table["karpathy_split"].strip():
        raise BenchError(f"{src}: key 'split.karpathy_split' is empty")
    return SplitSpec(
        val_size=table.get("val_size"), seed=table.get("seed", 0), val_ids=val_ids, karpathy_split=table.get("karpathy_split")
    )


def _generate(src: Path, table: dict[str, Any], annotations: Path, images: Path, progress: bool) -> None:
    """Write the built-in synthetic dataset where the declaration says its files are."""
    from bench.data.synth import VARIANTS, write_synth

    _check_table(src, table, _GENERATOR_KEYS, "generator.")
    for key in ("variant", "n", "seed"):
        if key not in table:
            raise BenchError(f"{src}: key 'generator.{key}' is missing")
    if table["variant"] not in VARIANTS:
        raise BenchError(f"{src}: key 'generator.variant' must be one of {', '.join(VARIANTS)}, got {table['variant']!r}")
    if table["n"] < 1:
        raise BenchError(f"{src}: key 'generator.n' must be >= 1, got {table['n']}")
    if annotations.name != "captions.txt" or images != annotations.parent / "images":
        raise BenchError(f"{src}: with a generator, 'annotations' must be DIR/captions.txt and 'images' DIR/images")
    write_synth(annotations.parent, table["n"], table["seed"], table["variant"], size=table.get("size", 64), progress=progress)


def _candidates(entry: RefEntry) -> list[str]:
    """File names an entry's image may have inside the images folder, most likely first."""
    if entry.file_name:
        base = entry.file_name.replace("\\", "/").rsplit("/", 1)[-1]
        return list(dict.fromkeys([entry.file_name, base]))
    if has_image_extension(entry.image_id):
        return [entry.image_id]
    return [entry.image_id] + [entry.image_id + ext for ext in _GUESSED_EXTENSIONS]


def image_path(images_dir: Path, entry: RefEntry, *, context: str = "") -> Path:
    """Where an entry's image is: the first candidate that exists, else the first candidate."""
    paths = [safe_image_path(images_dir, name, context=context) for name in _candidates(entry)]
    return next((p for p in paths if p.is_file()), paths[0])


def load_dataset(name_or_path: str | Path, *, progress: bool = True) -> CaptionDataset:
    """Read a datasets/*.toml declaration and its annotations (images are not opened here).

    A declaration with a `generator` writes its synthetic data first if needed (with a progress
    bar on a terminal unless `progress` is False).
    """
    src = dataset_path(name_or_path)
    try:
        table = tomllib.loads(read_text(src))
    except tomllib.TOMLDecodeError as exc:
        raise BenchError(f"{src}: invalid TOML ({exc})") from None
    _check_table(src, table, _TOP_KEYS)
    if table.get("format") == "hf" or "hf" in table:
        return _load_hf_dataset(src, table)
    for key in ("annotations", "images", "split"):
        if key not in table:
            raise BenchError(f"{src}: key '{key}' is missing")
    fmt = _FORMAT_ALIASES.get(table.get("format", "auto"), table.get("format", "auto"))
    if fmt not in FORMATS:
        raise BenchError(f"{src}: key 'format' must be one of {', '.join(FORMATS)}, got {fmt!r}")
    spec = _split_spec(src, table["split"])
    annotations, images_dir = _path(src, table["annotations"]), _path(src, table["images"])
    if "generator" in table:
        _generate(src, table["generator"], annotations, images_dir, progress)
    if not annotations.is_file():
        raise BenchError(f"{src}: key 'annotations': file not found: {annotations}")
    if not images_dir.is_dir():
        raise BenchError(f"{src}: key 'images': folder not found: {images_dir}")
    entries = read_references(annotations, fmt)
    samples = tuple(
        Sample(e.image_id, image_path(images_dir, e, context=f"{annotations} image {e.image_id!r}"), e.refs) for e in entries
    )
    return CaptionDataset(
        name=src.stem,
        source=src,
        images_dir=images_dir.resolve(),
        samples=samples,
        split_spec=spec,
        annotations=annotations,
        description=table.get("description", ""),
        annotation_splits={e.image_id: e.split for e in entries if e.split},
    )


def _load_hf_dataset(src: Path, table: dict[str, Any]) -> CaptionDataset:
    """A `format = "hf"` declaration: the [hf] table names a Hugging Face dataset (bench.data.hf)."""
    from bench.data.hf import HF_KEYS, HFSource, load_hf

    if table.get("format") != "hf":
        raise BenchError(f"{src}: an [hf] table needs format = \"hf\"")
    for key in ("annotations", "images", "generator"):
        if key in table:
            raise BenchError(f"{src}: key '{key}' does not apply with format = \"hf\" (the [hf] table names the data)")
    for key in ("hf", "split"):
        if key not in table:
            raise BenchError(f"{src}: key '{key}' is missing")
    _check_table(src, table["hf"], HF_KEYS, "hf.")
    if "path" not in table["hf"]:
        raise BenchError(f"{src}: key 'hf.path' is missing")
    spec = _split_spec(src, table["split"])
    loaded = load_hf(HFSource(src=src, **table["hf"]))
    samples = tuple(Sample(e.image_id, loaded.images_dir / (e.file_name or ""), e.refs) for e in loaded.entries)
    return CaptionDataset(
        name=src.stem,
        source=src,
        images_dir=loaded.images_dir,
        samples=samples,
        split_spec=spec,
        annotations=loaded.location,
        description=table.get("description", ""),
        annotation_splits={e.image_id: e.split for e in loaded.entries if e.split},
    )


# --- split ---------------------------------------------------------------------------------------

def _read_id_list(path: Path, ds: CaptionDataset) -> list[str]:
    index = index_entries(RefEntry(s.image_id, s.path.name, s.refs) for s in ds.samples)
    ids: list[str] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(read_text(path).splitlines(), start=1):
        raw = line.strip()
        if not raw or raw.startswith("#"):
            continue
        entry = index.get(normalize_id(raw))
        if entry is None:
            raise BenchError(f"{path} line {lineno}: id {raw!r} is not an image of dataset {ds.name!r}")
        if entry.image_id in seen:
            raise BenchError(f"{path} line {lineno}: duplicate id {raw!r} (also line {seen[entry.image_id]})")
        seen[entry.image_id] = lineno
        ids.append(entry.image_id)
    if not ids:
        raise BenchError(f"{path}: no ids listed")
    return ids


def partition(ds: CaptionDataset, limit: int | None = None) -> tuple[list[Sample], list[Sample]]:
    """(train, val) from the split spec alone, without looking at the image files.

    Seeded: ids sorted, shuffled with random.Random(seed), the first val_size are val. Explicit:
    the listed ids in list order. Karpathy: the images of that split. Train is everything else
    (for Karpathy, minus the other held-out split), sorted by id; `limit` truncates val only, so
    training never sees a validation image whatever the limit.
    """
    spec = ds.split_spec
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise BenchError(f"{ds.source}: the validation limit must be an integer >= 1, got {limit!r}")
    held_out: set[str] = set()
    if spec.val_size is not None:
        if spec.val_size > len(ds.samples):
            raise BenchError(f"{ds.source}: key 'split.val_size' is {spec.val_size} but the dataset has only {len(ds.samples)} images")
        ids = sorted(s.image_id for s in ds.samples)
        random.Random(spec.seed).shuffle(ids)
        val_ids = ids[: spec.val_size]
    elif spec.val_ids is not None:
        val_ids = _read_id_list(spec.val_ids, ds)
    else:
        wanted = spec.karpathy_split
        val_ids = [s.image_id for s in ds.samples if ds.annotation_splits.get(s.image_id) == wanted]
        if not val_ids:
            have = sorted(set(ds.annotation_splits.values()))
            raise BenchError(f"{ds.source}: key 'split.karpathy_split': no image has split {wanted!r} (splits in the annotations: {have or 'none'})")
        held_out = {i for i, sp in ds.annotation_splits.items() if sp in _HELD_OUT_SPLITS}
    by_id = {s.image_id: s for s in ds.samples}
    held_out.update(val_ids)
    val = [by_id[i] for i in val_ids]
    train = sorted((s for s in ds.samples if s.image_id not in held_out), key=lambda s: s.image_id)
    return train, val[:limit] if limit is not None else val


def _missing_error(missing: Sequence[Sample], total: int) -> BenchError:
    return BenchError(
        f"{missing[0].path}: image file not found ({len(missing)} of {total} images are missing; "
        "skip missing images explicitly to drop and count them)"
    )


def check_images(samples: Sequence[Sample], skip_missing: bool = False) -> tuple[tuple[Sample, ...], int]:
    """(samples whose image file exists, number missing); without skip_missing, missing is an error."""
    missing = [s for s in samples if not s.path.is_file()]
    if missing and not skip_missing:
        raise _missing_error(missing, len(samples))
    gone = {s.image_id for s in missing}
    return tuple(s for s in samples if s.image_id not in gone), len(missing)


def make_split(ds: CaptionDataset, limit: int | None = None, *, skip_missing: bool = False) -> Split:
    """The dataset's train/val split; `fingerprint` covers the val samples actually used.

    A missing image file is an error naming it and the count; with skip_missing the images are
    dropped and counted in `Split.skipped_missing`.
    """
    train, val = partition(ds, limit)
    missing = [s for s in val + train if not s.path.is_file()]
    if missing and not skip_missing:
        raise _missing_error(missing, len(val) + len(train))
    gone = {s.image_id for s in missing}
    kept_val = tuple(s for s in val if s.image_id not in gone)
    return Split(
        dataset=ds.name,
        train=tuple(s for s in train if s.image_id not in gone),
        val=kept_val,
        fingerprint=fingerprint(kept_val),
        skipped_missing=len(missing),
    )
