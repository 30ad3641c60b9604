"""`bench run --log-with tensorboard` never imports the report package (`bench compare`'s
tables, figures and bootstrap): checked on a real tiny LoRA run in a subprocess, through the
modules it loaded (`sys.modules` at exit)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, tiny_setting_text

pytest.importorskip("tensorboard")

# Runs bench's CLI in this process and, at exit (success or not), writes the bench.report modules
# it loaded to the file named by its first argument.
PROBE = """
import atexit, json, sys
out = sys.argv.pop(1)
atexit.register(lambda: open(out, "w").write(json.dumps(
    sorted(m for m in sys.modules if m == "bench.report" or m.startswith("bench.report.")))))
from bench.cli import main
sys.argv[0] = "bench"
main()
"""

EXTRA = """
[lora]
r = 4
alpha = 8
[train]
epochs = 1
batch_size = 2
train_size = 2
[generation]
max_new_tokens = 4
batch_size = 4
"""


def test_bench_run_with_a_tracker_loads_no_report_module(
    tmp_path: Path, shared_data: Path, tiny_vit_gpt2: Path, tiny_clip: Path
) -> None:
    setting = tmp_path / "light.toml"
    text = tiny_setting_text({"vit-gpt2": tiny_vit_gpt2}, tiny_clip, extra=EXTRA, backends=("vit-gpt2",))
    setting.write_text(text.replace("[scoring]\n", '[scoring]\nmetrics = ["bleu", "rouge", "clipscore"]\n'))
    env = {**os.environ, "BENCH_RUNS": str(tmp_path / "runs"), "BENCH_CACHE": str(tmp_path / "cache"),
           "BENCH_SHARED_DATA": str(shared_data), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    loaded = tmp_path / "loaded.json"
    args = ["run", "--setting", str(setting), "--data", "flickr8k-1k", "--limit", "3", "--workers", "0",
            "--no-progress", "--log-with", "tensorboard"]
    proc = subprocess.run([sys.executable, "-c", PROBE, str(loaded), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = tmp_path / "runs" / "light" / "vit-gpt2"
    assert (run_dir / "results.json").is_file() and (run_dir / "tracking" / "tensorboard").is_dir()
    assert json.loads(loaded.read_text()) == []
