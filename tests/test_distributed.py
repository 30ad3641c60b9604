"""Multi-process runs: 2 CPU processes (gloo) launched by accelerate / torchrun, DDP training,
sharded captioning merged into the bytes a single process writes; and the pieces in-process
(rank detection, sharding, shard merging and resume)."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bench.captioning import caption_samples
from bench.config import GenerationConfig, ModelConfig
from bench.distributed import SINGLE, Dist, detect, merge_in_order, shard, shard_files, shard_path
from bench.errors import BenchError, RunLockedError
from bench.io import append_records, exclusive_lock, read_records
from bench.run.registry import clear_run_dir
from bench.training import LinearWarmupDecay
from conftest import REPO, tiny_setting_text

SETTING = "tiny_ddp"
LIMIT = 10
TRAIN_IMAGES, EPOCHS, TRAIN_BATCH = 4, 2, 8
# Batch 4 over 10 images: 3 batches (4, 4, 2), so rank 0 captions two batches and rank 1 one.
TINY_DDP = f"""
[lora]
r = 4
alpha = 8
targets = "attn"
[train]
epochs = {EPOCHS}
lr = 1e-3
batch_size = {TRAIN_BATCH}
train_size = {TRAIN_IMAGES}
[generation]
max_new_tokens = 8
batch_size = 4
"""


# --- pure pieces ---------------------------------------------------------------------------------

def test_detect_reads_the_launchers_environment() -> None:
    assert detect({}) == SINGLE and not SINGLE.enabled and SINGLE.is_main
    assert detect({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}) == Dist(rank=1, world_size=2, local_rank=1)
    assert detect({"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "0"}) == Dist(2, 4, 0)
    assert detect({"WORLD_SIZE": "1", "RANK": "0"}) == SINGLE
    with pytest.raises(BenchError, match="RANK=2 is not a rank of WORLD_SIZE=2"):
        detect({"WORLD_SIZE": "2", "RANK": "2"})
    with pytest.raises(BenchError, match="WORLD_SIZE='two'"):
        detect({"WORLD_SIZE": "two"})


def test_single_process_collectives_are_identities() -> None:
    assert SINGLE.on_main(lambda: 7) == 7
    assert SINGLE.gather("x") == ["x"] and SINGLE.broadcast({"a": 1}) == {"a": 1}
    SINGLE.barrier()
    with pytest.raises(RunLockedError):  # the original error class, not a copy
        SINGLE.on_main(lambda: (_ for _ in ()).throw(RunLockedError("locked")))


@pytest.mark.parametrize("n, world", [(10, 2), (10, 3), (7, 4), (2, 4), (0, 2), (5, 1)])
def test_shards_are_balanced_contiguous_blocks_in_order(n: int, world: int) -> None:
    items = list(range(n))
    parts = [shard(items, r, world) for r in range(world)]
    assert [x for part in parts for x in part] == items  # rank order = single-process order
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    with pytest.raises(ValueError):
        shard(items, world, world)


def test_shard_files_are_found_in_rank_order(tmp_path: Path) -> None:
    main = tmp_path / "predictions.jsonl"
    assert shard_path(main, 3).name == "predictions.rank3.jsonl"
    for rank in (10, 2, 0):
        shard_path(main, rank).write_text("")
    (tmp_path / "predictions.rankX.jsonl").write_text("")  # not a shard
    assert [p.name for p in shard_files(main)] == [f"predictions.rank{r}.jsonl" for r in (0, 2, 10)]


def test_merge_keeps_sample_order_and_refuses_conflicting_copies() -> None:
    order = ["a", "b", "c", "d"]
    parts = [("main", {"c": "C"}), ("rank0", {"b": "B", "c": "C"}), ("rank1", {"a": "A"})]
    assert list(merge_in_order(order, parts).items()) == [("a", "A"), ("b", "B"), ("c", "C")]
    with pytest.raises(BenchError, match=r"rank1: image_id 'c' has caption 'X' but main has 'C'"):
        merge_in_order(order, [("main", {"c": "C"}), ("rank1", {"c": "X"})])


# --- shard merge and resume with a real model, in-process ----------------------------------------

@pytest.fixture(scope="module")
def val10(shared_data: Path):
    from bench.data import load_dataset, make_split

    return make_split(load_dataset("flickr8k-1k", progress=False), limit=LIMIT).val


@pytest.fixture(scope="module")
def captioner(tiny_vit_gpt2: Path):
    import torch

    from bench.backends import backend_class

    torch.set_num_threads(1)
    return backend_class("vit-gpt2").load(ModelConfig(model=str(tiny_vit_gpt2)), torch.device("cpu"))


def test_shards_of_an_interrupted_multi_process_run_are_merged_and_resumed(tmp_path: Path, captioner, val10) -> None:
    gen = GenerationConfig(batch_size=4, max_new_tokens=8)
    reference = tmp_path / "ref" / "predictions.jsonl"
    reference.parent.mkdir()
    caption_samples(captioner, val10, gen, reference, num_workers=0, progress=False)
    records = read_records(reference)

    # A 2-process run killed mid-way: rank 0 finished its first batch (images 0-3) and half of
    # its second (a torn line), rank 1 finished its batch (images 8-9); nothing was merged yet.
    path = tmp_path / "run" / "predictions.jsonl"
    path.parent.mkdir()
    append_records(shard_path(path, 0), records[:4])
    with shard_path(path, 0).open("a") as f:
        f.write('{"caption": "half a li')
    append_records(shard_path(path, 1), records[8:])
    stats = caption_samples(captioner, val10, gen, path, num_workers=0, progress=False)
    assert (stats.n_resumed, stats.n_captioned) == (6, 4)  # only images 4-7 were captioned again
    assert path.read_bytes() == reference.read_bytes()
    assert shard_files(path) == []


def test_force_clears_shards_and_a_foreign_shard_record_is_refused(tmp_path: Path, captioner, val10) -> None:
    path = tmp_path / "predictions.jsonl"
    append_records(shard_path(path, 1), [{"image_id": "elsewhere", "caption": "x"}])
    with pytest.raises(BenchError, match=r"predictions.rank1.jsonl record 1: image_id 'elsewhere' is not in this run's split"):
        caption_samples(captioner, val10, GenerationConfig(batch_size=4, max_new_tokens=4), path, num_workers=0, progress=False)
    clear_run_dir(tmp_path)
    assert shard_files(path) == []


# --- 2 processes, end to end ---------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env_for(root: Path, shared_data: Path) -> dict[str, str]:
    return {
        **os.environ,
        "BENCH_RUNS": str(root / "runs"),
        "BENCH_CACHE": str(root / "cache"),
        "BENCH_SHARED_DATA": str(shared_data),
        "COLUMNS": "200",
        "OMP_NUM_THREADS": "1",  # the same threads in every process: identical float results
    }


def run_args(setting: Path) -> list[str]:
    return ["run", "--setting", str(setting), "--limit", str(LIMIT), "--device", "cpu", "--workers", "0", "--no-progress"]


@pytest.fixture(scope="module")
def ddp_setting(tmp_path_factory: pytest.TempPathFactory, tiny_vit_gpt2: Path, tiny_clip: Path) -> Path:
    path = tmp_path_factory.mktemp("ddp") / f"{SETTING}.toml"
    path.write_text(tiny_setting_text({"vit-gpt2": tiny_vit_gpt2}, tiny_clip, backends=("vit-gpt2",), extra=TINY_DDP)
                    .replace("[scoring]\n", '[scoring]\nmetrics = ["bleu", "cider", "clipscore"]\n'))
    return path


@pytest.mark.slow
def test_two_processes_train_with_ddp_and_merge_captions_like_one(
    tmp_path: Path, ddp_setting: Path, shared_data: Path
) -> None:
    # accelerate's launcher (its torchrun path; `--cpu` alone would start a single process).
    multi = tmp_path / "multi"
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()), "-m", "bench",
    ]
    done = subprocess.run(launch + run_args(ddp_setting), env=env_for(multi, shared_data), cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run folder:") == 1  # rank 1 printed nothing of its own
    assert "on 2 processes" in done.stdout
    run2 = multi / "runs" / SETTING / "vit-gpt2"
    results2 = json.loads((run2 / "results.json").read_text())
    assert results2["processes"] == 2 and results2["n_images"] == LIMIT
    assert shard_files(run2 / "predictions.jsonl") == []

    # DDP training kept the single-process schedule: global batch = train.batch_size.
    state = json.loads((run2 / "train" / "state.json").read_text())
    steps_per_epoch = math.ceil(TRAIN_IMAGES * 5 / TRAIN_BATCH)
    assert state["processes"] == 2 and state["epochs_done"] == EPOCHS and state["step"] == EPOCHS * steps_per_epoch
    schedule = LinearWarmupDecay(round(0.05 * EPOCHS * steps_per_epoch), EPOCHS * steps_per_epoch)
    assert [row["lr"] for row in state["rows"]] == pytest.approx([1e-3 * schedule(s) for s in range(EPOCHS * steps_per_epoch)])
    assert sorted(p.name for p in (run2 / "train" / "adapter").iterdir()) == [f"epoch-{e}" for e in range(1, EPOCHS + 1)]

    # One process with the same adapter (training is a cache hit) writes the same bytes. The
    # config goes along, or the folder would count as foreign and be cleared.
    single = tmp_path / "single"
    run1 = single / "runs" / SETTING / "vit-gpt2"
    shutil.copytree(run2 / "train", run1 / "train")
    for name in ("config.json", "split.json"):
        shutil.copy2(run2 / name, run1 / name)
    done1 = subprocess.run([sys.executable, "-m", "bench", *run_args(ddp_setting)], env=env_for(single, shared_data),
                           cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done1.returncode == 0, done1.stderr[-3000:]
    assert "processes" not in json.loads((run1 / "results.json").read_text())
    assert (run1 / "train" / "state.json").read_bytes() == (run2 / "train" / "state.json").read_bytes()  # not retrained
    assert (run2 / "predictions.jsonl").read_bytes() == (run1 / "predictions.jsonl").read_bytes()
    assert json.loads((run1 / "results.json").read_text())["metrics"] == results2["metrics"]


@pytest.mark.slow
def test_a_locked_run_stops_every_rank_with_one_line(tmp_path: Path, ddp_setting: Path, shared_data: Path) -> None:
    env = env_for(tmp_path, shared_data)
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
              "--master_port", str(free_port()), "-m", "bench"]
    with exclusive_lock(tmp_path / "runs" / SETTING / "vit-gpt2"):
        done = subprocess.run(launch + run_args(ddp_setting), env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2, done.stderr[-3000:]  # one line per rank, then the launcher's summary
    assert all("in use by another bench process" in line for line in errors)
    assert "(reported by rank 0)" in done.stderr
