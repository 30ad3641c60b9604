"""Plain data types shared by the loaders, the backends and the run registry."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Sample:
    """One image and its human references. `image_id` is a string key (file stem for Flickr)."""

    image_id: str
    path: Path
    refs: tuple[str, ...]


@dataclass(frozen=True)
class Split:
    """The train/validation partition every run of a dataset uses.

    `fingerprint` hashes the sorted validation ids and their references: runs whose fingerprints
    differ are never put in one table.
    """

    dataset: str
    train: tuple[Sample, ...]
    val: tuple[Sample, ...]
    fingerprint: str
