"""`bench run` / `bench list` end to end, as a user runs them: subprocesses, tiny local models,
real Flickr8k images.

The main run (a tiny rank64_ep3-like LoRA setting, both LoRA backends, 50 validation images) is
computed once per session, even under pytest-xdist, and shared by the tests that inspect it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.io import read_records
from bench.run.folder import SCHEMA_VERSION
from bench.scoring.metrics import metric_specs
from conftest import REPO, build_once, shared_tmp, tiny_setting_text

pytestmark = pytest.mark.slow

LIMIT = 50
SETTING = "tiny_rank64_ep3"
# Like rank64_ep3 (beam search, LoRA on attention + MLP) but small enough for a 2-core CPU.
TINY_LORA = """
[lora]
r = 8
alpha = 16
targets = "attn_ffn"
[train]
epochs = 1
lr = 1e-3
batch_size = 8
train_size = 6
[generation]
strategy = "beam"
num_beams = 2
max_new_tokens = 12
batch_size = 10
"""
# METEOR's JVM costs ~15 s per run on this 2-core machine; the scorer's own tests cover it.
METRICS = 'metrics = ["bleu", "rouge", "cider", "clipscore"]\n'
# What the Scorer writes: every metric row but METEOR (not asked for here) and the judge's (bench compare --judge)
SCORED_KEYS = [m.key for m in metric_specs() if m.key != "METEOR" and not m.judge]


def cli(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def make_env(root: Path, shared_data: Path) -> dict[str, str]:
    return {
        **os.environ,
        "BENCH_RUNS": str(root / "runs"),
        "BENCH_CACHE": str(root / "cache"),
        "BENCH_SHARED_DATA": str(shared_data),
        "COLUMNS": "200",
        # One BLAS thread: on a 2-core machine shared with other jobs, oversubscribed threads
        # make tiny models 5-10x slower.
        "OMP_NUM_THREADS": "1",
    }


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


@pytest.fixture(scope="session")
def lora_setting_text(tiny_vit_gpt2: Path, tiny_clip_flan_t5: Path, tiny_clip: Path) -> str:
    text = tiny_setting_text({"vit-gpt2": tiny_vit_gpt2, "clip-flan-t5": tiny_clip_flan_t5}, tiny_clip, extra=TINY_LORA)
    return text.replace("[scoring]\n", "[scoring]\n" + METRICS)


@pytest.fixture(scope="session")
def main_run(tmp_path_factory, shared_data: Path, lora_setting_text: str) -> dict:
    """`bench run --setting tiny_rank64_ep3.toml --limit 50`, once per session."""
    out: dict = {}

    def build(root: Path) -> None:
        (root / "settings").mkdir()
        path = root / "settings" / f"{SETTING}.toml"
        path.write_text(lora_setting_text)
        proc = cli(make_env(root, shared_data), "run", "--setting", str(path), "--limit", str(LIMIT), "--workers", "1")
        (root / "stdout.txt").write_text(proc.stdout)
        (root / "stderr.txt").write_text(proc.stderr)
        (root / "rc.txt").write_text(str(proc.returncode))

    root = build_once(shared_tmp(tmp_path_factory) / "cli-main", build)
    out["root"] = root
    out["env"] = make_env(root, shared_data)
    out["setting"] = root / "settings" / f"{SETTING}.toml"
    out["rc"] = int((root / "rc.txt").read_text())
    out["stdout"] = (root / "stdout.txt").read_text()
    out["stderr"] = (root / "stderr.txt").read_text()
    out["runs"] = root / "runs" / SETTING
    return out


def test_run_trains_captions_and_scores_both_lora_backends(main_run: dict) -> None:
    assert main_run["rc"] == 0, main_run["stderr"][-3000:]
    split_ids = None
    for backend in ("vit-gpt2", "clip-flan-t5"):
        run = main_run["runs"] / backend
        config = json.loads((run / "config.json").read_text())
        assert config.pop("schema_version") == SCHEMA_VERSION  # the file's, not part of the config
        assert (config["backend"], config["kind"], config["lora"]["r"]) == (backend, "lora", 8)
        assert config["data"] == {"dataset": "flickr8k-1k", "limit": LIMIT}
        split = json.loads((run / "split.json").read_text())
        assert split["n"] == LIMIT and len(split["samples"]) == LIMIT and split["dataset"] == "flickr8k-1k"
        ids = [s["image_id"] for s in split["samples"]]
        assert split_ids in (None, ids)  # both backends caption the same images
        split_ids = ids
        records = read_records(run / "predictions.jsonl")
        assert [r["image_id"] for r in records] == ids  # one caption per image, in split order
        assert all(isinstance(r["caption"], str) for r in records)
        # Training: the loss curve and one adapter per epoch.
        assert (run / "train" / "loss.csv").read_text().splitlines()[0] == "step,epoch,loss,lr"
        assert (run / "train" / "loss.png").is_file()
        assert any((run / "train" / "adapter" / "epoch-1").glob("*.safetensors"))
        metrics = json.loads((run / "metrics.json").read_text())
        assert set(metrics["per_image"]) == set(ids) and metrics["n_images"] == LIMIT
        results = json.loads((run / "results.json").read_text())
        assert results["run"] == f"{SETTING}/{backend}" and results["kind"] == "lora"
        assert list(results["metrics"]) == SCORED_KEYS
        assert results["metrics"] == metrics["corpus"]
        assert 0 < results["params"]["trainable"] < results["params"]["total"]
        assert 0 < results["params"]["trainable_pct"] < 100
        assert results["fingerprint"] == split["fingerprint"] and results["n_images"] == LIMIT
        assert results["timings"]["train_s"] > 0 and results["timings"]["images_per_s"] > 0
        assert results["memory"]["peak_rss_mb"] > 0
        assert results["versions"]["torch"] and results["versions"]["transformers"]
        assert results["config"] == config
    assert "CIDEr" in main_run["stdout"] and "run folder" in main_run["stdout"]


def test_second_call_is_a_cache_hit_without_torch(main_run: dict) -> None:
    assert main_run["rc"] == 0
    before = snapshot(main_run["runs"])
    args = ["run", "--setting", str(main_run["setting"]), "--limit", str(LIMIT)]
    proc = cli(main_run["env"], *args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("cached:") == 2 and "CIDEr" in proc.stdout
    assert snapshot(main_run["runs"]) == before  # nothing recomputed or rewritten
    # The cache-hit path never imports torch or transformers (they cost seconds).
    code = (
        "import sys\nfrom bench.cli import main\n"
        f"try:\n    main({args!r})\nexcept SystemExit as exc:\n    rc = exc.code\n"
        "print('HEAVY', [m for m in ('torch', 'transformers') if m in sys.modules], rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=main_run["env"], cwd=REPO, capture_output=True, text=True)
    assert "HEAVY [] 0" in proc.stdout, proc.stdout + proc.stderr


def test_bad_or_changed_setting_leaves_the_finished_run_untouched(main_run: dict, tmp_path: Path) -> None:
    assert main_run["rc"] == 0
    before = snapshot(main_run["runs"])
    text = main_run["setting"].read_text()
    same_name = tmp_path / f"{SETTING}.toml"  # same name -> same run folder
    cases = [
        (text.replace("r = 8", "r = 0"), f"{same_name}: lora.r must be >= 1 (got 0)"),
        (text.replace("epochs = 1", "epochs = 2"), "different config (train.epochs: 1 -> 2); re-run with --force"),
        (text, "--limit must be >= 1"),
    ]
    for n, (content, message) in enumerate(cases):
        same_name.write_text(content)
        limit = "0" if n == 2 else str(LIMIT)
        proc = cli(main_run["env"], "run", "--setting", str(same_name), "--limit", limit)
        assert proc.returncode != 0
        assert "Traceback" not in proc.stderr + proc.stdout
        assert message in " ".join(proc.stderr.split()), proc.stderr
        assert snapshot(main_run["runs"]) == before
    proc = cli(main_run["env"], "run", "--setting", str(same_name), "--data", "no-such-data")
    assert proc.returncode != 0 and "unknown dataset 'no-such-data'" in proc.stderr
    assert snapshot(main_run["runs"]) == before


def test_list_shows_runs_with_status(main_run: dict) -> None:
    assert main_run["rc"] == 0
    partial = main_run["root"] / "runs" / "half" / "vit-gpt2"
    partial.mkdir(parents=True, exist_ok=True)
    (partial / "config.json").write_text("{}")
    proc = cli(main_run["env"], "list", "runs")
    assert proc.returncode == 0, proc.stderr
    rows = {line.split("│")[1].strip(): line for line in proc.stdout.splitlines() if line.count("│") > 3}
    assert "complete" in rows[f"{SETTING}/vit-gpt2"] and "complete" in rows[f"{SETTING}/clip-flan-t5"]
    assert "partial" in rows["half/vit-gpt2"]
    proc = cli(main_run["env"], "list")
    assert proc.returncode == 0, proc.stderr
    for section in ("settings", "prompts", "datasets", "runs", "backends"):
        assert section in proc.stdout
    assert "rank32_ep10" in proc.stdout and "flickr8k-1k" in proc.stdout and "clip-flan-t5" in proc.stdout


# Runs `bench` with the vit-gpt2 backend's generate held after two batches while a file exists, so
# that the test can kill the process mid-generation at a known point (test code, not bench's).
HELD_GENERATE = """
import os, sys, time
from pathlib import Path
from bench.backends import backend_class
cls = backend_class("vit-gpt2")
original = cls.generate
calls = []
def held(self, batch, gen):
    calls.append(1)
    while len(calls) > 2 and Path(os.environ["HOLD_FILE"]).exists():
        time.sleep(0.05)
    return original(self, batch, gen)
