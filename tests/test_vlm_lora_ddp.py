"""VLM LoRA trained by 2 CPU processes (torchrun, gloo, DDP through accelerate) ends with the adapter
and the loss curve of one process: the same schedule, the global batch split over the ranks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vlm_ddp_train

REPO = Path(__file__).resolve().parent.parent
SCRIPT = Path(vlm_ddp_train.__file__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_two_process_ddp_training_equals_one_process(tiny_llava: Path, shared_data: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "MASTER_ADDR": "127.0.0.1"}
    args = [str(tiny_llava), "", str(shared_data / "flickr8k-1k" / "images")]
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
              "--master_port", str(free_port())]
    args[1] = str(tmp_path / "two")
    done = subprocess.run([*launch, str(SCRIPT), *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    args[1] = str(tmp_path / "one")
    vlm_ddp_train.main(*args)  # one process: this one (torch already imported, one thread)

    one, two = (json.loads((tmp_path / n / "state.json").read_text()) for n in ("one", "two"))
    assert (one["processes"], two["processes"]) == (1, 2)
    assert [r["step"] for r in two["rows"]] == [r["step"] for r in one["rows"]] == [1, 2, 3, 4]
    for a, b in zip(one["rows"], two["rows"]):
        assert b["lr"] == a["lr"] and abs(b["loss"] - a["loss"]) < 1e-5, (a, b)
    expected = load_file(tmp_path / "one" / "adapter" / "epoch-2" / "adapter_model.safetensors")
    got = load_file(tmp_path / "two" / "adapter" / "epoch-2" / "adapter_model.safetensors")
    assert expected.keys() == got.keys() and any(v.abs().max() > 0 for k, v in expected.items() if "lora_B" in k)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-5, msg=key)
