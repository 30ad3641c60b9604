"""Train the tiny ViT-GPT2's LoRA through `bench.training.train` and record what it saw.

Run by tests/test_real_ddp.py, once in-process (single) and under `accelerate launch` (2 gloo
processes on CPU). Writes OUT/rank<k>.json: the loss rows, and per loss call the decoded label
texts and whether that micro-batch counted (False: the weight-0 stand-in of an empty share).

    python tests/ddp_probe.py MODEL_DIR OUT_DIR TRAIN_IMAGES BATCH EPOCHS
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def probe(model_dir: str, out_dir: Path, train_images: int, batch: int, epochs: int) -> dict[str, Any]:
    import torch

    from bench.backends import backend_class
    from bench.config import LoraConfig, ModelConfig, TrainConfig
    from bench.data import load_dataset, make_split
    from bench.distributed import detect
    from bench.training import train, training_pairs

    device = torch.device("cpu")
    dist = detect()
    dist.init(device)
    torch.manual_seed(0)
    captioner = backend_class("vit-gpt2").load(ModelConfig(model=model_dir), device)
    captioner.add_lora(LoraConfig(r=4, alpha=8, dropout=0.0, targets="attn"))
    seen: list[dict[str, Any]] = []
    loss = captioner.loss

    def recording_loss(b: dict[str, Any]) -> torch.Tensor:
        labels = [[t for t in row if t != -100] for row in b["labels"].tolist()]
        seen.append({"texts": captioner.tokenizer.batch_decode(labels), "counted": bool(b.get("_bench_counted", True))})
        return loss(b)

    captioner.loss = recording_loss  # LossModule looks the loss up on every call
    pairs = training_pairs(make_split(load_dataset("flickr8k-1k", progress=False)).train, train_images)
    cfg = TrainConfig(epochs=epochs, lr=1e-3, batch_size=batch, warmup_ratio=0.0, precision="fp32")
    train(captioner, pairs, cfg, out_dir / "train", seed=0, device=device, progress=False,
          num_workers=0, dist=dist)
    state = json.loads((out_dir / "train" / "state.json").read_text()) if dist.is_main else {}
    record = {"rows": state.get("rows", []), "seen": seen, "pairs": [c for _, c in pairs]}
    (out_dir / f"rank{dist.rank}.json").write_text(json.dumps(record))
    return record


if __name__ == "__main__":
    model, out, images, batch_size, n_epochs = sys.argv[1:6]
    probe(model, Path(out), int(images), int(batch_size), int(n_epochs))
