"""`bench run` scoring flags and where errors point: `--clip-model` / `--metrics` make a
`--prompt --model` run work offline with no setting file; errors caused by a flag name the flag;
a key at the wrong level of a settings or dataset file is told where it belongs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, tiny_vlm_dir

from bench.data import load_dataset
from bench.errors import BenchError
from bench.settings import load_setting


@pytest.fixture(autouse=True)
def _planning_data(stand_in_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # These tests only plan on flickr8k-1k: the stand-in serves them with or without ../shared.
    monkeypatch.setenv("BENCH_SHARED_DATA", str(stand_in_data))


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "BENCH_RUNS": str(tmp_path / "runs"), "BENCH_CACHE": str(tmp_path / "cache"),
            "COLUMNS": "250", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.mark.slow
def test_prompt_model_run_offline_with_clip_model_and_metrics(env, tiny_root: Path, tiny_clip: Path, tmp_path: Path) -> None:
    model = tiny_vlm_dir(tiny_root, "llava")
    proc = cli(env, "run", "--prompt", "brief", "--model", str(model), "--clip-model", str(tiny_clip),
               "--metrics", "bleu,cider,clipscore", "--data", "synth", "--limit", "2", "--workers", "0", "--no-progress")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    run = tmp_path / "runs" / "prompt-brief--vlm-llava" / "vlm"
    results = json.loads((run / "results.json").read_text())
    assert {"BLEU-4", "CIDEr", "CLIPScore"} <= set(results["metrics"]) and "METEOR" not in results["metrics"]
    config = json.loads((run / "config.json").read_text())
    assert config["scoring"]["clip_model"] == str(tiny_clip)
    assert config["scoring"]["metrics"] == ["bleu", "cider", "clipscore"]
    assert "flags" not in config  # where a value came from is not part of the run


def test_an_unavailable_model_flag_is_named_not_the_base_setting(env) -> None:
    proc = cli(env, "run", "--prompt", "brief", "--model", "bench-tests/no-such-model", "--limit", "2", "--no-progress")
    assert proc.returncode != 0
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: --model: vlm model 'bench-tests/no-such-model'"), line
    assert "pass --model DIR" in line and "settings/base.toml" not in line


def test_a_missing_clip_folder_names_the_clip_flag(env, tiny_root: Path, tmp_path: Path) -> None:
    model = tiny_vlm_dir(tiny_root, "llava")
    proc = cli(env, "run", "--prompt", "brief", "--model", str(model), "--clip-model", str(tmp_path / "no-clip"),
               "--limit", "2", "--no-progress")
    line = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and line.startswith("error: --clip-model: CLIP model"), line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("results.json"))


def test_bad_metrics_flag_fails_before_any_work(env, tmp_path: Path) -> None:
    proc = cli(env, "run", "--prompt", "brief", "--metrics", "bleu,blue", "--limit", "2", "--no-progress")
    assert proc.returncode != 0 and "--metrics: unknown metric 'blue'" in proc.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize(("text", "expect"), [
    ('extends = "base"\nepochs = 3\n', "unknown key 'epochs'; it belongs under [train] (train.epochs)"),
    ('extends = "base"\n[train]\nseed = 1\n', "unknown key 'train.seed'; it belongs at the top level (seed)"),
    ('extends = "base"\n[lora]\nquantization = "4bit"\n',
     "unknown key 'lora.quantization'; it belongs under [models.<backend>] (models.<backend>.quantization)"),
    ('extends = "base"\n[generation]\nnum_beam = 3\n', "did you mean 'generation.num_beams'?"),  # a typo: no level has it
])
def test_setting_key_at_the_wrong_level_says_where_it_belongs(tmp_path: Path, text: str, expect: str) -> None:
    path = tmp_path / "s.toml"
    path.write_text(text)
    with pytest.raises(BenchError) as exc:
        load_setting(path)
    assert str(exc.value) == f"{path}: {expect}" or str(exc.value).endswith(expect), str(exc.value)


@pytest.mark.parametrize(("text", "expect"), [
    ('format = "hf"\npath = "x/y"\n[split]\nval_size = 2\n', "unknown key 'path'; it belongs under [hf] (hf.path)"),
    ('format = "hf"\n[hf]\npath = "x/y"\nval_size = 2\n[split]\nval_size = 2\n', "unknown key 'hf.val_size'; it belongs under [split] (split.val_size)"),
    ('annotations = "a.txt"\nimages = "i"\nval_size = 3\n[split]\nseed = 1\n',
     "unknown key 'val_size'; it belongs under [split] (split.val_size)"),
    ('annotations = "a.txt"\nimages = "i"\n[split]\nvalsize = 3\n', "unknown key 'split.valsize' (allowed: split.val_size"),
])
def test_dataset_key_at_the_wrong_level_says_where_it_belongs(tmp_path: Path, text: str, expect: str) -> None:
    path = tmp_path / "d.toml"
    path.write_text(text)
    with pytest.raises(BenchError) as exc:
        load_dataset(path)
    assert str(exc.value).startswith(f"{path}: {expect}"), str(exc.value)
