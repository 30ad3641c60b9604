"""Caption datasets: reference formats, id matching, safe image decoding, splits, synthetic data.

Importing this package is light (Pillow, numpy); torch is never imported here.
"""

from bench.data.dataset import fingerprint, list_datasets, load_dataset, make_split, partition
from bench.data.ids import match_predictions
from bench.data.images import load_image
from bench.data.refs import read_references
from bench.data.types import CaptionDataset, RefEntry, Sample, Split

__all__ = [
    "CaptionDataset", "RefEntry", "Sample", "Split", "fingerprint", "list_datasets", "load_dataset", "load_image",
    "make_split", "match_predictions", "partition", "read_references",
]
