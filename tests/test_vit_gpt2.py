"""`vit-gpt2` backend on a tiny random model loaded by path, exactly as a hub id would be."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest
import torch

from bench.backends import backend_class, backend_spec
from bench.config import GenerationConfig, LoraConfig, ModelConfig
from bench.data.types import Sample
from bench.errors import BenchError

BACKEND = "vit-gpt2"
CPU = torch.device("cpu")
ATTN = {"attn.c_attn", "attn.c_proj", "crossattention.c_attn", "crossattention.q_attn", "crossattention.c_proj"}
FFN = {"mlp.c_fc", "mlp.c_proj"}


def flickr_samples(shared_data: Path, n: int) -> list[Sample]:
    """The first n Flickr8k images (sorted by id) with their five references."""
    from bench.data import read_references

    entries = sorted(read_references(shared_data / "flickr8k-1k" / "captions.txt"), key=lambda e: e.image_id)[:n]
    images = shared_data / "flickr8k-1k" / "images"
    return [Sample(e.image_id, images / (e.file_name or f"{e.image_id}.jpg"), e.refs) for e in entries]


@pytest.fixture
def samples(shared_data: Path) -> list[Sample]:
    return flickr_samples(shared_data, 4)


def load(model_dir: Path):
    torch.set_num_threads(1)
    return backend_class(BACKEND).load(ModelConfig(model=str(model_dir)), CPU)


def adapted_modules(captioner) -> set[str]:
    """Full names of the modules that received LoRA weights (from the trainable parameters)."""
    names = [n for n, p in captioner.torch_module().named_parameters() if p.requires_grad]
    assert all(".lora_" in n for n in names), names
    return {n.split(".lora_")[0] for n in names}


def test_loads_tiny_model_frozen(tiny_vit_gpt2: Path) -> None:
    captioner = load(tiny_vit_gpt2)
    assert captioner.name == BACKEND and backend_spec(BACKEND).supports_lora
    trainable, total = captioner.trainable_parameters()
    assert trainable == 0 and total > 0
    # pad = eos = decoder start, as in nlpconnect/vit-gpt2-image-captioning
    cfg = captioner.model.config
    assert cfg.pad_token_id == cfg.decoder_start_token_id == captioner.tokenizer.eos_token_id


@pytest.mark.parametrize("preset, expected", [("attn", ATTN), ("attn_ffn", ATTN | FFN)])
def test_lora_presets_adapt_only_the_gpt2_decoder(tiny_vit_gpt2: Path, preset: str, expected: set[str]) -> None:
    captioner = load(tiny_vit_gpt2)
    captioner.add_lora(LoraConfig(r=4, alpha=8, targets=preset))
    modules = adapted_modules(captioner)
    for name in modules:
        assert re.fullmatch(r"decoder\.transformer\.h\.\d+\.(.+)", name), name
    assert {re.sub(r"^decoder\.transformer\.h\.\d+\.", "", n) for n in modules} == expected
    n_layers = captioner.model.config.decoder.n_layer
    assert len(modules) == n_layers * len(expected)


def test_attn_ffn_trains_more_parameters_than_attn(tiny_vit_gpt2: Path) -> None:
    counts = {}
    for preset in ("attn", "attn_ffn"):
        captioner = load(tiny_vit_gpt2)
        captioner.add_lora(LoraConfig(r=4, alpha=8, targets=preset))
        counts[preset] = captioner.trainable_parameters()[0]
    assert counts["attn_ffn"] > counts["attn"] > 0


def test_explicit_target_names_match_dotted_suffixes(tiny_vit_gpt2: Path) -> None:
    captioner = load(tiny_vit_gpt2)
    captioner.add_lora(LoraConfig(r=2, alpha=4, targets=("q_attn", "mlp.c_fc")))
    short = {re.sub(r"^decoder\.transformer\.h\.\d+\.", "", n) for n in adapted_modules(captioner)}
    assert short == {"crossattention.q_attn", "mlp.c_fc"}


@pytest.mark.parametrize("targets", [("c_attn", "qkv_proj"), ("attention.query",), ("encoder.layer",)])
def test_missing_target_names_the_available_modules(tiny_vit_gpt2: Path, targets: tuple[str, ...]) -> None:
    # `attention.query` exists in the ViT encoder: targets are restricted to the decoder.
    captioner = load(tiny_vit_gpt2)
    with pytest.raises(BenchError) as err:
        captioner.add_lora(LoraConfig(targets=targets))
    message = str(err.value)
    assert "\n" not in message
    assert repr(targets[-1]) in message
    for name in ("attn.c_attn", "crossattention.q_attn", "mlp.c_fc"):
        assert name in message
    assert captioner.trainable_parameters()[0] == 0  # nothing half-applied


def test_unknown_preset_is_an_error(tiny_vit_gpt2: Path) -> None:
    with pytest.raises(BenchError, match="unknown preset 'ffn_only'.*attn, attn_ffn"):
        load(tiny_vit_gpt2).add_lora(LoraConfig(targets="ffn_only"))


@pytest.mark.parametrize(
    "gen",
    [GenerationConfig(max_new_tokens=12), GenerationConfig(strategy="beam", num_beams=3, max_new_tokens=8)],
    ids=["greedy", "beam3"],
)
def test_batched_generate_equals_one_image_at_a_time(tiny_vit_gpt2: Path, samples: list[Sample], gen) -> None:
    captioner = load(tiny_vit_gpt2)
    collate = captioner.caption_collate()
    batch = collate(samples)
    assert batch["image_ids"] == [s.image_id for s in samples]
    batched = captioner.generate(batch, gen)
    single = [captioner.generate(collate([s]), gen)[0] for s in samples]
    assert batched == single
    assert len(set(batched)) > 1 and all(batched)  # real, image-dependent text, not all empty


def test_generation_config_is_honoured(tiny_vit_gpt2: Path, samples: list[Sample]) -> None:
    captioner = load(tiny_vit_gpt2)
    batch = captioner.caption_collate()(samples)
    short = captioner.generate(batch, GenerationConfig(max_new_tokens=3))
    plain = captioner.generate(batch, GenerationConfig(max_new_tokens=16))
    assert short != plain and all(len(s) <= len(p) for s, p in zip(short, plain))
    # The random model repeats itself ("tototo..."); forbidding repeated tokens must change that.
    no_repeat = captioner.generate(batch, GenerationConfig(max_new_tokens=16, no_repeat_ngram_size=1))
    penalised = captioner.generate(batch, GenerationConfig(max_new_tokens=16, repetition_penalty=5.0))
    assert no_repeat != plain and penalised != plain


def test_collates_pickle_and_labels_end_with_eos(tiny_vit_gpt2: Path, samples: list[Sample]) -> None:
    captioner = load(tiny_vit_gpt2)
    pickle.loads(pickle.dumps(captioner.caption_collate()))
    collate = pickle.loads(pickle.dumps(captioner.train_collate()))
    captions = ["A dog runs .", "A child in a pink dress is climbing up a set of stairs ."]
    batch = collate([(samples[0], captions[0]), (samples[1], captions[1])])
    eos = captioner.tokenizer.eos_token_id
    for row, text in zip(batch["labels"].tolist(), captions):
        ids = captioner.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert row[: len(ids) + 1] == ids + [eos]
        assert all(v == -100 for v in row[len(ids) + 1 :])
    assert batch["labels"][0, -1] == -100  # the short caption is padded with -100, not with eos
    assert torch.isfinite(captioner.loss(batch))


def test_adapter_round_trip_gives_identical_captions(tiny_vit_gpt2: Path, samples: list[Sample], tmp_path: Path) -> None:
    gen = GenerationConfig(max_new_tokens=10)
    captioner = load(tiny_vit_gpt2)
    batch = captioner.caption_collate()(samples)
    untrained = captioner.generate(batch, gen)
    captioner.add_lora(LoraConfig(r=4, alpha=8, targets="attn_ffn"))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a non-trivial adapter (B starts at zero)
        for name, p in captioner.torch_module().named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    tuned = captioner.generate(batch, gen)
    assert tuned != untrained
    adapter = tmp_path / "adapter"
    captioner.save_adapter(adapter)
    captioner.save_adapter(adapter)  # overwriting is atomic too and leaves no temp folders
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    assert {p.name for p in adapter.iterdir()} == {"adapter_config.json", "adapter_model.safetensors", "bench_adapter.json"}

    fresh = load(tiny_vit_gpt2)
    fresh.load_adapter(adapter)
    assert fresh.generate(batch, gen) == tuned
    again = load(tiny_vit_gpt2)  # into an existing adapter of the same shape (training resume)
    again.add_lora(LoraConfig(r=4, alpha=8, targets="attn_ffn"))
    again.load_adapter(adapter)
    assert again.generate(batch, gen) == tuned


def test_pickle_checkpoint_is_refused(tiny_vit_gpt2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import load_file

    captioner = load(tiny_vit_gpt2)
    captioner.add_lora(LoraConfig(r=2, alpha=4, targets="attn"))
    adapter = tmp_path / "adapter"
    captioner.save_adapter(adapter)
    state = load_file(adapter / "adapter_model.safetensors")
    (adapter / "adapter_model.safetensors").unlink()
    torch.save(state, adapter / "adapter_model.bin")

    def no_unpickling(*args, **kwargs):
        raise AssertionError("a pickle was opened")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(BenchError, match=r"adapter_model\.bin: pickle checkpoints are refused"):
        load(tiny_vit_gpt2).load_adapter(adapter)


def test_model_folder_with_pickle_weights_is_read_with_weights_only(tiny_vit_gpt2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Older hub models ship only pytorch_model.bin: read with torch.load(weights_only=True), so a
    pickle that runs code is refused (tests/test_safe_loading.py tries a real one)."""
    import shutil

    from safetensors.torch import load_file

    folder = tmp_path / "model"
    shutil.copytree(tiny_vit_gpt2, folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    real_load = torch.load
    calls: list[object] = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k.get("weights_only")) or real_load(*a, **k))
    load(folder)
    assert calls == [True]


