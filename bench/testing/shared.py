"""What the tests and benchmarks need from `../shared` (real data, real model files), in one place.

A user's own clone has no `../shared` beside it. Everything that needs a file from there asks
here, so a missing folder always gives the same skip reason (tagged, so `tests/conftest.py` can
count those skips and print one summary line instead of a hundred), and `make bench` can name
the sections it skipped. Test-only: production code never imports `bench.testing`.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench import paths

DATA_TAG = "needs ../shared/data"
MODELS_TAG = "needs ../shared/models"
# What those folders hold (their README.md files say more): said once, in the summary line.
DATA_HOLDS = "1,000 Flickr8k photos with 5 references, COCO-12, published systems' captions, human judgments"
MODELS_HOLDS = "the default hub models' real configs and tokenizers, without weights"


def _first_absent(root: Path, relative: Iterable[str]) -> Path | None:
    return next((root / rel for rel in relative if not (root / rel).exists()), None)


def data_missing(*relative: str) -> str | None:
    """The skip reason when one of these paths under the shared data is absent, else None."""
    absent = _first_absent(paths.shared_data_dir(), relative or ("",))
    return None if absent is None else f"{DATA_TAG}: {absent} not found (set BENCH_SHARED_DATA)"


def models_missing(*relative: str) -> str | None:
    """The skip reason when one of these paths under the shared model files is absent, else None."""
    absent = _first_absent(paths.shared_models_dir(), relative or ("",))
    return None if absent is None else f"{MODELS_TAG}: {absent} not found (set BENCH_SHARED_MODELS)"


def need_data(*relative: str) -> Path:
    """The shared data folder, or skip the calling test with the tagged reason."""
    return paths.shared_data_dir() if (reason := data_missing(*relative)) is None else _skip(reason)


def need_models(*relative: str) -> Path:
    """The shared model-files folder, or skip the calling test with the tagged reason."""
    return paths.shared_models_dir() if (reason := models_missing(*relative)) is None else _skip(reason)


def skip_without_data(*relative: str) -> Any:
    """A `pytest.mark.skipif` for a test or module (`pytestmark`) that reads these shared paths."""
    import pytest

    reason = data_missing(*relative)
    return pytest.mark.skipif(reason is not None, reason=reason or "")


def _skip(reason: str) -> Any:
    import pytest

    pytest.skip(reason)


def skip_kind(reason: str) -> str | None:
    """"data" or "models" when a skip is for lack of ../shared, else None. Besides the tagged
    reasons above, a reason naming the folder or its variable counts (a test written without
    these helpers still lands in the summary)."""
    for kind, tag, env, root in (("data", DATA_TAG, "BENCH_SHARED_DATA", paths.shared_data_dir()),
                                 ("models", MODELS_TAG, "BENCH_SHARED_MODELS", paths.shared_models_dir())):
        if tag in reason or env in reason or str(root) in reason:
            return kind
    return None


def summary(kinds: Iterable[str], width: int = 80) -> list[str]:
    """The one summary line (wrapped to `width` columns) for skips of these kinds; [] if none."""
    kinds = list(kinds)
    if not kinds:
        return []
    n_data, n_models = kinds.count("data"), kinds.count("models")
    text = (
        f"{len(kinds)} tests skipped for lack of ../shared: {n_data} need {paths.shared_data_dir()} "
        f"({DATA_HOLDS}), {n_models} need {paths.shared_models_dir()} ({MODELS_HOLDS}); to run them, "
        "point BENCH_SHARED_DATA and BENCH_SHARED_MODELS at copies of those folders."
    )
    # Paths are never cut: a reader copies them (a path longer than a line gets a line of its own).
    return textwrap.wrap(text, width=width - 1, subsequent_indent="  ", break_long_words=False, break_on_hyphens=False)


def write_stand_in_data(root: Path, n_flickr: int = 1000, n_coco: int = 12) -> Path:
    """A stand-in for the shared data, for tests that only plan: `flickr8k-1k` and `coco-12` in
    their real layouts and sizes (so the shipped dataset files split them as they split the real
    ones), with 4x4 grey JPEGs and made-up references. Returns `root` (for BENCH_SHARED_DATA)."""
    import csv
    import json

    from PIL import Image

    image = Image.new("RGB", (4, 4), (128, 128, 128))
    flickr = root / "flickr8k-1k"
    (flickr / "images").mkdir(parents=True)
    with (flickr / "captions.txt").open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["image", "caption"])
        for i in range(n_flickr):
            image.save(flickr / "images" / f"{i:04d}.jpg")
            out.writerows([f"{i:04d}.jpg", f"a grey square number {i}, reference {k}"] for k in range(5))
    coco = root / "coco-12"
    (coco / "images").mkdir(parents=True)
    refs = {}
    for i in range(n_coco):
        image.save(coco / "images" / f"COCO_{i:04d}.jpg")
        refs[f"COCO_{i:04d}.jpg"] = [f"a grey square {i}, reference {k}" for k in range(5)]
    (coco / "refs.json").write_text(json.dumps(refs), encoding="utf-8")
    (root / "external" / "magic-flickr30k").mkdir(parents=True)  # present, empty: nothing plans on it
    return root


def missing_env(data: Iterable[str] = (), models: Iterable[str] = ()) -> str | None:
    """How `make bench` names a section it skips: "needs BENCH_SHARED_DATA (PATH not found)" for
    the first absent path (data first, then model files), else None."""
    if (absent := _first_absent(paths.shared_data_dir(), data)) is not None:
        return f"needs BENCH_SHARED_DATA ({absent} not found)"
    if (absent := _first_absent(paths.shared_models_dir(), models)) is not None:
        return f"needs BENCH_SHARED_MODELS ({absent} not found)"
    return None
