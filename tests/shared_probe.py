"""Tests that need ../shared, run by tests/test_shared_skips.py in a pytest subprocess (no
`test_` prefix, so the suite itself never collects this file)."""

from __future__ import annotations

import pytest

from bench.testing import shared


def test_reads_the_flickr_captions() -> None:
    assert (shared.need_data("flickr8k-1k/captions.txt") / "flickr8k-1k" / "captions.txt").is_file()


@shared.skip_without_data("coco-12/refs.json")
def test_marked_for_coco() -> None:
    pass


def test_reads_a_real_config() -> None:
    assert (shared.need_models("google__flan-t5-base/config.json") / "google__flan-t5-base").is_dir()


def test_skipped_for_another_reason() -> None:
    pytest.skip("no GPU here, a reason of its own")


def test_needs_nothing() -> None:
    pass
