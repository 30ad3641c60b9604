"""Hugging Face `datasets` as a data source: `format = "hf"` with an `[hf]` table.

    format = "hf"
    [hf]
    path = "nlphuji/flickr_1k_test_image_text_retrieval"   # hub id, save_to_disk folder,
                                        # parquet/arrow file(s) or a glob, or an imagefolder
    name = "default"                    # optional config name
    split = "test"                      # optional when the dataset has one split
    image_column = "image"              # an Image feature (bytes or paths)
    caption_column = "caption"          # a list of captions per row, or one caption per row
    id_column = "filename"              # optional; else the image file name, else a content hash
    split_column = "split"              # optional: per-row Karpathy split, for split.karpathy_split
    [split]                             # the validation split, exactly as for other formats
    val_size = 500

The `split` of the Hugging Face dataset lives in `[hf]` because the top-level `[split]` table is
bench's validation split. Image bytes are written once, unchanged, into a cache folder keyed by
the dataset's own fingerprint (streamed in small batches, so memory does not grow with the
number of images) and every consumer then decodes them with the safe loader of
`bench.data.images`, like any image file. Images the dataset stores as paths are used in place.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.data.ids import normalize_id
from bench.data.images import load_image, safe_image_path
from bench.data.types import RefEntry
from bench.errors import BenchError
from bench.io import atomic_write_json, read_json
from bench.paths import cache_dir, expand

HF_KEYS: dict[str, type] = {
    "path": str, "name": str, "split": str, "image_column": str, "caption_column": str, "id_column": str,
    "split_column": str,
}
_FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow"}
_LOCAL_SUFFIXES = {".parquet", ".arrow", ".csv", ".json", ".jsonl", ".txt", ".tsv"}
_IMAGE_BATCH = 32  # rows whose encoded images are in memory at once
_PIL_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}
_CACHE_VERSION = 2
_KIND_NAMES = {"image": "an Image feature", "string": "a string", "int": "an integer", "strings": "a list of strings"}


@dataclass(frozen=True)
class HFSource:
    """The `[hf]` table of a dataset declaration (`src` is the .toml, for error messages)."""

    src: Path
    path: str
    name: str | None = None
    split: str | None = None
    image_column: str = "image"
    caption_column: str = "caption"
    id_column: str | None = None
    split_column: str | None = None  # a Karpathy-style per-row split ("train"/"val"/"test")

    def fail(self, key: str, message: str) -> BenchError:
        return BenchError(f"{self.src}: key 'hf.{key}': {message}")

    def local_path(self) -> Path | None:
        """The path as a local file, folder or glob (relative to the .toml), or None for a hub id."""
        text = expand(self.path)
        path = Path(text) if Path(text).is_absolute() else self.src.parent / text
        # A hub id is NAME or ORG/NAME; anything else is local, so a typo never becomes a hub request.
        hub_like = re.fullmatch(r"[\w.-]+(/[\w.-]+)?", text) and Path(text).suffix.lower() not in _LOCAL_SUFFIXES
        if path.exists() or not hub_like or text.startswith((".", "~")):
            return path
        return None


@dataclass(frozen=True)
class HFEntries:
    """What load_hf returns: the entries and where their images are."""

    entries: list[RefEntry]
    images_dir: Path  # the cache folder the image bytes were written to
    location: Path | None  # the local dataset path, None for a hub id


# --- opening the dataset ---------------------------------------------------------------------

def _datasets_module(src: Path) -> Any:
    """The `datasets` package; without it, the repo's own `datasets/` folder imports as a
    namespace package, so check for the real API instead of trusting the import."""
    try:
        import datasets
    except ImportError:
        datasets = None
    if datasets is None or not hasattr(datasets, "load_dataset"):
        raise BenchError(f"{src}: format 'hf' needs the Hugging Face datasets library: pip install 'bench[hf]'")
    return datasets


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def _pick_split(source: HFSource, loaded: Any) -> Any:
    """A Dataset from what datasets returned: a DatasetDict needs `split` unless it has one."""
    if not hasattr(loaded, "keys"):
        own = getattr(loaded, "split", None)  # a save_to_disk Dataset is one split (or none)
        if source.split and str(own) != source.split:
            raise source.fail("split", f"no split {source.split!r}: {source.path} is a single split ({own or 'unnamed'}); remove hf.split")
        return loaded
    names = list(loaded.keys())
    wanted = source.split or (names[0] if len(names) == 1 else None)
    if wanted not in names:
        given = f"no split {source.split!r}" if source.split else "the dataset has several splits; name one"
        raise source.fail("split", f"{given} (splits: {', '.join(names)})")
    return loaded[wanted]


def _load(source: HFSource, datasets: Any, local: Path | None) -> Any:
    """datasets' own loader for each kind of path; the split is picked by _pick_split."""
    if local is not None and local.is_dir() and any((local / f).is_file() for f in ("state.json", "dataset_dict.json")):
        return datasets.load_from_disk(str(local))
    if local is not None and (local.is_file() or glob.has_magic(str(local))):
        builder = _FILE_BUILDERS.get(local.suffix.lower())
        if builder is None:
            raise source.fail("path", f"{local}: expected .parquet or .arrow files, a save_to_disk folder or a folder")
        if not glob.glob(str(local)):
            raise source.fail("path", f"no file matches {local}")
        return datasets.load_dataset(builder, data_files=str(local), split=source.split or "train")
    if local is not None:
        if not local.is_dir():
            raise source.fail("path", f"no such file or folder: {local}")
        return datasets.load_dataset(str(local), source.name, split=source.split)
    from bench.model_source import hub_reachable  # the one probe of every loader

    if hub_reachable():
        return datasets.load_dataset(source.path, source.name, split=source.split)
    # No hub: the local cache only, and at once (datasets' offline switch is read at call time).
    saved = datasets.config.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = True
    try:
        return datasets.load_dataset(source.path, source.name, split=source.split)
    except (FileNotFoundError, ConnectionError, OSError) as exc:
        raise source.fail(
            "path", f"hub dataset {source.path!r} is not in the local Hugging Face cache and the hub is "
            f"unreachable: download it where there is network (`hf download {source.path} --repo-type dataset "
            f"--local-dir DIR`) and set hf.path to DIR ({_one_line(exc)})"
        ) from None
    finally:
        datasets.config.HF_HUB_OFFLINE = saved


