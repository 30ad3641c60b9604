"""bench.model_source: the one loader of every pretrained file (backends, CLIPScore, processors)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.errors import BenchError
from bench.model_source import CLIP_TEXT_HALF, check_available, load_model

REPO = Path(__file__).resolve().parent.parent


def _load_tower(clip: Path, expected: tuple[str, ...]) -> str:
    """stderr of a fresh process loading the vision tower of a full CLIP checkpoint (transformers
    logs through its own handler, which in-process capture does not reliably see)."""
    code = (
        "import sys\n"
        "from transformers import CLIPVisionModel\n"
        "from bench.model_source import load_model\n"
        f"m = load_model(CLIPVisionModel, {str(clip)!r}, 'vision tower', expected_unexpected={expected!r})\n"
        "print(type(m).__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0 and done.stdout.strip() == "CLIPVisionModel", done.stderr
    return done.stderr


def test_vision_tower_of_a_full_clip_loads_without_a_report(tiny_clip: Path) -> None:
    """The text half of a full CLIP is expected: neither transformers' table of UNEXPECTED keys
    nor a warning of ours appears."""
    err = _load_tower(tiny_clip, CLIP_TEXT_HALF)
    assert "UNEXPECTED" not in err and "LOAD REPORT" not in err and "unused" not in err, err


def test_unexpected_weights_are_one_warning_line(tiny_clip: Path) -> None:
    lines = [line for line in _load_tower(tiny_clip, ()).splitlines() if line.strip()]
    assert len(lines) == 1 and "checkpoint tensors unused by the model, e.g. " in lines[0], lines


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
