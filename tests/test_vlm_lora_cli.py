"""`bench run --setting llava_lora_r16` (the shipped file, pointed at the tiny LLaVA) trains the VLM,
captions with its prompt and scores; `bench compare` puts it next to the zero-shot run of the same
prompt with paired p-values and cost columns."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LIMIT = 4


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.fixture
def home(tmp_path: Path, shared_data: Path, tiny_llava: Path, tiny_clip: Path) -> Path:
    """BENCH_HOME: base.toml pointing llava and CLIPScore at tiny models; the shipped llava_brief
    and llava_lora_r16 settings, the latter trained on 4 images with a large lr (the same file otherwise)."""
    home = tmp_path / "home"
    (home / "settings").mkdir(parents=True)
    base = (REPO / "settings" / "base.toml").read_text()
    base = base.replace('model = "llava-hf/llava-1.5-7b-hf"', f'model = "{tiny_llava}"')
    # base.toml states only the models; the test's scoring is a table of its own.
    base += f'\n[scoring]\nclip_model = "{tiny_clip}"\nmetrics = ["bleu", "cider", "clipscore"]\n'
    (home / "settings" / "base.toml").write_text(base)
    shutil.copy(REPO / "settings" / "llava_brief.toml", home / "settings")
    tuned = (REPO / "settings" / "llava_lora_r16.toml").read_text()
    assert "[train]\nepochs = 1\nlr = 1e-4\n" in tuned
    # A tiny random model needs a large step to move its captions in 4 steps.
    tuned = tuned.replace("[train]\nepochs = 1\nlr = 1e-4\n", "[train]\nepochs = 2\nlr = 2e-2\ntrain_size = 4\n")
    (home / "settings" / "llava_lora_r16.toml").write_text(tuned)
    shutil.copytree(REPO / "prompts", home / "prompts")
    shutil.copytree(REPO / "datasets", home / "datasets")
    return home


def test_run_and_compare_the_tuned_vlm_with_its_zero_shot_run(home: Path, tmp_path: Path, shared_data: Path) -> None:
    env = {
        **os.environ, "BENCH_HOME": str(home), "BENCH_RUNS": str(tmp_path / "runs"), "BENCH_CACHE": str(tmp_path / "cache"),
        "BENCH_SHARED_DATA": str(shared_data), "COLUMNS": "250", "OMP_NUM_THREADS": "1",
    }
    for setting in ("llava_brief", "llava_lora_r16"):
        done = cli(env, "run", "--setting", setting, "--limit", str(LIMIT), "--workers", "0", "--no-progress")
        assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "runs" / "llava_lora_r16" / "llava"
    results = json.loads((run / "results.json").read_text())
    assert results["kind"] == "lora" and results["prompt"] == "brief" and results["n_images"] == LIMIT
    assert results["params"]["trainable"] > 0 and results["timings"]["train_s"] > 0
    state = json.loads((run / "train" / "state.json").read_text())
    # 4 images x 5 refs = 20 pairs: 3 batches of 8 an epoch, grad_accum 2 -> 2 optimizer steps
    assert state["epochs_done"] == 2 and [r["step"] for r in state["rows"]] == [1, 2, 3, 4]
    assert sorted(p.name for p in (run / "train" / "adapter" / "epoch-2").glob("adapter_model.*")) == ["adapter_model.safetensors"]
    zero = json.loads((tmp_path / "runs" / "llava_brief" / "llava" / "results.json").read_text())
    assert zero["kind"] == "zero-shot" and zero["prompt_text"] == results["prompt_text"]
    assert (run / "predictions.jsonl").read_bytes() != (tmp_path / "runs" / "llava_brief" / "llava" / "predictions.jsonl").read_bytes()

    again = cli(env, "run", "--setting", "llava_lora_r16", "--limit", str(LIMIT), "--workers", "0", "--no-progress")
    assert again.returncode == 0 and "cached" in again.stdout  # a finished VLM LoRA run is a cache hit

    report = tmp_path / "report.md"
    done = cli(env, "compare", "--out", str(report), "--resamples", "200", "--json", str(tmp_path / "report.json"))
    assert done.returncode == 0, done.stderr[-3000:]
    md = report.read_text()
    title = next(line for line in md.splitlines() if line.startswith("### Zero-shot vs LoRA: llava"))
    table = md.split(title, 1)[1].split("\n### ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| llava")]
    assert [r.split(" | ")[1] for r in rows] == ["zero-shot", "lora"]
    head = [c.strip() for c in table.splitlines()[2].strip("|").split("|")]
    cells = dict(zip(head, (c.strip() for c in rows[1].strip("|").split("|"))))
    assert cells["p vs"] == "llava\\_brief/llava"  # the zero-shot run of the same prompt
    assert re.fullmatch(r"<0\.001|[01]\.\d{3}", cells["p CIDEr"]) and re.fullmatch(r"<0\.001|[01]\.\d{3}", cells["p CLIPScore"])
    assert cells["Trainable params"].replace(",", "").isdigit() and cells["Train time"] != "—"
    zero_cells = dict(zip(head, (c.strip() for c in rows[0].strip("|").split("|"))))
    assert zero_cells["p CIDEr"] == "reference" and zero_cells["Trainable params"] == "—"
