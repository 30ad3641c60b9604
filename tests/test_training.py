"""The LoRA training loop: it learns, it resumes to the same weights, it caches, it refuses bad state."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bench.backends import backend_class
from bench.config import GenerationConfig, LoraConfig, ModelConfig, TrainConfig
from bench.data.types import Sample
from bench.errors import BenchError
from bench.training import LinearWarmupDecay, autocast_dtype, train, training_pairs

CPU = torch.device("cpu")
BACKENDS = ("vit-gpt2", "clip-flan-t5")


def flickr_samples(shared_data: Path, n: int) -> list[Sample]:
    from bench.data import read_references

    entries = sorted(read_references(shared_data / "flickr8k-1k" / "captions.txt"), key=lambda e: e.image_id)[:n]
    images = shared_data / "flickr8k-1k" / "images"
    return [Sample(e.image_id, images / (e.file_name or f"{e.image_id}.jpg"), e.refs) for e in entries]


@pytest.fixture
def samples(shared_data: Path) -> list[Sample]:
    return flickr_samples(shared_data, 4)


@pytest.fixture
def tiny(tiny_vit_gpt2: Path, tiny_clip_flan_t5: Path) -> dict[str, Path]:
    return {"vit-gpt2": tiny_vit_gpt2, "clip-flan-t5": tiny_clip_flan_t5}


def lora_captioner(model_dir: Path, backend: str, lora: LoraConfig):
    torch.set_num_threads(1)
    captioner = backend_class(backend).load(ModelConfig(model=str(model_dir)), CPU)
    captioner.add_lora(lora)
    return captioner


def words(text: str) -> set[str]:
    return set(text.lower().replace(".", " ").split())


# --- small pure parts ----------------------------------------------------------------------------

def test_linear_warmup_then_decay() -> None:
    schedule = LinearWarmupDecay(warmup=2, total=6)
    assert [schedule(s) for s in range(7)] == [0.0, 0.5, 1.0, 0.75, 0.5, 0.25, 0.0]
    assert LinearWarmupDecay(0, 4)(0) == 1.0


def test_precision_choice_on_cpu() -> None:
    assert autocast_dtype("auto", CPU) is None  # fp32 on CPU
    assert autocast_dtype("fp32", CPU) is None
    assert autocast_dtype("bf16", CPU) is torch.bfloat16
    with pytest.raises(BenchError, match="train.precision: 'fp16' needs a CUDA device"):
        autocast_dtype("fp16", CPU)


def test_training_pairs_take_every_reference_of_the_first_images(samples: list[Sample]) -> None:
    pairs = training_pairs(samples, train_size=2)
    assert pairs == [(s, r) for s in samples[:2] for r in s.refs]
    assert len(training_pairs(samples)) == sum(len(s.refs) for s in samples)


# --- it learns -----------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_overfitting_four_images_lowers_the_loss_and_moves_captions_to_the_references(
    backend: str, tiny: dict[str, Path], samples: list[Sample], tmp_path: Path
) -> None:
    captioner = lora_captioner(tiny[backend], backend, LoraConfig(r=8, alpha=16, dropout=0.0, targets="attn_ffn"))
    batch = captioner.caption_collate()(samples)
    gen = GenerationConfig(max_new_tokens=20)
    before = captioner.generate(batch, gen)
    pairs = [(s, s.refs[0]) for s in samples] * 30  # 30 steps of the same 4 images x 1 caption
    cfg = TrainConfig(epochs=1, lr=1e-2, batch_size=4, warmup_ratio=0.0)
    result = train(captioner, pairs, cfg, tmp_path / "train", seed=0, device=CPU, progress=False, num_workers=0)

    losses = [row["loss"] for row in json.loads((tmp_path / "train" / "state.json").read_text())["rows"]]
    assert result.steps == len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0]
    after = captioner.generate(batch, gen)
    assert after != before
    overlap = lambda caps: sum(len(words(c) & words(s.refs[0])) for c, s in zip(caps, samples))  # noqa: E731
    assert overlap(after) > overlap(before)
    assert 0 < result.trainable < result.total and 0 < result.trainable_pct < 100


# --- it resumes ----------------------------------------------------------------------------------

class Crash(Exception):
    """Stands in for a SIGKILL in the middle of an epoch."""


def crash_after(captioner, n_batches: int) -> None:
    """Make the captioner's loss raise on its (n_batches + 1)-th call."""
    real_loss, calls = captioner.loss, [0]

    def loss(batch):
        calls[0] += 1
        if calls[0] > n_batches:
            raise Crash
        return real_loss(batch)

    captioner.loss = loss


