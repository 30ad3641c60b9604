"""Train the tiny LLaVA's LoRA with bench.training in this process, or in each of the processes a
launcher started (DDP): `python tests/vlm_ddp_train.py MODEL_DIR OUT_DIR IMAGES_DIR`.

Every caption has the same number of tokens: the loss is a mean over each process's caption
tokens, so only then is the mean of the two processes' losses the single-process loss (see
tests/test_vlm_lora_ddp.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from bench.backends import backend_class
from bench.config import LoraConfig, ModelConfig, TrainConfig
from bench.data.types import Sample
from bench.distributed import detect
from bench.training import train, training_pairs

CAPTION = "a dog runs on the green grass ."
CONFIG = TrainConfig(epochs=2, lr=5e-3, batch_size=4, warmup_ratio=0.0)


def main(model_dir: str, out_dir: str, images_dir: str) -> None:
    torch.set_num_threads(1)
    dist = detect()
    device = torch.device("cpu")
    if dist.enabled:
        device = dist.device(device)
        dist.init(device)
    images = sorted(Path(images_dir).glob("*.jpg"))[:8]
    samples = [Sample(p.stem, p, (CAPTION,)) for p in images]
    torch.manual_seed(0)
    captioner = backend_class("llava").load(ModelConfig(model=model_dir), device, prompt="brief")
    captioner.add_lora(LoraConfig(r=4, alpha=8, dropout=0.0, targets="attn_ffn"))
    train(captioner, training_pairs(samples), CONFIG, Path(out_dir), seed=3, device=device,
          progress=False, num_workers=0, dist=dist)


if __name__ == "__main__":
    main(*sys.argv[1:4])
