"""`bench run --prompt NAME --model DIR`, sweeps and `bench compare` for the zero-shot `vlm` backend,
as a user runs them (subprocesses): a tiny model of every family, and the real-config LLaVA-1.5 and
BLIP folders of ../shared/models (real tokenizer, processor and chat template, random weights)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.testing.vlm import BUILDERS
from conftest import REAL_VLM as REAL
from conftest import REPO, tiny_vlm_dir

pytestmark = pytest.mark.slow


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def home(tmp_path_factory, shared_data: Path, tiny_clip: Path) -> Path:
    """A BENCH_HOME whose base scores with the tiny CLIP (no METEOR JVM) and decodes 8 tokens."""
    home = tmp_path_factory.mktemp("vlm-home")
    (home / "settings").mkdir()
    base = (REPO / "settings" / "base.toml").read_text()
    # base.toml states only the models; the test's scoring and decoding are tables of their own.
    base += f'\n[generation]\nmax_new_tokens = 8\n\n[scoring]\nclip_model = "{tiny_clip}"\nmetrics = ["bleu", "cider", "clipscore"]\n'
    (home / "settings" / "base.toml").write_text(base)
    shutil.copytree(REPO / "prompts", home / "prompts")
    shutil.copytree(REPO / "datasets", home / "datasets")
    return home


@pytest.fixture
def env(home: Path, tmp_path: Path, shared_data: Path) -> dict[str, str]:
    return {
        **os.environ, "BENCH_HOME": str(home), "BENCH_RUNS": str(tmp_path / "runs"), "BENCH_CACHE": str(tmp_path / "cache"),
        "BENCH_SHARED_DATA": str(shared_data), "COLUMNS": "250", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
    }


def test_every_family_through_bench_run_prompt_model(env: dict[str, str], tiny_root: Path, tmp_path: Path):
    # One command, one run per --model (one process: torch, CLIP and the scorers load once).
    models = {family: tiny_vlm_dir(tiny_root, family) for family in sorted(BUILDERS)}
    args = [a for m in models.values() for a in ("--model", str(m))]
    proc = cli(env, "run", "--prompt", "brief", *args, "--limit", "2", "--workers", "0", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for family, model in models.items():
        run = tmp_path / "runs" / f"prompt-brief--vlm-{family}" / "vlm"
        results = json.loads((run / "results.json").read_text())
        assert results["kind"] == "zero-shot" and results["n_images"] == 2 and results["model"] == str(model)
        assert results["model_resolved"]["model_type"] == family
        assert results["config"]["generation"]["max_new_tokens"] == 8  # the setting's, not the checkpoint's


def test_sweep_of_two_models_and_two_prompts(env: dict[str, str], home: Path, tiny_root: Path, tmp_path: Path):
    models = [tiny_vlm_dir(tiny_root, "llava"), tiny_vlm_dir(tiny_root, "qwen2_vl")]
    (home / "settings" / "sweep.toml").write_text(
        'backends = ["vlm"]\nprompts = ["brief", "llava_concise"]\n[models.vlm]\n'
        f'models = ["{models[0]}", "{models[1]}"]\n'
    )
    try:
        listing = cli(env, "list", "settings")
        proc = cli(env, "run", "--setting", "sweep", "--limit", "2", "--workers", "0", "--no-progress")
        report = tmp_path / "report.md"
        compared = cli(env, "compare", "--out", str(report), "--resamples", "50")
    finally:
        (home / "settings" / "sweep.toml").unlink()
    names = [f"sweep--{p}--vlm-{f}" for p in ("brief", "llava_concise") for f in ("llava", "qwen2_vl")]
    assert listing.returncode == 0 and all(n in listing.stdout for n in names), listing.stdout
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == sorted(names)
    assert compared.returncode == 0, compared.stderr[-3000:]
    text = report.read_text()
    table = text.split("Zero-shot: one row per model x prompt")[1].split("\n\n")[1]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 4, table
    cells = {tuple(c.strip().replace("\\_", "_") for c in r.split("|")[1:3]) for r in rows}  # (Model, Prompt)
    assert cells == {(m, p) for m in ("vlm-llava", "vlm-qwen2_vl") for p in ("brief", "llava_concise")}, table


def test_real_config_llava_and_blip_through_bench_run_and_compare(env: dict[str, str], real_vlm: dict[str, Path], tmp_path: Path):
    args = [a for folder in real_vlm.values() for a in ("--model", str(folder))]
    proc = cli(env, "run", "--prompt", "brief", *args, "--limit", "2", "--workers", "0", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = {p.name: p / "vlm" for p in (tmp_path / "runs").iterdir()}
    assert sorted(runs) == sorted(f"prompt-brief--{name}" for name in REAL.values())
    llava = json.loads((runs[f"prompt-brief--{REAL['llava']}"] / "results.json").read_text())
    assert llava["config"]["model"]["options"]["image_mode"] == "auto" and llava["image_mode"] == "pad"
    blip = json.loads((runs[f"prompt-brief--{REAL['blip']}"] / "results.json").read_text())
    assert blip["model_resolved"] == {"model_type": "blip", "prompt_rule": "text_prefix", "image_mode": "native"}
    report = tmp_path / "report.md"
    proc = cli(env, "compare", "--out", str(report), "--resamples", "50")
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = report.read_text()
    for name in REAL.values():
        assert f"prompt-brief--{name}/vlm" in text.replace("\\_", "_")
    assert "| pad |" in text and "| native |" in text
