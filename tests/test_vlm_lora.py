"""LoRA on the zero-shot VLM itself, with the tiny LLaVA: it learns through bench's training loop,
captions what it learned with the inference prompt, resumes to the same adapter, reloads to the same
model without merging, and the base (vision tower included) stays untouched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bench.backends import backend_class
from bench.config import GenerationConfig, LoraConfig, ModelConfig, TrainConfig
from bench.data.types import Sample
from bench.errors import BenchError
from bench.training import train, training_pairs

CPU = torch.device("cpu")
TARGET = "a dog runs on the green grass ."  # every word is in the tiny tokenizer's corpus
OVERFIT = TrainConfig(epochs=16, lr=3e-2, batch_size=4, warmup_ratio=0.0)


def flickr_samples(shared_data: Path, n: int, caption: str | None = None) -> list[Sample]:
    from bench.data import read_references

    entries = sorted(read_references(shared_data / "flickr8k-1k" / "captions.txt"), key=lambda e: e.image_id)[:n]
    images = shared_data / "flickr8k-1k" / "images"
    return [Sample(e.image_id, images / (e.file_name or f"{e.image_id}.jpg"), (caption,) if caption else e.refs) for e in entries]


def load(model_dir: Path):
    torch.set_num_threads(1)
    return backend_class("llava").load(ModelConfig(model=str(model_dir)), CPU, prompt="brief")


def with_lora(model_dir: Path, lora: LoraConfig):
    captioner = load(model_dir)
    captioner.add_lora(lora)
    return captioner


def caption_batch(captioner, samples: list[Sample]) -> dict:
    return captioner.caption_collate()(samples)


@pytest.fixture(scope="module")
def trained(tiny_llava: Path, shared_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """The tiny LLaVA LoRA-trained to say TARGET for four photos, and its training folder."""
    out = tmp_path_factory.mktemp("vlm-lora") / "train"
    samples = flickr_samples(shared_data, 4, TARGET)
    captioner = with_lora(tiny_llava, LoraConfig(r=8, alpha=16, dropout=0.0, targets="attn_ffn"))
    result = train(captioner, training_pairs(samples), OVERFIT, out, seed=0, device=CPU, progress=False, num_workers=0)
    captioner.model.eval()
    return captioner, out, result, samples


def test_training_lowers_the_loss_and_the_inference_prompt_then_says_the_caption(trained) -> None:
    captioner, out, result, samples = trained
    rows = json.loads((out / "state.json").read_text())["rows"]
    assert len(rows) == OVERFIT.epochs and result.steps == OVERFIT.epochs
    assert rows[-1]["loss"] < 0.2 * rows[0]["loss"], [round(r["loss"], 3) for r in rows]
    # Captioning feeds the inference prompt only: the caption it learned must come back, so training
    # and inference share one token layout (a shifted prompt or a missing end token would not).
    captions = captioner.generate(caption_batch(captioner, samples), GenerationConfig(max_new_tokens=16))
    assert captions == [TARGET] * len(samples)


def test_only_lora_trains_and_the_base_is_left_as_loaded(trained, tiny_llava: Path) -> None:
    captioner, _, result, _ = trained
    fresh = load(tiny_llava).model.state_dict()
    state = captioner.model.state_dict()
    trainable = {n for n, p in captioner.model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n and ".language_model." in n for n in trainable)
    assert (result.trainable, result.total) == captioner.trainable_parameters()
    assert result.trainable == sum(p.numel() for n, p in captioner.model.named_parameters() if n in trainable)
    for name, value in fresh.items():  # not merged: every base weight is the loaded one
        key = name if name in state else name.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=name)


def test_reloaded_adapter_gives_the_in_memory_model(trained, tiny_llava: Path) -> None:
    captioner, out, _, samples = trained
    final = out / "adapter" / f"epoch-{OVERFIT.epochs}"
    assert not list(final.glob("adapter_model.bin")) and (final / "adapter_model.safetensors").is_file()
    saved = load_file(final / "adapter_model.safetensors")
    assert saved and all("lora_" in k for k in saved)
    reloaded = load(tiny_llava)
    reloaded.load_adapter(final)
    reloaded.model.eval()
    batch = caption_batch(captioner, samples)
    inputs = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    with torch.no_grad():
        expected, got = captioner.model(**inputs).logits, reloaded.model(**inputs).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    gen = GenerationConfig(max_new_tokens=16)
    assert reloaded.generate(batch, gen) == captioner.generate(batch, gen)
    fresh = load(tiny_llava).model
    with torch.no_grad():  # and the adapter matters: the base alone says something else
        base = fresh(**inputs).logits
    assert (base - expected).abs().max() > 1e-2
    # Applied without merging: the LoRA layers sit beside the loaded base weights, which are unchanged.
    q_proj = reloaded.model.model.language_model.layers[0].self_attn.q_proj
    assert hasattr(q_proj, "lora_A") and not q_proj.merged
    torch.testing.assert_close(q_proj.base_layer.weight, fresh.model.language_model.layers[0].self_attn.q_proj.weight, rtol=0, atol=0)


def test_resumed_training_ends_with_the_adapter_of_an_uninterrupted_run(tiny_llava: Path, shared_data: Path, tmp_path: Path) -> None:
    # Dropout, accumulation and warmup all on: RNG, optimizer and scheduler state must resume.
    lora = LoraConfig(r=4, alpha=8, dropout=0.2, targets="attn")
    cfg = TrainConfig(epochs=2, lr=5e-3, batch_size=2, grad_accum=2, warmup_ratio=0.3, weight_decay=0.01)
    pairs = training_pairs(flickr_samples(shared_data, 2))[:10]  # 5 batches an epoch, 3 optimizer steps
    run = lambda c, out: train(c, pairs, cfg, out, seed=7, device=CPU, progress=False, num_workers=0)  # noqa: E731

    straight = run(with_lora(tiny_llava, lora), tmp_path / "straight")
    assert (straight.epochs_done, straight.steps) == (2, 6)

    torch.manual_seed(1)
    first = with_lora(tiny_llava, lora)
    real_loss, calls = first.loss, [0]

    def dying_loss(batch):  # a SIGKILL after epoch 1 was saved and 3 batches of epoch 2
        calls[0] += 1
        if calls[0] > 8:
            raise KeyboardInterrupt
        return real_loss(batch)

    first.loss = dying_loss
    with pytest.raises(KeyboardInterrupt):
        run(first, tmp_path / "resumed")
    torch.manual_seed(12345)  # a new process: another global RNG, another LoRA init
    resumed = run(with_lora(tiny_llava, lora), tmp_path / "resumed")
    assert resumed.resumed_from_epoch == 1 and resumed.steps == 6

    expected = load_file(tmp_path / "straight" / "adapter" / "epoch-2" / "adapter_model.safetensors")
    got = load_file(tmp_path / "resumed" / "adapter" / "epoch-2" / "adapter_model.safetensors")
    assert expected.keys() == got.keys() and any(v.abs().max() > 0 for k, v in expected.items() if "lora_B" in k)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6, msg=key)


def test_adapter_errors_are_one_line(tiny_llava: Path, tmp_path: Path) -> None:
    captioner = with_lora(tiny_llava, LoraConfig(r=2, alpha=4, targets="attn"))
    with pytest.raises(BenchError, match="already has a LoRA adapter"):
        captioner.add_lora(LoraConfig(r=2, alpha=4, targets="attn"))
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "adapter_model.bin").write_bytes(b"\x80\x04N.")
    with pytest.raises(BenchError) as info:
        load(tiny_llava).load_adapter(tmp_path / "a")
    assert "pickle checkpoints are refused" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(BenchError, match="does not exist in the llava decoder"):
        load(tiny_llava).add_lora(LoraConfig(targets=("qkv",)))
