"""bench.model_source: the one loader of every pretrained file (backends, CLIPScore, processors)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bench.errors import BenchError
from bench.model_source import CLIP_TEXT_HALF, check_available, load_model


def test_vision_tower_of_a_full_clip_loads_without_a_report(tiny_clip: Path, capfd, caplog) -> None:
    """A CLIP vision tower taken out of a full CLIP checkpoint: the text half is expected, so
    neither transformers' table of UNEXPECTED keys nor a warning of ours appears."""
    from transformers import CLIPVisionModel

    with caplog.at_level(logging.WARNING):
        model = load_model(CLIPVisionModel, str(tiny_clip), "vision tower", expected_unexpected=CLIP_TEXT_HALF)
    out, err = capfd.readouterr()
    assert type(model).__name__ == "CLIPVisionModel"
    assert "UNEXPECTED" not in out + err and "LOAD REPORT" not in out + err
    assert not [r for r in caplog.records if r.name == "bench"]


def test_unexpected_weights_are_one_warning_line(tiny_clip: Path, capfd, caplog) -> None:
    from transformers import CLIPVisionModel

    with caplog.at_level(logging.WARNING):
        load_model(CLIPVisionModel, str(tiny_clip), "vision tower")
    out, err = capfd.readouterr()
    assert "UNEXPECTED" not in out + err  # transformers' own table stays silent
    ours = [r.getMessage() for r in caplog.records if r.name == "bench"]
    assert len(ours) == 1 and "checkpoint tensors unused by the model, e.g. " in ours[0] and "\n" not in ours[0]


def test_strict_load_refuses_missing_weights(tiny_clip: Path, tmp_path: Path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file
    from transformers import CLIPModel

    partial = tmp_path / "partial"
    shutil.copytree(tiny_clip, partial)
    weights = load_file(partial / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "visual_projection" not in k}, partial / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(BenchError, match=r"'.*partial': 1 weight tensors missing or mis-shaped in the checkpoint"):
        load_model(CLIPModel, str(partial), "CLIP model", strict=True)


def test_check_available_names_the_field(tmp_path: Path) -> None:
    check_available(str(tmp_path), "x model")  # a folder: fine, nothing loaded
    with pytest.raises(BenchError, match=r"^x model '/\S+/nope': no such model folder"):
        check_available(str(tmp_path / "nope"), "x model")
