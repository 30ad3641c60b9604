"""Caption datasets: reference formats, id matching, safe image decoding, splits, synthetic data.

Importing this package is light (Pillow, numpy); torch is never imported here.
"""

from __future__ import annotations

from bench.data.dataset import (
    check_images,
    dataset_path,
    fingerprint,
    image_path,
    list_datasets,
    load_dataset,
    make_split,
    partition,
)
from bench.data.ids import IMAGE_EXTENSIONS, entry_keys, index_entries, match_predictions, normalize_id
from bench.data.images import load_image, safe_image_path, to_rgb
from bench.data.refs import FORMATS, read_references
from bench.data.synth import vocabulary, write_synth
from bench.data.types import CaptionDataset, RefEntry, Sample, Split, SplitSpec

__all__ = [
    "FORMATS",
    "IMAGE_EXTENSIONS",
    "CaptionDataset",
    "RefEntry",
    "Sample",
    "Split",
    "SplitSpec",
    "check_images",
    "dataset_path",
    "entry_keys",
    "fingerprint",
    "image_path",
    "index_entries",
    "list_datasets",
    "load_dataset",
    "load_image",
    "make_split",
    "match_predictions",
    "normalize_id",
    "partition",
    "read_references",
    "safe_image_path",
    "to_rgb",
    "vocabulary",
    "write_synth",
]
