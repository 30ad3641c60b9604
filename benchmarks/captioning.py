"""Captioning throughput: bench's batched DataLoader path vs a naive per-image `generate` loop,
and (on a GPU) a full-size LLaVA-1.5-7B architecture with random weights.

CPU part, per tiny backend, side by side in one process with the same thread count:
- bench: `bench.captioning.caption_samples` (batch 32, 2 DataLoader workers decoding and
  preprocessing images while the model generates, checksummed appends per batch);
- naive: for each image, decode it, run the processor, `generate` with batch size 1.
ViT-GPT2 runs on the 1,000 Flickr8k images (issue 4's figure); the other two on the first
`--images-other` (default 200) to keep `make bench` under 10 minutes; the table says which.

GPU part (CUDA only): LLaVA-1.5-7B built from its config (CLIP ViT-L/14-336 + Vicuna-7B, the
same parameter count and FLOPs as llava-hf/llava-1.5-7b-hf; random bf16 weights, nothing
downloaded), written once to a temp folder and loaded through bench's own LLaVA backend in bf16
and 4-bit NF4; captioning with exactly 32 new tokens at batch 1 and 32: images/s, peak memory,
and model FLOPs utilisation against the GPU's dense bf16 peak.

    python benchmarks/captioning.py [--images N] [--images-other N] [--backends a,b]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BATCH = 32
WORKERS = 2
MAX_NEW_TOKENS = 30
DEFAULT_IMAGES = {"vit-gpt2": 1000, "clip-flan-t5": 200, "llava": 200}

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, TFLOP/s; matched in
# order against torch.cuda.get_device_name().
GPU_BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.5),
    ("H100", 989.4),  # SXM (HBM3)
    ("A100", 312.0),
    ("L40S", 362.05),
    ("L4", 121.0),
)


# --- CPU: batched vs naive -----------------------------------------------------------------------

def flickr_samples(n: int) -> list[Any]:
    """The first n Flickr8k images (sorted by file name) as bench Samples."""
    from bench.data import read_references
    from bench.data.types import Sample
    from bench.paths import shared_data_dir

    root = shared_data_dir() / "flickr8k-1k"
    entries = sorted(read_references(root / "captions.txt"), key=lambda e: e.image_id)[:n]
    return [Sample(e.image_id, root / "images" / (e.file_name or f"{e.image_id}.jpg"), e.refs) for e in entries]


def tiny_model(backend: str) -> Path:
    from bench.paths import cache_dir
    from bench.testing.tiny import build_tiny

    out = cache_dir() / "benchmarks" / f"tiny-{backend}"
    if not (out / ".built").exists():
        shutil.rmtree(out, ignore_errors=True)
        build_tiny(backend, out, 0)
        (out / ".built").write_text("ok\n")
    return out


def load_captioner(backend: str, model_dir: Path, device: Any, quantization: str = "none") -> Any:
    from bench.backends import backend_class
    from bench.config import ModelConfig
    from bench.prompts import load_prompt

    prompt = load_prompt("brief", REPO / "prompts") if backend == "llava" else None
    return backend_class(backend).load(ModelConfig(model=str(model_dir), quantization=quantization), device, prompt=prompt)  # type: ignore[arg-type]


def naive_loop(captioner: Any, samples: Sequence[Any], gen: Any) -> tuple[float, dict[str, str]]:
    """Decode, preprocess and generate one image at a time (what a first script does)."""
    collate = captioner.caption_collate()
    one = replace(gen, batch_size=1)
    start = time.perf_counter()
    captions = {s.image_id: captioner.generate(collate([s]), one)[0] for s in samples}
    return time.perf_counter() - start, captions


def batched_bench(captioner: Any, samples: Sequence[Any], gen: Any, work: Path) -> tuple[float, dict[str, str]]:
    from bench.captioning import caption_samples, existing_predictions

    path = work / f"{captioner.name}.jsonl"
    path.unlink(missing_ok=True)
    start = time.perf_counter()
    caption_samples(captioner, samples, gen, path, WORKERS, progress=False)
    return time.perf_counter() - start, existing_predictions(path, samples)


def run_cpu(images: dict[str, int] | None = None) -> dict[str, Any]:
    import torch

    from bench.config import GenerationConfig
    from bench.run.environment import cpu_thread_budget

    images = dict(DEFAULT_IMAGES if images is None else images)
    threads = int(os.environ.get("OMP_NUM_THREADS") or cpu_thread_budget(os.cpu_count() or 1, WORKERS))
    torch.set_num_threads(threads)  # both paths alike: what `bench run` uses on this machine
    gen = GenerationConfig(batch_size=BATCH, max_new_tokens=MAX_NEW_TOKENS)
    all_samples = flickr_samples(max(images.values()))
    per_backend: dict[str, dict[str, Any]] = {}
    work = Path(tempfile.mkdtemp(prefix="bench-captioning-"))
    try:
        for backend, n in images.items():
            samples = all_samples[:n]
            captioner = load_captioner(backend, tiny_model(backend), torch.device("cpu"))
            captioner.generate(captioner.caption_collate()(samples[:2]), gen)  # warm-up, untimed
            batched_s, batched = batched_bench(captioner, samples, gen, work)
            naive_s, naive = naive_loop(captioner, samples, gen)
            same = sum(batched[s.image_id] == naive[s.image_id] for s in samples)
            per_backend[backend] = {
                "images": n,
                "bench_images_per_s": round(n / batched_s, 2),
                "naive_images_per_s": round(n / naive_s, 2),
                "speedup": round(naive_s / batched_s, 2),
                "bench_s": round(batched_s, 2),
                "naive_s": round(naive_s, 2),
                "captions_identical_fraction": round(same / n, 4),
            }
            del captioner
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total_bench = sum(v["bench_s"] for v in per_backend.values())
    total_naive = sum(v["naive_s"] for v in per_backend.values())
    speedup = {k: v["speedup"] for k, v in per_backend.items()}
    speedup["overall"] = round(total_naive / total_bench, 2)  # same images, summed seconds
    return {
        "batched_vs_naive_speedup": speedup,
        "captioning": per_backend,
        "captioning_threads": threads,
        "captioning_batch_size": BATCH,
        "captioning_workers": WORKERS,
        "captioning_max_new_tokens": MAX_NEW_TOKENS,
    }


# --- GPU: LLaVA-1.5-7B architecture --------------------------------------------------------------

def llava_15_7b_config(image_token_index: int = 32000, pad_token_id: int = 32001) -> Any:
    """llava-hf/llava-1.5-7b-hf's architecture, written out by hand (no download).

    Vision: CLIP ViT-L/14 at 336 px (24 layers, width 1024, 16 heads, MLP 4096, quick-GELU),
    features from the second-to-last layer without CLS; projector 1024 -> 4096 -> 4096 (GELU);
    text: Vicuna-7B v1.5 = LLaMA-7B (32 layers, width 4096, 32 heads, MLP 11008, RMSNorm 1e-5,
    4,096 positions) with the vocabulary grown to 32,064. 7,063,427,072 parameters.
    """
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5,
    )
    text = LlamaConfig(
        vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5,
        hidden_act="silu", rope_theta=10000.0, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, pad_token_id=pad_token_id,
    )
    return LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=image_token_index,
        projector_hidden_act="gelu", vision_feature_select_strategy="default", vision_feature_layer=-2,
        image_seq_length=576, tie_word_embeddings=False,
    )


def parameter_count(config: Any) -> int:
    """Parameters of LlavaForConditionalGeneration(config), counted on the meta device (no memory)."""
    import torch
    from transformers import LlavaForConditionalGeneration

    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    return sum(p.numel() for p in model.parameters())


def llava_generate_flops(config: Any, prompt_tokens: int, new_tokens: int) -> float:
    """Model FLOPs to caption one image: vision tower + projector + LM prefill + decode.

    Matmul FLOPs are 2 per weight per token; attention adds 4 * d * context per token and layer
    (scores and weighted sum). The LM head runs once per generated token (prefill keeps only the
    last position's logits, as transformers' generate does).
    """
    v, t = config.vision_config, config.text_config
    n_patches = (v.image_size // v.patch_size) ** 2
    v_tokens = n_patches + 1
    v_layer = 4 * v.hidden_size**2 + 2 * v.hidden_size * v.intermediate_size
    vision = v.num_hidden_layers * (2 * v_layer * v_tokens + 4 * v.hidden_size * v_tokens**2)
    projector = 2 * n_patches * (v.hidden_size * t.hidden_size + t.hidden_size**2)
    kv = t.hidden_size // t.num_attention_heads * t.num_key_value_heads
    t_layer = 2 * t.hidden_size**2 + 2 * t.hidden_size * kv + 3 * t.hidden_size * t.intermediate_size
    head = 2 * t.hidden_size * t.vocab_size
    prefill = t.num_hidden_layers * (2 * t_layer * prompt_tokens + 2 * t.hidden_size * prompt_tokens**2)
    decode = 0.0
    for step in range(new_tokens):
        context = prompt_tokens + step + 1
        decode += t.num_hidden_layers * (2 * t_layer + 4 * t.hidden_size * context)
    return float(vision + projector + prefill + decode + head * new_tokens)


def bf16_peak_tflops(device_name: str) -> float | None:
    for key, peak in GPU_BF16_PEAK_TFLOPS:
        if key in device_name:
            return peak
    return None


def llava_throughput(
    captioner: Any, samples: Sequence[Any], batch_size: int, new_tokens: int, repeats: int = 2
) -> dict[str, Any]:
    """Images/s of `new_tokens` greedy tokens per image (no early stop) at `batch_size`.

    Inputs come from the backend's own collate (decode, chat template, processor); one warm-up
    batch is not timed. Peak memory is CUDA's max allocated over the timed batches.
    """
    import torch

    model = captioner.model
    collate = captioner.caption_collate()
    batches = [collate(list(samples[i : i + batch_size])) for i in range(0, batch_size * (repeats + 1), batch_size)]
    dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    dtype = getattr(captioner, "dtype", dtype)

    def generate(batch: dict[str, Any]) -> Any:
        inputs = {
            k: (v.to(model.device).to(dtype) if v.is_floating_point() else v.to(model.device))
            for k, v in batch.items()
            if isinstance(v, torch.Tensor)
        }
        with torch.inference_mode():
            return model.generate(**inputs, do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens)

    on_cuda = model.device.type == "cuda"
    generate(batches[0])
    if on_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for batch in batches[1:]:
        out = generate(batch)
    if on_cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    prompt_tokens = int(batches[1]["input_ids"].shape[1])
    n_images = batch_size * repeats
    generated = int(out.shape[1]) - prompt_tokens
    return {
        "batch_size": batch_size,
        "images": n_images,
        "images_per_s": round(n_images / seconds, 3),
        "prompt_tokens": prompt_tokens,
        "new_tokens": generated,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if on_cuda else None,
    }


def build_random_llava(out_dir: Path, config: Any, device: Any) -> Path:
    """Random bf16 weights for `config` with a local tokenizer and a 336 px LLaVA processor."""
    import torch
    from transformers import CLIPImageProcessor, LlavaForConditionalGeneration, LlavaProcessor

    from bench.tiny.llava import IMAGE_TOKEN, LLAVA15_CHAT_TEMPLATE, build_llama_tokenizer

    tokenizer = build_llama_tokenizer()
    config.image_token_index = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    config.text_config.pad_token_id = tokenizer.pad_token_id
    config.text_config.bos_token_id = tokenizer.bos_token_id
    config.text_config.eos_token_id = tokenizer.eos_token_id
    size = config.vision_config.image_size
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}),
        tokenizer=tokenizer,
        patch_size=config.vision_config.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA15_CHAT_TEMPLATE,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out_dir, safe_serialization=True, max_shard_size="4GB")
    processor.save_pretrained(out_dir)
    del model
    return out_dir


def run_gpu(new_tokens: int = 32, batch_sizes: Sequence[int] = (1, 32), modes: Sequence[str] = ("none", "4bit")) -> dict[str, Any]:
    """The LLaVA-1.5-7B section; {"gpu": None, "reason": ...} without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return {"gpu": None, "reason": "GPU figures pending: no GPU on this machine"}
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    peak = bf16_peak_tflops(name)
    config = llava_15_7b_config()
    samples = flickr_samples(max(batch_sizes) * 3)
    work = Path(tempfile.mkdtemp(prefix="bench-llava7b-"))
    rows = []
    try:
        build_random_llava(work / "model", config, device)
        torch.cuda.empty_cache()
        for mode in modes:
            captioner = load_captioner("llava", work / "model", device, quantization=mode)
            for bs in batch_sizes:
                row = {"precision": "bf16" if mode == "none" else f"{mode} NF4" if mode == "4bit" else mode,
                       **llava_throughput(captioner, samples, bs, new_tokens)}
                flops = llava_generate_flops(captioner.model.config, row["prompt_tokens"], row["new_tokens"])
                row["tflops_per_image"] = round(flops / 1e12, 3)
                row["mfu"] = round(flops * row["images_per_s"] / (peak * 1e12), 4) if peak else None
                rows.append(row)
            del captioner
            torch.cuda.empty_cache()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "gpu": name,
        "bf16_peak_tflops": peak,
        "parameters": parameter_count(llava_15_7b_config()),
        "new_tokens": new_tokens,
        "rows": rows,
    }


def run(images: dict[str, int] | None = None, gpu: bool = True) -> dict[str, Any]:
    out = run_cpu(images)
    out["llava_7b_gpu"] = run_gpu() if gpu else {"gpu": None, "reason": "skipped (--no-gpu)"}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES["vit-gpt2"], help="ViT-GPT2 images")
    parser.add_argument("--images-other", type=int, default=DEFAULT_IMAGES["llava"], help="clip-flan-t5 and llava images")
    parser.add_argument("--backends", default=",".join(DEFAULT_IMAGES))
    parser.add_argument("--no-gpu", action="store_true")
    args = parser.parse_args()
    wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
    images = {b: args.images if b == "vit-gpt2" else args.images_other for b in wanted}
    import json

    print(json.dumps(run(images, gpu=not args.no_gpu), indent=2))


if __name__ == "__main__":
    main()