def adapter_tensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors = load_file(folder / "adapter_model.safetensors")
    if (folder / "projection.safetensors").exists():
        tensors.update({f"projection.{k}": v for k, v in load_file(folder / "projection.safetensors").items()})
    return tensors


@pytest.mark.parametrize("backend", BACKENDS)
def test_resumed_training_ends_with_the_weights_of_an_uninterrupted_run(
    backend: str, tiny: dict[str, Path], samples: list[Sample], tmp_path: Path
) -> None:
    # Dropout, accumulation and warmup all on, so RNG, optimizer and scheduler state must resume.
    lora = LoraConfig(r=4, alpha=8, dropout=0.2, targets="attn")
    cfg = TrainConfig(epochs=2, lr=5e-3, batch_size=2, grad_accum=2, warmup_ratio=0.3, weight_decay=0.01)
    pairs = training_pairs(samples[:3])[:10]  # 5 batches per epoch: the last accumulation group is short
    run = lambda c, out, **kw: train(c, pairs, cfg, out, seed=7, device=CPU, progress=False, **kw)  # noqa: E731

    whole = lora_captioner(tiny[backend], backend, lora)
    straight = run(whole, tmp_path / "straight", num_workers=1)  # workers must not change the result
    assert (straight.epochs_done, straight.steps, straight.resumed_from_epoch) == (2, 6, 0)

    torch.manual_seed(1)
    first = lora_captioner(tiny[backend], backend, lora)
    crash_after(first, n_batches=5 + 3)  # epoch 1 done and saved, epoch 2 dies after 3 batches
    with pytest.raises(Crash):
        run(first, tmp_path / "resumed", num_workers=0)
    assert sorted(p.name for p in (tmp_path / "resumed" / "adapter").iterdir() if not p.name.startswith(".")) == ["epoch-1"]

    torch.manual_seed(12345)  # a new process: different global RNG, different LoRA init
    second = lora_captioner(tiny[backend], backend, lora)
    resumed = run(second, tmp_path / "resumed", num_workers=0)
    assert resumed.resumed_from_epoch == 1 and resumed.steps == 6

    expected = adapter_tensors(tmp_path / "straight" / "adapter" / "epoch-2")
    got = adapter_tensors(tmp_path / "resumed" / "adapter" / "epoch-2")
    assert expected.keys() == got.keys() and expected
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6, msg=key)
    # The untrained start (B = 0) differs from the result: the comparison is not vacuous.
    assert any(v.abs().max() > 0 for k, v in expected.items() if "lora_B" in k)

    straight_rows = json.loads((tmp_path / "straight" / "state.json").read_text())["rows"]
    resumed_rows = json.loads((tmp_path / "resumed" / "state.json").read_text())["rows"]
    assert [r["step"] for r in resumed_rows] == list(range(1, 7))  # no duplicated partial-epoch rows
    for a, b in zip(straight_rows, resumed_rows):
        assert a["epoch"] == b["epoch"] and math.isclose(a["loss"], b["loss"], abs_tol=1e-5)
        assert math.isclose(a["lr"], b["lr"], rel_tol=1e-9)
    csv_lines = (tmp_path / "resumed" / "loss.csv").read_text().splitlines()
    assert csv_lines[0] == "step,epoch,loss,lr" and len(csv_lines) == 7


