"""`bench run --log-with tensorboard --log-with wandb`: the event files and the offline wandb run,
read back with TensorBoard's own EventAccumulator and wandb's protobuf records, hold the loss
values of the run's train/loss.csv; a resumed run continues the same tracker runs; a tracker that
is not installed is a one-line error naming the extra.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.errors import BenchError
from bench.tracking import check_trackers
from conftest import REPO, tiny_setting_text

pytest.importorskip("tensorboard")
pytest.importorskip("wandb")

SETTING = "tracked"
EXTRA = """
[lora]
r = 4
alpha = 8
[train]
epochs = 2
batch_size = 2
train_size = 3
[generation]
max_new_tokens = 8
batch_size = 4
"""


def bench_run(root: Path, shared_data: Path, setting: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ, "BENCH_RUNS": str(root / "runs"), "BENCH_CACHE": str(root / "cache"),
        "BENCH_SHARED_DATA": str(shared_data), "OMP_NUM_THREADS": "1", "COLUMNS": "200",
        # wandb is offline by default; these make sure nothing could leave the machine anyway
        "WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_CONFIG_DIR": str(root / "wandb-config"),
        "WANDB_CACHE_DIR": str(root / "wandb-cache"), "WANDB_SILENT": "true", "HF_HUB_OFFLINE": "1",
    }
    env.pop("WANDB_MODE", None)
    args = ["run", "--setting", str(setting), "--data", "flickr8k-1k", "--limit", "4", "--workers", "0", "--no-progress"]
    return subprocess.run([sys.executable, "-m", "bench", *args, *extra], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def loss_csv(run_dir: Path) -> list[dict[str, float]]:
    with open(run_dir / "train" / "loss.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def tensorboard_scalars(folder: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def wandb_records(path: Path) -> list:
    """The protobuf records of a .wandb file (a LevelDB-style log of 32 KiB blocks), read here
    independently of wandb's writer."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1
    records, pos, block, pending = [], 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # FULL, LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending + chunk if kind == 4 else chunk)
            records.append(record)
        elif kind in (2, 3):  # FIRST, MIDDLE
            pending = chunk if kind == 2 else pending + chunk
        elif length == 0:
            pos += block - pos % block
    return records


def wandb_history(run_files: list[Path]) -> dict[int, dict]:
    """_step -> logged values, over the offline run folders of one run (a resume adds one)."""
    rows: dict[int, dict] = {}
    for path in run_files:
        for record in wandb_records(path):
            if record.WhichOneof("record_type") == "history":
                row = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item}
                rows.setdefault(row["_step"], {}).update(row)
    return rows


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory: pytest.TempPathFactory, shared_data: Path, tiny_vit_gpt2: Path, tiny_clip: Path) -> dict:
    root = tmp_path_factory.mktemp("tracked")
    setting = root / f"{SETTING}.toml"
    text = tiny_setting_text({"vit-gpt2": tiny_vit_gpt2}, tiny_clip, extra=EXTRA, backends=("vit-gpt2",))
    setting.write_text(text.replace("[scoring]\n", '[scoring]\nmetrics = ["bleu", "cider", "clipscore"]\n'))
    proc = bench_run(root, shared_data, setting, "--log-with", "tensorboard", "--log-with", "wandb")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"root": root, "setting": setting, "run_dir": root / "runs" / SETTING / "vit-gpt2"}


def test_tensorboard_events_hold_the_loss_csv_values(tracked_run: dict) -> None:
    run_dir = tracked_run["run_dir"]
    rows = loss_csv(run_dir)
    assert len(rows) == 16  # 2 epochs x (3 images x 5 references / batch 2) optimizer steps
    folder = run_dir / "tracking" / "tensorboard"
    # TensorBoard stores float32 scalars: equal to loss.csv at float32 precision
    assert tensorboard_scalars(folder, "train/loss") == [(int(r["step"]), float(np.float32(r["loss"]))) for r in rows]
    assert tensorboard_scalars(folder, "train/lr") == [(int(r["step"]), float(np.float32(r["lr"]))) for r in rows]
    assert [step for step, _ in tensorboard_scalars(folder, "epoch/mean_loss")] == [8, 16]
    results = json.loads((run_dir / "results.json").read_text())["metrics"]
    assert tensorboard_scalars(folder, "results/CIDEr")[0][1] == pytest.approx(results["CIDEr"], rel=1e-6)
    low, high = tensorboard_scalars(folder, "results/CLIPScore/ci_low")[0][1], tensorboard_scalars(folder, "results/CLIPScore/ci_high")[0][1]
    assert low <= results["CLIPScore"] <= high