def test_adapter_of_the_other_backend_is_refused(tiny_vit_gpt2: Path, tmp_path: Path) -> None:
    captioner = load(tiny_vit_gpt2)
    captioner.add_lora(LoraConfig(r=2, alpha=4, targets="attn"))
    captioner.save_adapter(tmp_path / "a")
    marker = tmp_path / "a" / "bench_adapter.json"
    marker.write_text(marker.read_text().replace("vit-gpt2", "clip-flan-t5"))
    with pytest.raises(BenchError, match="bench_adapter.json: field 'backend'"):
        load(tiny_vit_gpt2).load_adapter(tmp_path / "a")


def test_unreachable_hub_id_and_missing_folder_are_one_line_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no 30 s of retries
    Backend = backend_class(BACKEND)
    with pytest.raises(BenchError) as err:
        Backend.load(ModelConfig(model="nlpconnect/vit-gpt2-image-captioning"), CPU)
    message = str(err.value)
    assert "\n" not in message and "'nlpconnect/vit-gpt2-image-captioning'" in message
    assert "--local-dir" in message
    with pytest.raises(BenchError, match="no such model folder"):
        Backend.load(ModelConfig(model=str(tmp_path / "missing" / "model")), CPU)


def test_quantization_and_options_are_refused(tiny_vit_gpt2: Path) -> None:
    Backend = backend_class(BACKEND)
    with pytest.raises(BenchError, match="quantization '4bit'"):
        Backend.load(ModelConfig(model=str(tiny_vit_gpt2), quantization="4bit"), CPU)
    with pytest.raises(BenchError, match="options"):
        Backend.load(ModelConfig(model=str(tiny_vit_gpt2), options={"vision_model": "x"}), CPU)
