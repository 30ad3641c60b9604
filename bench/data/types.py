"""Plain data types shared by the loaders, the backends and the run registry."""

from __future__ import annotations

from dataclasses import dataclass, field
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
    # Images dropped because their file was missing (only with skip_missing); report it.
    skipped_missing: int = 0


@dataclass(frozen=True)
class RefEntry:
    """One image of a reference file, before it is tied to an images folder.

    `image_id` is the key bench uses (str(coco id), file stem for Flickr); `file_name` is the image
    file named by the annotations, if any; `split` is the split a Karpathy-style file assigns.
    """

    image_id: str
    file_name: str | None
    refs: tuple[str, ...]
    split: str | None = None


@dataclass(frozen=True)
class SplitSpec:
    """How a dataset's validation split is chosen; exactly one of the three ways is set."""

    val_size: int | None = None  # a seeded split of this many images...
    seed: int = 0
    val_ids: Path | None = None  # ...or an explicit id list, one per line...
    karpathy_split: str | None = None  # ...or the split the annotations themselves assign


@dataclass
class CaptionDataset:
    """A dataset declared in datasets/<name>.toml: all its samples, in annotation order."""

    name: str
    source: Path  # the .toml it was declared in
    images_dir: Path
    samples: tuple[Sample, ...]
    split_spec: SplitSpec
    annotations: Path | None = None
    description: str = ""
    # image_id -> split named by the annotations (Karpathy files); empty otherwise.
    annotation_splits: dict[str, str] = field(default_factory=dict)
