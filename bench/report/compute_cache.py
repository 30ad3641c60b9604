"""What `bench compare` computed per run, kept in .cache/compare/ (one .npz per run and
bootstrap), so a re-compare after one new run costs about one run's work; and the reference
n-gram tables of each section (`refs-<key>.npz`, keyed by VERSION and the tokenized references),
which a section recomputes whenever one of its runs is new.

The key is a digest of everything those numbers depend on: this module's VERSION (bumped when
the kernels change their numbers), the number of resamples and the seed (they fix the resamples,
given the number of images), the section's tokenized references in the section's image order,
and the run's tokenized captions in that order. A run whose captions, split or references change,
or a compare with other --resamples/--seed, gets another key; the old entry is never read.
Entries are written crash-safely (bench.io); one that cannot be read or has the wrong shape is
recomputed, never trusted. Deleting the folder loses nothing but time.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.errors import BenchError
from bench.io import atomic_write_bytes
from bench.report.cider_chunks import CorpusSamples
from bench.report.cider_tables import RefTables, ref_tables

VERSION = 1
FOLDER = "compare"  # under bench.paths.cache_dir()
_PER_IMAGE = "cider_per_image"


class ComputeCache:
    """Per-run CIDEr/BLEU bootstrap samples under `folder` (None: cache nothing)."""

    def __init__(self, folder: Path | None):
        self.folder = folder

    def section(self, refs: Sequence[Sequence[str]], n_boot: int, seed: int) -> str:
        """Digest of what every run of a section shares."""
        payload = json.dumps([VERSION, n_boot, seed, [list(r) for r in refs]], ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def key(self, section: str, cands: Sequence[str]) -> str:
        payload = json.dumps([section, list(cands)], ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def _path(self, key: str) -> Path:
        assert self.folder is not None
        return self.folder / f"{key}.npz"

    def _load(self, path: Path) -> dict[str, np.ndarray] | None:
        try:
            with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as data:
                return {name: data[name] for name in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            return None  # missing or damaged: recomputed

    def _save(self, path: Path, arrays: dict[str, np.ndarray]) -> None:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        try:
            atomic_write_bytes(path, buf.getvalue())
        except (BenchError, OSError):
            pass  # an unwritable or full cache folder only costs a recomputation next time

    def ref_tables(self, refs: Sequence[Sequence[str]]) -> RefTables:
        """cider_tables.ref_tables(refs), read back when this cache has them."""
        if self.folder is None:
            return ref_tables(refs)
        payload = json.dumps([VERSION, [list(r) for r in refs]], ensure_ascii=False)
        path = self.folder / f"refs-{hashlib.sha256(payload.encode('utf-8')).hexdigest()}.npz"
        arrays = self._load(path)
        if arrays is not None:
            try:
                return RefTables.from_arrays(arrays)
            except (KeyError, ValueError, TypeError, UnicodeDecodeError):
                pass  # another layout or damaged: recomputed
        tables = ref_tables(refs)
        self._save(path, tables.to_arrays())
        return tables

    def get(self, key: str, counts_shape: tuple[int, int]) -> CorpusSamples | None:
        """The entry of `key`, if there is a readable one for (rows, N) multiplicities."""
        if self.folder is None:
            return None
        rows, n = counts_shape
        arrays = self._load(self._path(key))
        if arrays is None:
            return None
        per_image = arrays.pop(_PER_IMAGE, None)
        if per_image is None or per_image.shape != (n,) or not arrays or any(v.shape != (rows,) for v in arrays.values()):
            return None
        return CorpusSamples(arrays, per_image)

    def put(self, key: str, samples: CorpusSamples) -> None:
        if self.folder is None:
            return
        self._save(self._path(key), {**samples.values, _PER_IMAGE: samples.cider_per_image})
