"""Real architectures on CPU: images/s and peak memory of each default model's architecture at
FULL width, so a user can relate their machine to ours.

Every model is built by `bench.testing.real_models` from its real hub files in ../shared/models (real
config, tokenizer and processor; seeded random weights, nothing downloaded), saved, then loaded
and run through bench's own code in a fresh subprocess, so its peak memory is its own:
- vit-gpt2      nlpconnect/vit-gpt2-image-captioning, full (ViT-B/16 + GPT-2 124M);
- clip-flan-t5  openai/clip-vit-base-patch16 (full CLIP checkpoint) + google/flan-t5-base, full;
- llava         llava-hf/llava-1.5-7b-hf at full width (CLIP ViT-L/14-336 tower, projector,
                Llama hidden 4096, vocab 32064) but LLAVA_TEXT_LAYERS of its 32 Llama layers;
- clipscore     openai/clip-vit-base-patch32, full: CLIPScore + RefCLIPScore of the captions.

Captioning: `bench.captioning.caption_samples`, one batch of BATCH Flickr8k images, greedy, exactly
max_new_tokens new tokens (random weights never emit an end token): 30 for the LoRA captioners,
64 for LLaVA (bench's defaults). images/s = images / wall seconds of that call; CPU s/image = CPU seconds of
the process (every thread) from loading the model to the end, per image (steadier than wall time
on a shared machine); peak memory = the process's peak RSS over the same span (the build before
it excluded through `reset_peak_memory`).

    python benchmarks/real_architectures.py [--only vit-gpt2,llava] [--images 8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BATCH = 8
LLAVA_TEXT_LAYERS = 2
MODELS = ("vit-gpt2", "clip-flan-t5", "llava", "clipscore")
HUB_IDS = {
    "vit-gpt2": "nlpconnect/vit-gpt2-image-captioning",
    "llava": "llava-hf/llava-1.5-7b-hf",
    "clipscore": "openai/clip-vit-base-patch32",
}


def _build(name: str, out: Path) -> Path:
    from bench.testing.real_models import build_real_clip_flan_t5, build_real_model, real_model_dir

    if name == "clip-flan-t5":
        return build_real_clip_flan_t5(out, shrink=False)
    depth = {"text_config": LLAVA_TEXT_LAYERS} if name == "llava" else None
    return build_real_model(real_model_dir(HUB_IDS[name]), out, shrink=False, depth=depth)


def _parameters(folder: Path) -> int:
    from safetensors import safe_open

    total = 0
    for path in folder.rglob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            total += sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())
    return total


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _caption(name: str, folder: Path, samples: list[Any], out: Path) -> dict[str, Any]:
    import torch

    from bench.backends import backend_class
    from bench.captioning import caption_samples
    from bench.config import GenerationConfig, ModelConfig
    from bench.prompts import load_prompt

    prompt = load_prompt("brief") if name == "llava" else None
    captioner = backend_class(name).load(ModelConfig(model=str(folder)), torch.device("cpu"), prompt=prompt)
    gen = GenerationConfig(batch_size=BATCH).for_kind(zero_shot=name == "llava")
    stats = caption_samples(captioner, samples, gen, out / "predictions.jsonl", num_workers=0, progress=False)
    return {"images": stats.n_captioned, "seconds": round(stats.wall_s, 2), "new_tokens": gen.max_new_tokens,
            "images_per_s": round(stats.n_captioned / stats.wall_s, 3), "cut_at_max_new_tokens": stats.n_truncated}


def _clipscore(folder: Path, samples: list[Any]) -> dict[str, Any]:
    from bench.scoring.clipscore import ClipScorer

    scorer = ClipScorer(str(folder), device="cpu", batch_size=BATCH)
    scorer.load()
    start = time.perf_counter()
    scorer.score([s.refs[0] for s in samples], [list(s.refs[1:]) for s in samples], [s.path for s in samples])
    seconds = time.perf_counter() - start
    return {"images": len(samples), "seconds": round(seconds, 2), "images_per_s": round(len(samples) / seconds, 3),
            "texts_per_image": len(samples[0].refs)}


def measure_one(name: str, n_images: int) -> dict[str, Any]:
    """Build, load and run one model in this process; the figures of one table row."""
    import torch

    from bench.run.environment import peak_memory, reset_peak_memory
    from benchmarks.captioning import flickr_samples

    torch.set_num_threads(os.cpu_count() or 1)
    samples = flickr_samples(n_images)
    with tempfile.TemporaryDirectory(prefix=f"bench-real-{name}-") as tmp:
        started = time.perf_counter()
        folder = _build(name, Path(tmp) / "model")
        build_s = time.perf_counter() - started
        import gc

        gc.collect()
        reset_peak_memory()
        load_average, cpu_before = os.getloadavg()[0], time.process_time()
        figures = _clipscore(folder, samples) if name == "clipscore" else _caption(name, folder, samples, Path(tmp))
        # CPU seconds (all threads) of loading + running: steadier than wall time on a shared machine.
        figures["cpu_s_per_image"] = round((time.process_time() - cpu_before) / figures["images"], 2)
        figures.update(
            load_average_at_start=round(load_average, 2),
            model=HUB_IDS.get(name, "google/flan-t5-base + openai/clip-vit-base-patch16"),
            parameters=_parameters(folder), build_s=round(build_s, 1), threads=torch.get_num_threads(),
            peak_rss_mb=peak_memory()["peak_rss_mb"],
            depth=f"{LLAVA_TEXT_LAYERS} of 32 Llama layers, full width" if name == "llava" else "full",
        )
    return figures


def run(only: tuple[str, ...] = MODELS, n_images: int = BATCH) -> dict[str, Any]:
    """Each model in its own subprocess (its own peak memory); one dict per model."""
    rows: dict[str, Any] = {}
    for name in only:
        done = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--one", name, "--images", str(n_images)],
            cwd=REPO, capture_output=True, text=True, timeout=1800, env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        if done.returncode != 0:
            raise RuntimeError(f"{name}: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
        rows[name] = json.loads(done.stdout.strip().splitlines()[-1])
    return {"real_architectures": rows, "real_architectures_batch": BATCH}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    parser.add_argument("--images", type=int, default=BATCH)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # the per-model subprocess
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    if args.one:
        print(json.dumps(measure_one(args.one, args.images)))
        return
    print(json.dumps(run(tuple(args.only.split(",")), args.images), indent=2))


if __name__ == "__main__":
    main()
