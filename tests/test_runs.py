"""Run registry pieces in-process: the captioning loop's resume, cache decisions, lock, listing."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from bench.captioning import caption_samples, pending_batches
from bench.config import GenerationConfig, ModelConfig
from bench.errors import BenchError, RunLockedError
from bench.io import append_records, exclusive_lock, read_records
from bench.run import RunFolder, config_diff, execute_plan, list_runs, plan_run, record_external_run
from bench.run.registry import cached_results
from bench.run.folder import ResultsRecord
from bench.scoring.metrics import metric_keys
from bench.settings import load_setting


def load_results(run_dir):
    return RunFolder(run_dir).read_results().to_json()


# --- pure pieces ---------------------------------------------------------------------------------

def test_pending_batches_follow_the_uninterrupted_grid() -> None:
    ids = [f"i{n}" for n in range(10)]
    assert pending_batches(ids, set(), 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    # Resuming after 5 done: the rest of batch 2 alone, then the same batches as before.
    assert pending_batches(ids, {f"i{n}" for n in range(5)}, 4) == [[5, 6, 7], [8, 9]]
    assert pending_batches(ids, set(ids), 4) == []


def test_config_diff_ignores_labels_and_unused_sections() -> None:
    base = {
        "name": "a", "source": "settings/a.toml", "group": "report", "description": "x", "backends": ["llava"],
        "kind": "zero-shot", "lora": {"r": 8}, "train": {"epochs": 1}, "generation": {"num_beams": 1},
        "scoring": {"clip_model": "c", "clip_batch_size": 64}, "prompt_text": "<image>\nHi.",
    }
    relabelled = {**base, "name": "b", "description": "y", "group": "", "lora": {"r": 64},
                  "scoring": {"clip_model": "c", "clip_batch_size": 8}}
    assert config_diff(base, relabelled) == []  # zero-shot: LoRA settings do not matter
    assert config_diff(base, {**base, "generation": {"num_beams": 3}}) == ["generation.num_beams: 1 -> 3"]
    assert config_diff(base, {**base, "prompt_text": "<image>\nOther."}) == [
        "prompt_text: '<image>\\nHi.' -> '<image>\\nOther.'"
    ]
    lora = {**base, "kind": "lora"}
    assert config_diff(lora, {**lora, "lora": {"r": 64}}) == ["lora.r: 8 -> 64"]


# --- the captioning loop with a tiny real model --------------------------------------------------

@pytest.fixture(scope="module")
def val12(shared_data: Path):
    from bench.data import load_dataset, make_split

    return make_split(load_dataset("flickr8k-1k"), limit=12).val


@pytest.fixture(scope="module")
def captioner(tiny_vit_gpt2: Path):
    import torch

    from bench.backends import backend_class

    torch.set_num_threads(1)
    return backend_class("vit-gpt2").load(ModelConfig(model=str(tiny_vit_gpt2)), torch.device("cpu"))


GEN = GenerationConfig(batch_size=4, max_new_tokens=8)


def test_caption_loop_resumes_after_a_torn_line(tmp_path: Path, captioner, val12) -> None:
    full = tmp_path / "full.jsonl"
    stats = caption_samples(captioner, val12, GEN, full, num_workers=0, progress=False)
    assert (stats.n_total, stats.n_resumed, stats.n_captioned) == (12, 0, 12)
    assert [r["image_id"] for r in read_records(full)] == [s.image_id for s in val12]
    lines = full.read_bytes().splitlines(keepends=True)

    # Killed while appending batch 3: two whole batches and half of a line on disk.
    part = tmp_path / "part.jsonl"
    part.write_bytes(b"".join(lines[:8]) + lines[8][: len(lines[8]) // 2])
    stats = caption_samples(captioner, val12, GEN, part, num_workers=0, progress=False)
    assert (stats.n_resumed, stats.n_captioned) == (8, 4)  # the torn record is captioned again
    assert part.read_bytes() == full.read_bytes()

    # A complete file: nothing to do, nothing rewritten.
    before = part.stat().st_mtime_ns
    stats = caption_samples(captioner, val12, GEN, part, num_workers=0, progress=False)
    assert stats.n_captioned == 0 and part.stat().st_mtime_ns == before


def test_caption_loop_with_workers_matches_in_process(tmp_path: Path, captioner, val12) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    caption_samples(captioner, val12[:8], GEN, a, num_workers=0, progress=False)
    caption_samples(captioner, val12[:8], GEN, b, num_workers=2, progress=False)
    assert a.read_bytes() == b.read_bytes()


def test_caption_loop_rejects_foreign_records(tmp_path: Path, captioner, val12) -> None:
    path = tmp_path / "p.jsonl"
    append_records(path, [{"image_id": "not-in-split", "caption": "x"}])
    with pytest.raises(BenchError, match=r"p.jsonl record 1: image_id 'not-in-split' is not in this run's split"):
        caption_samples(captioner, val12, GEN, path, num_workers=0, progress=False)


def test_corrupt_image_is_a_one_line_error_from_a_worker(tmp_path: Path, captioner, val12) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    samples = [val12[0], dataclasses.replace(val12[1], path=bad)]
    with pytest.raises(BenchError) as info:
        caption_samples(captioner, samples, GEN, tmp_path / "p.jsonl", num_workers=1, progress=False)
    assert "bad.jpg" in str(info.value) and "\n" not in str(info.value)
    assert "Traceback" not in str(info.value)


# --- cache decisions and the lock (no model needed) ----------------------------------------------

@pytest.fixture
def zero_shot_plan(bench_env, shared_data: Path, tmp_path: Path):
    path = tmp_path / "zs.toml"
    path.write_text('prompt = "brief"\n')
    return plan_run(load_setting(path), "llava", limit=3)


def _finish(plan, metrics: dict[str, float] | None = None) -> None:
    """Write what a finished run leaves (config, split, results) for `plan`."""
    folder = RunFolder(plan.run_dir)
    folder.write_config(plan.config)
    folder.write_results(ResultsRecord(
        run=plan.name, setting=plan.setting.name, backend=plan.backend, kind=plan.kind, config=plan.config,
        dataset=plan.split.dataset, fingerprint=plan.split.fingerprint, metrics=metrics or {"CIDEr": 0.5},
        n_images=len(plan.samples), created_at="t",
    ))


def test_matching_results_are_a_cache_hit(zero_shot_plan) -> None:
    plan = zero_shot_plan
    _finish(plan)
    result = execute_plan(plan, device="cpu", progress=False)
    assert result.cached and result.results["metrics"] == {"CIDEr": 0.5}


def test_other_config_on_finished_run_asks_for_force(zero_shot_plan, tmp_path: Path) -> None:
    plan = zero_shot_plan
    _finish(plan)
    before = {p.name: p.read_bytes() for p in plan.run_dir.iterdir() if p.is_file() and p.name != ".lock"}
    changed = dataclasses.replace(
        plan, config={**plan.config, "generation": {**plan.config["generation"], "max_new_tokens": 5}}
    )
    with pytest.raises(BenchError, match=r"different config \(generation.max_new_tokens: 64 -> 5\); re-run with --force"):
        execute_plan(changed, device="cpu", progress=False)
    other_split = dataclasses.replace(plan, split=dataclasses.replace(plan.split, fingerprint="0000"))
    with pytest.raises(BenchError, match=r"split fingerprint: .* -> 0000"):
        execute_plan(other_split, device="cpu", progress=False)
    after = {p.name: p.read_bytes() for p in plan.run_dir.iterdir() if p.is_file() and p.name != ".lock"}
    assert after == before


def test_partial_run_of_other_config_is_not_mixed(zero_shot_plan) -> None:
    plan = zero_shot_plan
    RunFolder(plan.run_dir).write_config(plan.config)
    append_records(plan.run_dir / "predictions.jsonl", [{"image_id": plan.samples[0].image_id, "caption": "a"}])
    assert cached_results(plan, force=False) is None  # same config: resume
    changed = dataclasses.replace(plan, config={**plan.config, "prompt_text": "<image>\nOther."})
    with pytest.raises(BenchError, match=r"holds a partial run of a different config .*--force"):
        cached_results(changed, force=False)
    assert cached_results(changed, force=True) is None


def test_second_process_on_a_run_folder_refuses(zero_shot_plan) -> None:
    plan = zero_shot_plan
    _finish(plan)
    with exclusive_lock(plan.run_dir):  # flock conflicts across open files, as across processes
        with pytest.raises(RunLockedError, match=r"in use by another bench process \(pid \d+\)"):
            execute_plan(plan, device="cpu", progress=False)
    assert execute_plan(plan, device="cpu", progress=False).cached  # released: fine again


FORK_THEN_DIE = """
import os, signal, sys, time
from bench.io import exclusive_lock
with exclusive_lock(sys.argv[1]):
    child = os.fork()  # like a DataLoader worker
    if child == 0:
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 1)  # let the parent's output pipe close
        os.dup2(null, 2)
        time.sleep(60)
        os._exit(0)
    print(child, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_lock_dies_with_its_process_even_if_a_forked_worker_lives(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", FORK_THEN_DIE, str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    child = int(proc.stdout.split()[0])
    try:
        os.kill(child, 0)  # the orphaned worker is still alive...
        with exclusive_lock(tmp_path):  # ...and does not keep the run locked
            pass
    finally:
        os.kill(child, signal.SIGKILL)


def test_plan_rejects_lora_on_a_dataset_without_training_images(bench_env, shared_data: Path, tmp_path: Path) -> None:
    path = tmp_path / "lora.toml"
    path.write_text("")
    with pytest.raises(BenchError, match=r"dataset 'coco-12': the split has no training images"):
        plan_run(load_setting(path), "vit-gpt2", dataset="coco-12")
    assert not any(bench_env.runs.iterdir())


def test_plan_rejects_a_backend_the_setting_does_not_run(zero_shot_plan) -> None:
    with pytest.raises(BenchError, match=r"--backend vit-gpt2: setting 'zs' .* runs llava"):
        plan_run(zero_shot_plan.setting, "vit-gpt2")


# --- listing and external runs -------------------------------------------------------------------

def test_list_runs_status_and_external_runs(bench_env, zero_shot_plan) -> None:
    plan = zero_shot_plan
    partial = bench_env.runs / "other" / "vit-gpt2"
    partial.mkdir(parents=True)
    append_records(partial / "predictions.jsonl", [{"image_id": "a", "caption": "x"}, {"image_id": "b", "caption": "y"}])
    (bench_env.runs / "empty" / "llava").mkdir(parents=True)
    _finish(plan, {"CIDEr": 0.25, "CLIPScore": 0.7})

    preds = {"1": "a dog", "2": "a cat"}
    refs = {"1": ["a dog runs"], "2": ["a cat sits", "a cat"]}
    scored = {"corpus": {k: 0.1 for k in metric_keys()}, "per_image": {"1": {"CIDEr": 0.1}, "2": {"CIDEr": 0.1}},
              "n_images": 2, "n_clip_truncated": 0, "clip_model": None}
    ext = record_external_run("magic", preds, refs, scored, dataset="flickr30k", fingerprint="abc",
                              images=None, source="external/magic.json")
    assert ext == bench_env.runs / "magic" / "external"
    assert [r["image_id"] for r in read_records(ext / "predictions.jsonl")] == ["1", "2"]
    split = json.loads((ext / "split.json").read_text())
    assert split["n"] == 2 and split["samples"][1]["refs"] == ["a cat sits", "a cat"]
    results = load_results(ext)
    assert results["kind"] == "external" and results["metrics"]["CIDEr"] == 0.1 and results["params"] is None
    assert json.loads((ext / "metrics.json").read_text())["per_image"]["1"] == {"CIDEr": 0.1}

    # ScoreResult.to_json()'s flat shape is accepted too.
    flat = {**{k: 0.2 for k in metric_keys()}, "n_images": 2}
    results = load_results(record_external_run("flat", preds, refs, flat, dataset="d", fingerprint="f",
                                               images={"1": "/x/1.jpg"}, source="s"))
    assert results["metrics"]["BLEU-4"] == 0.2

    infos = {i.name: i for i in list_runs()}
    assert infos[plan.name].status == "complete" and infos[plan.name].metrics["CIDEr"] == 0.25
    assert infos["other/vit-gpt2"].status == "partial" and infos["other/vit-gpt2"].n_predictions == 2
    assert infos["empty/llava"].status == "empty"
    assert infos["magic/external"].kind == "external" and infos["magic/external"].dataset == "flickr30k"
    with pytest.raises(BenchError, match=r"other/vit-gpt2: no results.json"):
        load_results(partial)
    with pytest.raises(BenchError, match=r"a run name must be a plain folder name"):
        record_external_run("../x", preds, refs, scored, dataset="d", fingerprint="f", images=None, source="s")