def test_offline_wandb_run_holds_the_loss_csv_values(tracked_run: dict) -> None:
    run_dir = tracked_run["run_dir"]
    files = sorted((run_dir / "tracking" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    history = wandb_history(files)
    rows = loss_csv(run_dir)
    assert [(s, history[s]["train/loss"], history[s]["train/lr"]) for s in sorted(history) if "train/loss" in history[s]] == [
        (int(r["step"]), r["loss"], r["lr"]) for r in rows
    ]
    results = json.loads((run_dir / "results.json").read_text())["metrics"]
    final = history[max(history)]
    assert final["results/CIDEr"] == results["CIDEr"] and final["results/CLIPScore"] == results["CLIPScore"]
    # the samples table: image ids, captions and references of the run's first images
    table = json.loads(next(files[0].parent.glob("files/media/table/samples_*.table.json")).read_text())
    predictions = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    captions = {p["image_id"]: p["caption"] for p in predictions}
    split = json.loads((run_dir / "split.json").read_text())["samples"]
    assert table["columns"] == ["image_id", "image", "caption", "references"]
    assert [(row[0], row[2], row[3]) for row in table["data"]] == [
        (s["image_id"], captions[s["image_id"]], "\n".join(s["refs"])) for s in split
    ]
    config = [r for r in wandb_records(files[0]) if r.WhichOneof("record_type") == "config"]
    assert any(item.key == "lora.r" and json.loads(item.value_json) == 4 for r in config for item in r.config.update)


def test_a_resumed_run_continues_the_same_tracker_runs(tracked_run: dict, shared_data: Path) -> None:
    root, run_dir = tracked_run["root"], tracked_run["run_dir"]
    first_id = json.loads((run_dir / "tracking" / "state.json").read_text())["wandb_id"]
    # What a run killed during epoch 2 leaves: epoch 1 saved, no epoch 2, no captions or scores.
    shutil.rmtree(run_dir / "train" / "adapter" / "epoch-2")
    shutil.copy(run_dir / "train" / "adapter" / "epoch-1" / "train_state.json", run_dir / "train" / "state.json")
    for name in ("results.json", "metrics.json", "predictions.jsonl", "run_state.json"):
        (run_dir / name).unlink()
    proc = bench_run(root, shared_data, tracked_run["setting"], "--log-with", "tensorboard", "--log-with", "wandb")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted((run_dir / "tracking" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2 and all(f.name == f"run-{first_id}.wandb" for f in files)  # one wandb run, two sessions
    rows = loss_csv(run_dir)
    folder = run_dir / "tracking" / "tensorboard"
    assert tensorboard_scalars(folder, "train/loss") == [(int(r["step"]), float(np.float32(r["loss"]))) for r in rows]
    history = wandb_history(files)
    assert [history[int(r["step"])]["train/loss"] for r in rows] == [r["loss"] for r in rows]


def test_unknown_or_missing_tracker_is_one_line_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(BenchError, match=r"^--log-with mlflow: mlflow is not installed: pip install 'bench\[mlflow\]'$"):
        check_trackers(["tensorboard", "mlflow"])
    with pytest.raises(BenchError, match=r"^--log-with: unknown tracker 'neptune' \(choose from tensorboard, wandb, mlflow, trackio\)$"):
        check_trackers(["neptune"])
    assert check_trackers(["wandb", "tensorboard", "wandb"]) == ("wandb", "tensorboard")


def test_cli_with_a_tracker_that_is_not_installed_fails_before_any_work(tmp_path: Path) -> None:
    missing = next((n for n in ("trackio", "mlflow") if __import__("importlib").util.find_spec(n) is None), None)
    if missing is None:
        pytest.skip("every tracker is installed here")
    proc = subprocess.run([sys.executable, "-m", "bench", "run", "--setting", "nonexistent", "--log-with", missing],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "BENCH_RUNS": str(tmp_path / "runs")})
    assert proc.returncode != 0
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) == 1 and f"pip install 'bench[{missing}]'" in lines[0], lines
    assert not (tmp_path / "runs").exists()
