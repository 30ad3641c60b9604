"""`clip-flan-t5` backend on a tiny random CLIP-vision + T5 bundle loaded by path."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest
import torch

from bench.backends import backend_class
from bench.config import GenerationConfig, LoraConfig, ModelConfig
from bench.data.types import Sample
from bench.errors import BenchError

BACKEND = "clip-flan-t5"
CPU = torch.device("cpu")
ATTN = {f"{block}.{p}" for block in ("layer.0.SelfAttention", "layer.1.EncDecAttention") for p in "qkvo"}
FFN = {"layer.2.DenseReluDense.wi_0", "layer.2.DenseReluDense.wi_1", "layer.2.DenseReluDense.wo"}  # gated, like Flan-T5
BLOCK = r"^t5\.decoder\.block\.\d+\."


def flickr_samples(shared_data: Path, n: int) -> list[Sample]:
    """The first n Flickr8k images (sorted by id) with their five references."""
    from bench.data import read_references

    entries = sorted(read_references(shared_data / "flickr8k-1k" / "captions.txt"), key=lambda e: e.image_id)[:n]
    images = shared_data / "flickr8k-1k" / "images"
    return [Sample(e.image_id, images / (e.file_name or f"{e.image_id}.jpg"), e.refs) for e in entries]


@pytest.fixture
def samples(shared_data: Path) -> list[Sample]:
    return flickr_samples(shared_data, 4)


def load(model_dir: Path, **options: object):
    torch.set_num_threads(1)
    return backend_class(BACKEND).load(ModelConfig(model=str(model_dir), options=dict(options)), CPU)


def trainable_names(captioner) -> list[str]:
    return [n for n, p in captioner.torch_module().named_parameters() if p.requires_grad]


def test_bundle_folder_and_spelled_out_parts_load_the_same_model(tiny_clip_flan_t5: Path, samples: list[Sample]) -> None:
    bundle = load(tiny_clip_flan_t5)
    parts = load(tiny_clip_flan_t5 / "t5", vision_model=str(tiny_clip_flan_t5 / "vision"))
    gen = GenerationConfig(max_new_tokens=8)
    assert bundle.generate(bundle.caption_collate()(samples), gen) == parts.generate(parts.caption_collate()(samples), gen)
    # Only the projection is trainable before LoRA: CLIP and T5 are frozen.
    assert {n.split(".")[0] for n in trainable_names(bundle)} == {"projection"}


def test_bad_options_are_errors(tiny_clip_flan_t5: Path) -> None:
    with pytest.raises(BenchError, match="unknown key 'vision'.*vision_model"):
        load(tiny_clip_flan_t5, vision="x")
    with pytest.raises(BenchError, match="no such model folder"):
        load(tiny_clip_flan_t5 / "t5", vision_model=str(tiny_clip_flan_t5 / "no-such-vision"))
    with pytest.raises(BenchError, match="quantization '8bit'"):
        backend_class(BACKEND).load(ModelConfig(model=str(tiny_clip_flan_t5), quantization="8bit"), CPU)


@pytest.mark.parametrize("preset, expected", [("attn", ATTN), ("attn_ffn", ATTN | FFN)])
def test_lora_presets_adapt_only_the_t5_decoder(tiny_clip_flan_t5: Path, preset: str, expected: set[str]) -> None:
    captioner = load(tiny_clip_flan_t5)
    captioner.add_lora(LoraConfig(r=4, alpha=8, targets=preset))
    names = trainable_names(captioner)
    lora = [n for n in names if not n.startswith("projection.")]
    assert all(".lora_" in n and re.match(BLOCK, n) for n in lora), lora
    modules = {re.sub(BLOCK, "", n.split(".lora_")[0]) for n in lora}
    assert modules == expected
    assert any(n.startswith("projection.") for n in names)  # the projection keeps training
    assert not any(n.startswith(("vision.", "t5.encoder.")) for n in names)


def test_attn_ffn_trains_more_parameters_than_attn(tiny_clip_flan_t5: Path) -> None:
    counts = {}
    for preset in ("attn", "attn_ffn"):
        captioner = load(tiny_clip_flan_t5)
        captioner.add_lora(LoraConfig(r=4, alpha=8, targets=preset))
        counts[preset] = captioner.trainable_parameters()[0]
    assert counts["attn_ffn"] > counts["attn"]


@pytest.mark.parametrize("targets", [("q", "c_attn"), ("layer.0.SelfAttention.x",)])
def test_missing_target_names_the_available_modules(tiny_clip_flan_t5: Path, targets: tuple[str, ...]) -> None:
    captioner = load(tiny_clip_flan_t5)
    with pytest.raises(BenchError) as err:
        captioner.add_lora(LoraConfig(targets=targets))
    message = str(err.value)
    assert "\n" not in message and repr(targets[-1]) in message
    for name in ("SelfAttention.q", "EncDecAttention.o", "DenseReluDense.wi_0"):
        assert name in message


def test_explicit_short_names_cover_both_attentions(tiny_clip_flan_t5: Path) -> None:
    captioner = load(tiny_clip_flan_t5)
    captioner.add_lora(LoraConfig(r=2, alpha=4, targets=("q", "v")))
    modules = {re.sub(BLOCK, "", n.split(".lora_")[0]) for n in trainable_names(captioner) if ".lora_" in n}
    assert modules == {"layer.0.SelfAttention.q", "layer.0.SelfAttention.v", "layer.1.EncDecAttention.q", "layer.1.EncDecAttention.v"}


@pytest.mark.parametrize(
    "gen",
    [GenerationConfig(max_new_tokens=12), GenerationConfig(strategy="beam", num_beams=3, max_new_tokens=8)],
    ids=["greedy", "beam3"],
)
def test_batched_generate_equals_one_image_at_a_time(tiny_clip_flan_t5: Path, samples: list[Sample], gen) -> None:
    captioner = load(tiny_clip_flan_t5)
    collate = captioner.caption_collate()
    batched = captioner.generate(collate(samples), gen)
    single = [captioner.generate(collate([s]), gen)[0] for s in samples]
    assert batched == single
    assert len(set(batched)) > 1 and all(batched)


def test_train_batch_labels_and_loss(tiny_clip_flan_t5: Path, samples: list[Sample]) -> None:
    captioner = load(tiny_clip_flan_t5)
    collate = pickle.loads(pickle.dumps(captioner.train_collate()))
    pickle.loads(pickle.dumps(captioner.caption_collate()))
    captions = ["A dog .", "A child in a pink dress is climbing up a set of stairs ."]
    batch = collate([(samples[0], captions[0]), (samples[1], captions[1])])
    eos = captioner.tokenizer.eos_token_id
    for row, text in zip(batch["labels"].tolist(), captions):
        ids = captioner.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert row[: len(ids) + 1] == ids + [eos] and set(row[len(ids) + 1 :]) <= {-100}
    loss = captioner.loss(batch)
    loss.backward()  # gradients reach the projection through the frozen T5 encoder
    assert captioner.model.projection[1].weight.grad is not None
    assert all(p.grad is None for p in captioner.model.vision.parameters())


def test_adapter_round_trip_restores_lora_and_projection(tiny_clip_flan_t5: Path, samples: list[Sample], tmp_path: Path) -> None:
    gen = GenerationConfig(max_new_tokens=10)
    captioner = load(tiny_clip_flan_t5)
    batch = captioner.caption_collate()(samples)
    untrained = captioner.generate(batch, gen)
    captioner.add_lora(LoraConfig(r=4, alpha=8, targets="attn_ffn"))
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in captioner.torch_module().named_parameters():
            if "lora_B" in name or name.startswith("projection.1."):
                p.add_(torch.randn(p.shape, generator=generator) * 0.3)
    tuned = captioner.generate(batch, gen)
    assert tuned != untrained
    adapter = tmp_path / "adapter"
    captioner.save_adapter(adapter)
    assert {p.name for p in adapter.iterdir()} == {
        "adapter_config.json", "adapter_model.safetensors", "projection.safetensors", "bench_adapter.json",
    }
    fresh = load(tiny_clip_flan_t5)
    fresh.load_adapter(adapter)
    assert fresh.generate(batch, gen) == tuned

    (adapter / "projection.safetensors").unlink()
    with pytest.raises(BenchError, match=r"projection\.safetensors: missing"):
        load(tiny_clip_flan_t5).load_adapter(adapter)


def test_pickle_checkpoint_is_refused(tiny_clip_flan_t5: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    captioner = load(tiny_clip_flan_t5)
    captioner.add_lora(LoraConfig(r=2, alpha=4, targets="attn"))
    adapter = tmp_path / "adapter"
    captioner.save_adapter(adapter)
    (adapter / "projection.safetensors").unlink()
    torch.save(captioner.model.projection.state_dict(), adapter / "projection.pt")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("a pickle was opened"))
    with pytest.raises(BenchError, match=r"projection\.pt: pickle checkpoints are refused"):
        load(tiny_clip_flan_t5).load_adapter(adapter)


def test_unreachable_hub_ids_are_one_line_errors(monkeypatch: pytest.MonkeyPatch, tiny_clip_flan_t5: Path) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(BenchError) as err:
        backend_class(BACKEND).load(ModelConfig(model="google/flan-t5-base"), CPU)
    assert "'google/flan-t5-base'" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(BenchError, match="vision_model 'openai/clip-vit-base-patch16'"):
        load(tiny_clip_flan_t5 / "t5")  # T5 is local; the default CLIP is not reachable