def open_hf(source: HFSource) -> Any:
    """The datasets.Dataset a declaration names, every failure one BenchError line."""
    datasets = _datasets_module(source.src)
    local = source.local_path()
    try:
        return _pick_split(source, _load(source, datasets, local))
    except BenchError:
        raise
    except Exception as exc:  # datasets raises many kinds; the user needs one line, not a traceback
        where = f"split {source.split!r}" if source.split and "split" in str(exc).lower() else "path"
        key = "split" if where != "path" else "path"
        raise source.fail(key, f"cannot load {source.path!r} with datasets: {_one_line(exc)}") from None


# --- columns -----------------------------------------------------------------------------------

def _kind(feature: Any, datasets: Any) -> str:
    """'image', 'string', 'int', 'strings' (a list of strings) or the feature's repr."""
    if isinstance(feature, datasets.Image):
        return "image"
    if isinstance(feature, datasets.Value):
        dtype = feature.dtype
        return "string" if dtype in ("string", "large_string") else "int" if dtype.startswith(("int", "uint")) else repr(feature)
    inner = getattr(feature, "feature", feature[0] if isinstance(feature, list) and feature else None)
    if isinstance(feature, (datasets.List, datasets.LargeList, list)) and _kind(inner, datasets) == "string":
        return "strings"
    return repr(feature)


def _check_columns(source: HFSource, ds: Any, datasets: Any) -> bool:
    """Every named column exists with a usable type; True when captions come as lists."""
    wanted = {"image_column": (source.image_column, ("image",), "an Image feature"),
              "caption_column": (source.caption_column, ("string", "strings"), "a string or a list of strings"),
              "id_column": (source.id_column, ("string", "int"), "a string or an integer"),
              "split_column": (source.split_column, ("string",), "a string")}
    kinds: dict[str, str] = {}
    for key, (column, allowed, what) in wanted.items():
        if column is None:
            continue
        if column not in ds.features:
            raise source.fail(key, f"no column {column!r} in {source.path} (columns: {', '.join(ds.column_names)})")
        kinds[key] = _kind(ds.features[column], datasets)
        if kinds[key] not in allowed:
            raise source.fail(key, f"column {column!r} must be {what}, got {_KIND_NAMES.get(kinds[key], kinds[key])}")
    return kinds["caption_column"] == "strings"


# --- rows -> entries -----------------------------------------------------------------------------

def _rows(source: HFSource, ds: Any, datasets: Any) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number, row) with the image undecoded ({"bytes", "path"}), a few rows in memory at a time."""
    columns = [c for c in (source.image_column, source.caption_column, source.id_column, source.split_column) if c]
    view = ds.select_columns(list(dict.fromkeys(columns))).cast_column(source.image_column, datasets.Image(decode=False))
    row = 0
    for batch in view.iter(batch_size=_IMAGE_BATCH):
        for k in range(len(batch[source.image_column])):
            yield row, {c: batch[c][k] for c in batch}
            row += 1


def _row_id(source: HFSource, where: str, row: dict[str, Any]) -> str:
    """The id column, else the image's file name (as the CSV formats use), else a content hash."""
    if source.id_column:
        value = row[source.id_column]
        text = "" if value is None else str(value).strip()
        if not text:
            raise source.fail("id_column", f"{where}: column {source.id_column!r} is empty")
        return normalize_id(text)
    image = row[source.image_column] or {}
    if image.get("path"):
        return normalize_id(os.path.basename(image["path"]))
    if image.get("bytes"):
        return hashlib.sha256(image["bytes"]).hexdigest()[:16]
    raise source.fail("image_column", f"{where}: column {source.image_column!r} has no image")


