"""`bench compare` on real `bench run` output: tiny local models, two LoRA settings and two LLaVA
prompts on a few Flickr8k images. The report has the per-prompt table, the per-LoRA-setting
table, the leaderboard, the loss curves and the galleries, as real PNGs of the right size."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from bench.report import build_report
from bench.report.figures import GALLERY_ROW_IN, GRID_COL_IN, GRID_HEIGHT_IN, LOSS_SIZE_IN, bars_size

pytestmark = pytest.mark.slow

LIMIT = 4
# The extra text follows the [scoring] table that the shared helper writes last.
FAST = """metrics = ["bleu", "rouge", "cider", "clipscore"]
[generation]
max_new_tokens = 8
batch_size = 6
"""
TRAIN = """[train]
epochs = 1
lr = 1e-3
batch_size = 4
train_size = 4
"""


def tiny_runs(write_setting: Callable[..., Path], models: dict[str, Path]) -> list[str]:
    """Two LoRA settings (vit-gpt2) and two prompts (llava) run with `bench run` into the registry
    of BENCH_RUNS (the `bench_env` fixture); returns the setting names. Reusable by any report
    test that needs real runs."""
    settings = [
        write_setting("tiny_lora_r4", {"vit-gpt2": models["vit-gpt2"]}, backends=("vit-gpt2",),
                      extra=FAST + TRAIN + "[lora]\nr = 4\nalpha = 8\n"),
        write_setting("tiny_lora_r8", {"vit-gpt2": models["vit-gpt2"]}, backends=("vit-gpt2",),
                      extra=FAST + TRAIN + "[lora]\nr = 8\nalpha = 16\n"),
        write_setting("tiny_brief", {"llava": models["llava"]}, prompt="brief", extra=FAST),
        write_setting("tiny_objects", {"llava": models["llava"]}, prompt="key_objects", extra=FAST),
    ]
    from bench.cli import main

    for path in settings:  # in-process: one torch/transformers import for all four runs
        try:
            main(["run", "--setting", str(path), "--limit", str(LIMIT), "--workers", "0", "--no-progress"])
        except SystemExit as exc:
            assert not exc.code, f"bench run {path.stem} exited with {exc.code}"
    return sorted(p.stem for p in settings)


def test_report_of_tiny_lora_and_prompt_runs(bench_env, write_tiny_setting, tiny_vit_gpt2, tiny_llava, shared_data,
                                             tmp_path: Path):
    tiny_runs(write_tiny_setting, {"vit-gpt2": tiny_vit_gpt2, "llava": tiny_llava})
    out = tmp_path / "reports" / "tiny.md"
    result = build_report(bench_env.runs, out, json_out=tmp_path / "tiny.json", n_boot=50)
    md = out.read_text()
    data = json.loads((tmp_path / "tiny.json").read_text())
    (section,) = data["sections"]
    kinds = sorted(r["kind"] for r in section["runs"])
    assert kinds == ["lora", "lora", "zero-shot", "zero-shot"]
    for title in ("### Leaderboard (all runs)", "### Zero-shot: one row per model x prompt",
                  "### LoRA: one row per (setting, backend)", "### Cost", "### Degeneration"):
        assert title in md
    assert section["baseline"] in {r["run"] for r in section["runs"] if r["kind"] == "zero-shot"}
    for r in section["runs"]:
        for m in ("CIDEr", "CLIPScore", "BLEU-4"):
            assert r["metrics"][m]["lo"] <= r["metrics"][m]["value"] + 1e-12
    n_metrics = len([m for m in ("CIDEr", "CLIPScore", "RefCLIPScore", "BLEU-4", "METEOR", "ROUGE-L")
                     if m in section["runs"][0]["metrics"]])
    expected = {
        "s1-metrics.png": bars_size(4, n_metrics),
        "s1-loss.png": (int(LOSS_SIZE_IN[0] * 100), int(LOSS_SIZE_IN[1] * 100)),
        "s1-gallery.png": (1200, int(round(GALLERY_ROW_IN * 4 * 100))),
        "s1-grid.png": (int(GRID_COL_IN * 4 * 100), int(GRID_HEIGHT_IN * 100)),
    }
    assert {p.name for p in result.figures} == set(expected)
    for path in result.figures:
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size == expected[path.name]
        assert f"(tiny-figures/{path.name})" in md
