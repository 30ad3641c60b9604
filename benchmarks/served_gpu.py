"""GPU check, prepared and pending where no GPU (or no vLLM) is: `vllm serve` on the random-weight
LLaVA-1.5-7B folder, driven through bench's endpoint backend, vs HF `generate` at batch 32.

Both sides decode exactly NEW_TOKENS greedy tokens per image (random weights never stop on
their own: vLLM gets `ignore_eos`, HF `min_new_tokens`), on the same Flickr8k images:

1. build the folder: the real llava-1.5-7b-hf files of ../shared/models with seeded random bf16
   weights at full size (bench.testing.real_models, built on the GPU), saved once;
2. HF: bench's llava backend in bf16, `generate` at batch 32 (benchmarks.captioning.llava_throughput);
3. vLLM: the command `bench serve-command` prints for that folder (plus --enforce-eager and a
   memory cap, to start in well under the budget), then bench's endpoint loop
   (bench.served.stream) at max_concurrency 32.

Fits 10 minutes on one H100/H200 (build ~2 min, HF ~1 min, vLLM start ~3 min, captions < 1 min);
every step checks a deadline and the JSON says which step ran out.

    python benchmarks/served_gpu.py [--images 256] [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

NEW_TOKENS = 32
BATCH = 32
DEADLINE_S = 560
SERVED_NAME = "llava-1.5-7b-random"


def pending_reason() -> str | None:
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        return "GPU figures pending: no GPU on this machine"
    if importlib.util.find_spec("vllm") is None:
        return "vLLM figures pending: vllm is not installed here"
    return None


def build_folder(out: Path) -> Path:
    import torch

    from bench.testing.real_models import build_real_model, real_model_dir

    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # 14 GB of bf16 weights, drawn on the GPU
    try:
        with torch.device("cuda"):
            return build_real_model(real_model_dir("llava-hf/llava-1.5-7b-hf"), out, shrink=None)
    finally:
        torch.set_default_dtype(default)


def hf_side(folder: Path, samples: list[Any]) -> dict[str, Any]:
    import torch

    from benchmarks.captioning import llava_throughput, load_captioner

    captioner = load_captioner("llava", folder, torch.device("cuda"))
    row = llava_throughput(captioner, samples, BATCH, NEW_TOKENS)
    del captioner
    torch.cuda.empty_cache()
    return row


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def vllm_argv(folder: Path, port: int) -> list[str]:
    """`bench serve-command`'s line for a zero-shot setting on this folder, plus start-up flags."""
    from bench.config import ModelConfig, Setting
    from bench.served.serve_command import serve_command

    setting = Setting(name="served_gpu", source="benchmarks/served_gpu.py", backends=("llava",),
                      models={"llava": ModelConfig(model=str(folder))}, prompt="brief")
    plan = SimpleNamespace(setting=setting, backend="llava", kind="zero-shot", run_dir=None)
    argv = serve_command(plan, port).argv
    argv[argv.index("--served-model-name") + 1] = SERVED_NAME
    return argv + ["--enforce-eager", "--gpu-memory-utilization", "0.85", "--max-num-seqs", str(BATCH)]


def wait_ready(base_url: str, proc: subprocess.Popen, deadline: float) -> None:
    from bench.served.client import ClientConfig, list_models

    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vllm serve exited with {proc.returncode}")
        try:
            if SERVED_NAME in list_models(ClientConfig(base_url, timeout_s=5)):
                return
        except Exception:  # noqa: BLE001 - not listening yet
            pass
        time.sleep(2)
    raise TimeoutError("vllm serve did not answer /v1/models before the deadline")


def vllm_side(folder: Path, samples: list[Any], work: Path, deadline: float) -> dict[str, Any]:
    from bench.prompts import load_prompt
    from bench.served.client import ClientConfig
    from bench.served.records import served_path, summary
    from bench.served.stream import Endpoint, caption_via_endpoint

    port = free_port()
    argv = vllm_argv(folder, port)
    log = (work / "vllm.log").open("w")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "VLLM_NO_USAGE_STATS": "1"})
    try:
        base_url = f"http://127.0.0.1:{port}/v1"
        wait_ready(base_url, proc, deadline)
        endpoint = Endpoint(ClientConfig(base_url, max_concurrency=BATCH, timeout_s=120), SERVED_NAME,
                            load_prompt("brief", REPO / "prompts"), NEW_TOKENS, seed=0,
                            extra_body={"ignore_eos": True, "min_tokens": NEW_TOKENS})
        caption_via_endpoint(endpoint, samples[:BATCH], work / "warm", progress=False)  # not timed
        start = time.perf_counter()
        outcome = caption_via_endpoint(endpoint, samples, work / "timed", progress=False)
        wall = time.perf_counter() - start
        tokens = summary(served_path(work / "timed"), [s.image_id for s in samples])
        return {"images_per_s": round(len(samples) / wall, 2), "wall_s": round(wall, 2), "failed": len(outcome.failed),
                "completion_tokens_per_image": tokens["completion_tokens_per_image"], "command": " ".join(argv)}
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def run(images: int = 256) -> dict[str, Any]:
    reason = pending_reason()
    if reason is not None:
        return {"served_gpu": {"gpu": None, "reason": reason}}
    import torch

    from benchmarks.captioning import flickr_samples

    deadline = time.monotonic() + DEADLINE_S
    samples = flickr_samples(images)
    work = Path(tempfile.mkdtemp(prefix="bench-served-gpu-"))
    out: dict[str, Any] = {"gpu": torch.cuda.get_device_name(0), "images": images, "new_tokens": NEW_TOKENS, "batch": BATCH}
    try:
        folder = build_folder(work / "llava7b")
        torch.cuda.empty_cache()
        out["hf_generate"] = hf_side(folder, samples)
        out["vllm"] = vllm_side(folder, samples, work, deadline)
        out["speedup"] = round(out["vllm"]["images_per_s"] / out["hf_generate"]["images_per_s"], 2)
    except Exception as exc:  # noqa: BLE001 - the JSON says which step failed
        out["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        log = work / "vllm.log"
        if log.is_file():
            out["vllm_log_tail"] = log.read_text(errors="replace")[-3000:]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"served_gpu": out}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = run(args.images)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