def _captions(source: HFSource, where: str, value: Any, as_list: bool) -> tuple[str, ...]:
    items = value if as_list else [value]
    if as_list and not items:
        raise source.fail("caption_column", f"{where}: column {source.caption_column!r} is an empty caption list")
    refs = tuple(str(v).strip() for v in items if isinstance(v, str))
    if len(refs) != len(items) or not all(refs):
        raise source.fail("caption_column", f"{where}: column {source.caption_column!r} holds an empty or missing caption")
    return refs


def _write_image(source: HFSource, where: str, image: dict[str, Any], out_dir: Path, stem: str, root: Path) -> str:
    """The row's image as a file name under out_dir (bytes, written unchanged) or an absolute path."""
    from PIL import Image, UnidentifiedImageError

    column = f"column {source.image_column!r}"
    data = image.get("bytes")
    if not data:
        if not image.get("path"):
            raise source.fail("image_column", f"{where}: {column} has no image")
        path = safe_image_path(root, os.path.relpath(image["path"], root) if os.path.isabs(image["path"]) else image["path"],
                               context=f"{source.src}: key 'hf.image_column': {where}")
        return str(path)
    try:
        with Image.open(io.BytesIO(data)) as im:
            ext = _PIL_EXTENSIONS.get(im.format or "", ".img")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise source.fail("image_column", f"{where}: {column} holds bytes that are not an image Pillow can read ({_one_line(exc)})") from None
    name = stem + ext
    (out_dir / name).write_bytes(data)
    try:  # decode once now, at a small size, so bad bytes fail here and name the dataset
        load_image(out_dir / name, max_side=64)
    except BenchError as exc:
        raise source.fail("image_column", f"{where}: {column}: {str(exc).split(': ', 1)[-1]}") from None
    return name


def _collect(source: HFSource, ds: Any, datasets: Any, out_dir: Path, root: Path) -> list[RefEntry]:
    """One pass over the rows: ids, references (grouped by id), each id's image written once."""
    as_list = _check_columns(source, ds, datasets)
    entries: dict[str, RefEntry] = {}
    first_row: dict[str, int] = {}
    for row, values in _rows(source, ds, datasets):
        where = f"row {row} of {source.path}"
        image_id = _row_id(source, where, values)
        refs = _captions(source, where, values[source.caption_column], as_list)
        old = entries.get(image_id)
        if old is None:
            stem = f"{row:07d}-{re.sub(r'[^A-Za-z0-9._-]+', '_', image_id)[:60]}"  # row first: unique
            file_name = _write_image(source, where, values[source.image_column] or {}, out_dir, stem, root)
            split = values[source.split_column] if source.split_column else None
            entries[image_id] = RefEntry(image_id, file_name, refs, split)
            first_row[image_id] = row
        elif as_list:
            raise source.fail("id_column" if source.id_column else "image_column",
                              f"{where}: duplicate image id {image_id!r} (also row {first_row[image_id]})")
        else:
            entries[image_id] = RefEntry(image_id, old.file_name, old.refs + refs, old.split)
    if not entries:
        raise source.fail("path", f"{source.path}: no rows")
    return list(entries.values())


# --- cache -----------------------------------------------------------------------------------------

def _cache_folder(source: HFSource, ds: Any) -> Path:
    """Keyed by the dataset's own fingerprint and the [hf] table: new data or columns, new folder."""
    table = {k: v for k, v in asdict(source).items() if k != "src"}
    key = json.dumps([_CACHE_VERSION, table, getattr(ds, "_fingerprint", None), len(ds)], sort_keys=True, default=str)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(source.path).name or "hf")[:40]
    return cache_dir() / "hf-images" / f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _root(source: HFSource, local: Path | None, datasets: Any) -> Path:
    """The folder images stored as paths must lie in: the dataset's folder, or datasets' cache."""
    if local is None:
        return Path(datasets.config.HF_DATASETS_CACHE).resolve()
    base = local.parent if local.is_file() or glob.has_magic(str(local)) else local
    while glob.has_magic(str(base)):
        base = base.parent
    return base.resolve()


def load_hf(source: HFSource) -> HFEntries:
    """The declaration's entries; image bytes are written to a cache folder on first use only."""
    datasets = _datasets_module(source.src)
    ds = open_hf(source)
    folder = _cache_folder(source, ds)
    local = source.local_path()
    manifest = folder / "entries.json"
    if not manifest.is_file():
        partial = folder.with_name(f".{folder.name}.{os.getpid()}.partial")
        partial.mkdir(parents=True, exist_ok=True)
        entries = _collect(source, ds, datasets, partial, _root(source, local, datasets))
        atomic_write_json(partial / "entries.json", [[e.image_id, e.file_name, list(e.refs), e.split] for e in entries])
        try:
            partial.rename(folder)  # the folder appears complete, or not at all
        except OSError:  # another process finished first: use its folder
            import shutil

            shutil.rmtree(partial, ignore_errors=True)
    rows = read_json(manifest)
    return HFEntries([RefEntry(i, f, tuple(r), sp) for i, f, r, sp in rows], folder, local)