def test_outputs_cache_hit_and_changed_config(tiny_vit_gpt2: Path, samples: list[Sample], tmp_path: Path) -> None:
    lora = LoraConfig(r=4, alpha=8, dropout=0.0, targets="attn")
    cfg = TrainConfig(epochs=2, lr=1e-2, batch_size=4, warmup_ratio=0.0)
    pairs = training_pairs(samples)
    out = tmp_path / "train"
    trained = lora_captioner(tiny_vit_gpt2, "vit-gpt2", lora)
    result = train(trained, pairs, cfg, out, seed=0, device=CPU, progress=False, num_workers=0)

    state = json.loads((out / "state.json").read_text())
    assert state["epochs_done"] == 2 and state["step"] == result.steps == 10
    assert state["trainable"] == result.trainable and math.isclose(state["trainable_pct"], result.trainable_pct)
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    epoch_dir = out / "adapter" / "epoch-1"
    for name in ("adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "train_state.json"):
        assert (epoch_dir / name).is_file(), name
    assert not [p for p in (out / "adapter").iterdir() if p.name.startswith(".")]  # no temp folders left

    # Cache hit: a fresh model gets the final adapter, nothing is trained.
    fresh = lora_captioner(tiny_vit_gpt2, "vit-gpt2", lora)
    fresh.loss = lambda batch: pytest.fail("trained again")
    cached = train(fresh, pairs, cfg, out, seed=0, device=CPU, progress=False, num_workers=0)
    assert cached.cached and cached.steps == result.steps and cached.final_loss == result.final_loss
    batch = trained.caption_collate()(samples)
    gen = GenerationConfig(max_new_tokens=12)
    assert fresh.generate(batch, gen) == trained.generate(batch, gen)

    # Same folder, different configuration: refuse instead of mixing two runs.
    other = lora_captioner(tiny_vit_gpt2, "vit-gpt2", lora)
    with pytest.raises(BenchError, match=r"train_state\.json: field 'config\.train'"):
        train(other, pairs, TrainConfig(epochs=2, lr=5e-3, batch_size=4), out, seed=0, device=CPU, progress=False)


class NotAllowed:
    """Any class outside torch's weights_only allow-list."""


def test_checkpoint_with_pickled_objects_is_refused(tiny_vit_gpt2: Path, samples: list[Sample], tmp_path: Path) -> None:
    lora = LoraConfig(r=2, alpha=4, dropout=0.0, targets="attn")
    cfg = TrainConfig(epochs=2, lr=1e-3, batch_size=4)
    pairs = training_pairs(samples[:1])
    first = lora_captioner(tiny_vit_gpt2, "vit-gpt2", lora)
    crash_after(first, n_batches=2)
    with pytest.raises(Crash):
        train(first, pairs, cfg, tmp_path, seed=0, device=CPU, progress=False, num_workers=0)
    (tmp_path / "adapter" / "epoch-1" / "optimizer.pt").write_bytes(pickle.dumps(NotAllowed(), protocol=2))
    with pytest.raises(BenchError, match=r"optimizer\.pt: unreadable training checkpoint"):
        train(lora_captioner(tiny_vit_gpt2, "vit-gpt2", lora), pairs, cfg, tmp_path, seed=0, device=CPU, progress=False)


def test_training_without_lora_or_pairs_is_an_error(tiny_vit_gpt2: Path, samples: list[Sample], tmp_path: Path) -> None:
    plain = backend_class("vit-gpt2").load(ModelConfig(model=str(tiny_vit_gpt2)), CPU)
    with pytest.raises(BenchError, match="no trainable parameters"):
        train(plain, training_pairs(samples), TrainConfig(), tmp_path, seed=0, device=CPU, progress=False)
    plain.add_lora(LoraConfig(r=2, alpha=4))
    with pytest.raises(BenchError, match="no .*pairs"):
        train(plain, [], TrainConfig(), tmp_path, seed=0, device=CPU, progress=False)
    with pytest.raises(BenchError, match="train.grad_accum"):
        train(plain, training_pairs(samples), TrainConfig(grad_accum=0), tmp_path, seed=0, device=CPU, progress=False)
