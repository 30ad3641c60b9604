"""`make bench` "served" section: captioning through an endpoint at concurrency 1 vs 16.

The loopback OpenAI-compatible server (bench.testing.openai_server) runs the tiny LLaVA behind
real HTTP with a fixed per-request latency (LATENCY_S, standing for a hosted API's or a busy
server's round trip); bench's endpoint loop (bench.served.stream, the real openai client) captions
the same Flickr8k images at max_concurrency 1 and 16, side by side in this run. The server
generates one request at a time (its model is not thread-safe), so the speed-up comes from
overlapping the latency, as with a real server that batches concurrent requests.

Reported: images/s at each concurrency, the ratio (target >= 8x), whether the captions are
identical, and the server's maximum requests in flight.

    python benchmarks/served.py [--images N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

LATENCY_S = 0.5
CONCURRENCY = (1, 16)
IMAGES = 32
MAX_NEW_TOKENS = 8
# The images sent are Flickr8k photos (run_all skips the section without them).
NEEDS_SHARED_DATA = ("flickr8k-1k/captions.txt", "flickr8k-1k/images")


def _caption(server: Any, samples: list[Any], concurrency: int, work: Path) -> tuple[float, dict[str, str], int]:
    from bench.predictions_file import existing_predictions
    from bench.prompts import load_prompt
    from bench.served.client import ClientConfig
    from bench.served.stream import Endpoint, caption_via_endpoint

    run_dir = work / f"c{concurrency}"
    run_dir.mkdir(parents=True)
    endpoint = Endpoint(ClientConfig(server.base_url, max_concurrency=concurrency), "tiny-vlm",
                        load_prompt("brief", REPO / "prompts"), MAX_NEW_TOKENS)
    server.stats.max_in_flight = 0  # this measurement's maximum
    start = time.perf_counter()
    outcome = caption_via_endpoint(endpoint, samples, run_dir, progress=False)
    wall = time.perf_counter() - start
    if outcome.failed:
        raise RuntimeError(f"{len(outcome.failed)} images failed: {next(iter(outcome.failed.values()))}")
    return wall, existing_predictions(run_dir / "predictions.jsonl", samples), server.stats.max_in_flight


def run(images: int = IMAGES, gpu: bool = True) -> dict[str, Any]:
    """The CPU figure, then the GPU one (benchmarks/served_gpu.py: pending without a GPU and vLLM)."""
    from benchmarks import served_gpu

    out = run_cpu(images)
    out.update(served_gpu.run() if gpu else {"served_gpu": {"gpu": None, "reason": "skipped (--quick)"}})
    return out


def run_cpu(images: int = IMAGES) -> dict[str, Any]:
    from bench.testing.openai_server import OpenAIServer, TinyVlmAnswerer
    from benchmarks.captioning import flickr_samples, tiny_model

    samples = flickr_samples(images)
    work = Path(tempfile.mkdtemp(prefix="bench-served-"))
    rows: dict[int, dict[str, Any]] = {}
    captions: dict[int, dict[str, str]] = {}
    try:
        with OpenAIServer(TinyVlmAnswerer(tiny_model("llava")), latency_s=LATENCY_S, idle_timeout_s=600) as server:
            _caption(server, samples[:2], 2, work / "warm")  # model and client warm-up, not timed
            for c in CONCURRENCY:
                wall, captions[c], in_flight = _caption(server, samples, c, work)
                rows[c] = {"images_per_s": round(len(samples) / wall, 2), "wall_s": round(wall, 2), "max_in_flight": in_flight}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    low, high = CONCURRENCY
    same = sum(captions[low][i] == captions[high].get(i) for i in captions[low]) / len(samples)
    return {"served": {
        "images": len(samples), "latency_s": LATENCY_S, "max_new_tokens": MAX_NEW_TOKENS,
        "by_concurrency": {str(c): v for c, v in rows.items()},
        "speedup": round(rows[high]["images_per_s"] / rows[low]["images_per_s"], 2),
        "captions_identical_fraction": same,
    }}


def summary_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The lines of `make bench`'s table for this section."""
    rows = []
    s = r.get("served")
    if s:
        rows.append(_cpu_row(s))
    g = r.get("served_gpu") or {}
    if g.get("speedup"):
        rows.append((f"vllm serve vs HF generate (batch {g['batch']}), LLaVA-1.5-7B", f"{g['speedup']:.1f}x",
                     f"{g['gpu']}: {g['vllm']['images_per_s']} vs {g['hf_generate']['images_per_s']} img/s, "
                     f"{g['new_tokens']} new tokens, random weights, through bench's endpoint backend"))
    elif g:
        rows.append(("vllm serve vs HF generate (batch 32), LLaVA-1.5-7B", "pending",
                     g.get("error") or g.get("reason", "not run")))
    return rows


def _cpu_row(s: dict[str, Any]) -> tuple[str, str, str]:
    lo, hi = (s["by_concurrency"][str(c)] for c in CONCURRENCY)
    return (
        f"endpoint captioning, concurrency {CONCURRENCY[1]} vs {CONCURRENCY[0]}",
        f"{s['speedup']:.1f}x",
        f"{s['images']} Flickr8k images, tiny LLaVA behind the loopback server with {s['latency_s']} s per request: "
        f"{hi['images_per_s']} vs {lo['images_per_s']} img/s (max in flight {hi['max_in_flight']}); captions "
        f"identical: {100 * s['captions_identical_fraction']:.1f}%",
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=IMAGES)
    result = run(parser.parse_args().images)
    print(json.dumps(result, indent=2))
    for row in summary_rows(result):
        print(" | ".join(row))
