"""DDP training is the single-process schedule: precision from the setting only (not from
`accelerate launch --mixed_precision`), every training pair exactly once per epoch."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from bench.distributed import Dist
from conftest import REPO
from test_distributed import env_for, free_port

# 3 images x 5 references = 15 pairs in batches of 14: the second batch holds ONE pair, so rank 1's
# share of it is empty (accelerate's even_batches would pad it with 13 pairs of the first batch).
TRAIN_IMAGES, BATCH, EPOCHS = 3, 14, 2


@pytest.mark.parametrize("n, batch, world", [(15, 14, 2), (20, 8, 2), (7, 4, 3), (5, 8, 2)])
def test_rank_shares_cover_the_single_process_batches_once(n: int, batch: int, world: int) -> None:
    from bench.ddp import rank_shares

    pairs = [f"pair{i}" for i in range(n)]
    single = [[pairs[i] for i in b.tolist()] for b in torch.utils.data.DataLoader(
        range(n), batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(3))]
    shares = [rank_shares(pairs, batch, torch.Generator().manual_seed(3), Dist(r, world, r)) for r in range(world)]
    assert all(len(s) == len(single) for s in shares)  # every rank steps with every batch
    for b, expected in enumerate(single):
        counted = [p for s in shares for p in s[b][0] if s[b][1]]
        assert counted == expected  # rank order = the single-process batch, each pair once
        assert all(len(s[b][0]) >= 1 for s in shares)  # an empty share runs a weight-0 stand-in


def _launch(model: Path, out: Path, shared_data: Path, precision: str) -> None:
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", precision, "--dynamo_backend", "no",
        "--main_process_port", str(free_port()), str(REPO / "tests" / "ddp_probe.py"),
        str(model), str(out), str(TRAIN_IMAGES), str(BATCH), str(EPOCHS),
    ]
    # PYTHONPATH: a script's own folder leads sys.path, and `bench` must be this checkout's.
    env = {**env_for(out, shared_data), "PYTHONPATH": str(REPO)}
    done = subprocess.run(launch, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def _losses(out: Path) -> list[float]:
    return [row["loss"] for row in json.loads((out / "rank0.json").read_text())["rows"]]


@pytest.mark.slow
def test_ddp_under_a_bf16_launcher_trains_the_single_process_fp32_curve_on_every_pair_once(
    tmp_path: Path, tiny_vit_gpt2: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ddp_probe import probe

    monkeypatch.setenv("BENCH_SHARED_DATA", str(shared_data))
    torch.set_num_threads(1)
    single = probe(str(tiny_vit_gpt2), tmp_path / "single", TRAIN_IMAGES, BATCH, EPOCHS)
    assert len(single["pairs"]) == 15
    _launch(tiny_vit_gpt2, tmp_path / "bf16", shared_data, "bf16")

    # The launcher's bf16 changes nothing: the fp32 loss curve of one process.
    assert len(_losses(tmp_path / "bf16")) == EPOCHS * 2
    assert _losses(tmp_path / "bf16") == pytest.approx([row["loss"] for row in single["rows"]], rel=1e-5)

    # Every pair exactly once per epoch, over both ranks (the weight-0 stand-in not counted).
    ranks = [json.loads((tmp_path / "bf16" / f"rank{r}.json").read_text())["seen"] for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == EPOCHS * 2
    assert [c["counted"] for c in ranks[1]] == [True, False] * EPOCHS
    for epoch in range(EPOCHS):
        calls = [c for rank in ranks for c in rank[epoch * 2 : epoch * 2 + 2] if c["counted"]]
        seen = Counter(text for c in calls for text in c["texts"])
        assert seen == Counter(text for c in single["seen"][epoch * 2 : epoch * 2 + 2] for text in c["texts"])
        assert sum(seen.values()) == 15


@pytest.mark.parametrize("launcher_precision", ["fp16", "bf16"])
def test_the_accelerator_never_takes_the_launchers_mixed_precision(
    launcher_precision: str, tiny_vit_gpt2: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `accelerate launch --mixed_precision X` (or an accelerate config) leaves in the
    environment; with it the Accelerator would autocast the forward (and on a GPU, fp16 would
    add a GradScaler bench does not step)."""
    from accelerate.state import AcceleratorState

    from bench.backends import backend_class
    from bench.config import LoraConfig, ModelConfig, TrainConfig
    from bench.ddp import prepare_parallel

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", launcher_precision)
    captioner = backend_class("vit-gpt2").load(ModelConfig(model=str(tiny_vit_gpt2)), torch.device("cpu"))
    captioner.add_lora(LoraConfig(r=2, alpha=4, targets="attn"))
    optimizer = torch.optim.AdamW([p for p in captioner.torch_module().parameters() if p.requires_grad])
    try:
        parallel, _ = prepare_parallel(captioner, optimizer, TrainConfig(precision="fp32"), torch.device("cpu"), Dist())
        assert parallel.accelerator.mixed_precision == "no"
        assert parallel.accelerator.scaler is None and not parallel.accelerator.native_amp
    finally:
        AcceleratorState._reset_state(True)