cls.generate = held
from bench.cli import main
main(sys.argv[1:])
"""


def _wait_for(predicate, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"run ended early (rc {proc.returncode}): {proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def test_sigkill_mid_generation_then_resume_is_byte_identical(main_run: dict, tmp_path: Path, shared_data: Path) -> None:
    """Kill -9 while captioning; a second process meanwhile refuses the locked run; resume matches."""
    assert main_run["rc"] == 0
    env = make_env(tmp_path, shared_data)
    setting = tmp_path / f"{SETTING}.toml"
    shutil.copy(main_run["setting"], setting)
    args = ["run", "--setting", str(setting), "--limit", str(LIMIT), "--backend", "vit-gpt2", "--workers", "1"]
    run = tmp_path / "runs" / SETTING / "vit-gpt2"
    preds = run / "predictions.jsonl"
    hold = tmp_path / "hold"
    hold.touch()
    proc = subprocess.Popen(
        [sys.executable, "-c", HELD_GENERATE, *args], env={**env, "HOLD_FILE": str(hold)}, cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        # Two batches of 10 are on disk and the third is being generated.
        _wait_for(lambda: preds.exists() and len(read_records(preds)) >= 20, 300, proc)
        second = cli(env, *args)  # the first process holds the run folder
        assert second.returncode == 3, second.stderr
        assert "in use by another bench process" in second.stderr and "Traceback" not in second.stderr
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
    assert len(read_records(preds)) == 20 and not (run / "results.json").exists()
    n_killed = 20
    resumed = cli(env, *args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    reference = main_run["runs"] / "vit-gpt2" / "predictions.jsonl"
    assert preds.read_bytes() == reference.read_bytes()
    assert f"captioning {LIMIT - n_killed} of {LIMIT} images" in " ".join(resumed.stdout.split())


@pytest.fixture(scope="session")
def zero_shot_home(tmp_path_factory, shared_data: Path, tiny_llava: Path, tiny_clip: Path) -> Path:
    """A BENCH_HOME whose base points llava at the tiny model, with a group of two prompt settings."""
    home = tmp_path_factory.mktemp("home")
    (home / "settings").mkdir()
    base = (REPO / "settings" / "base.toml").read_text()
    base = base.replace('model = "llava-hf/llava-1.5-7b-hf"', f'model = "{tiny_llava}"')
    # base.toml states only the models; the test's scoring and decoding are tables of their own.
    base += f'\n[generation]\nmax_new_tokens = 8\n\n[scoring]\nclip_model = "{tiny_clip}"\nmetrics = ["bleu", "cider", "clipscore"]\n'
    (home / "settings" / "base.toml").write_text(base)
    (home / "settings" / "zs_brief.toml").write_text('group = "tiny"\nprompt = "brief"\n')
    (home / "settings" / "zs_objects.toml").write_text('group = "tiny"\nprompt = "key_objects"\n')
    (home / "settings" / "lora_other.toml").write_text('group = "other"\n')
    shutil.copytree(REPO / "prompts", home / "prompts")
    shutil.copytree(REPO / "datasets", home / "datasets")
    return home


def test_group_prompt_and_force_with_zero_shot_llava(zero_shot_home: Path, tmp_path: Path, shared_data: Path) -> None:
    env = {**make_env(tmp_path, shared_data), "BENCH_HOME": str(zero_shot_home)}
    proc = cli(env, "run", "--group", "tiny", "--limit", "3", "--workers", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = tmp_path / "runs"
    for name in ("zs_brief", "zs_objects"):
        results = json.loads((runs / name / "llava" / "results.json").read_text())
        assert results["kind"] == "zero-shot" and results["params"] is None and results["n_images"] == 3
        assert results["prompt"] in ("brief", "key_objects") and "<image>" in results["prompt_text"]
        assert set(results["metrics"]) >= {"BLEU-4", "CIDEr", "CLIPScore", "RefCLIPScore"}
    assert "runs" in proc.stdout and "zs_objects/llava" in proc.stdout  # the summary table

    # --prompt NAME is the base setting with that prompt: the same captions as zs_brief. --force
    # starts afresh: a finished run of another config, stale predictions and state are dropped.
    run = runs / "prompt-brief" / "llava"
    shutil.copytree(runs / "zs_brief" / "llava", run)
    results = json.loads((run / "results.json").read_text())
    results["config"]["generation"]["max_new_tokens"] = 99  # another config: refused without --force
    (run / "results.json").write_text(json.dumps(results))
    (run / "predictions.jsonl").write_bytes(b"")  # would be resumed (and kept) without --force
    (run / "run_state.json").write_text('{"caption": {"generate_s": 1000.0, "n_captioned": 1}}')
    proc = cli(env, "run", "--prompt", "brief", "--limit", "3", "--workers", "0", "--force")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cached" not in proc.stdout
    brief = runs / "zs_brief" / "llava"
    assert (run / "predictions.jsonl").read_bytes() == (brief / "predictions.jsonl").read_bytes()
    after = json.loads((run / "results.json").read_text())
    assert after["setting"] == "prompt-brief" and after["config"]["generation"]["max_new_tokens"] == 8
    assert after["timings"]["generate_s"] < 1000
    assert after["metrics"] == json.loads((brief / "results.json").read_text())["metrics"]

    # A group with a bad member fails before any run starts.
    (zero_shot_home / "settings" / "zs_bad.toml").write_text('group = "tiny"\nprompt = "nope"\n')
    try:
        proc = cli(env, "run", "--group", "tiny", "--limit", "3")
    finally:
        (zero_shot_home / "settings" / "zs_bad.toml").unlink()
    assert proc.returncode != 0 and "settings/zs_bad.toml: prompt: unknown prompt 'nope'" in proc.stderr
    assert "Traceback" not in proc.stderr
