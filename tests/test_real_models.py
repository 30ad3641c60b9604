"""The default models from their REAL hub files (../shared/models: config, tokenizer, processor,
generation config; seeded random weights, widths and depths shrunk by bench.testing.real_models), loaded
as local folders exactly as a hub id is loaded.

What this proves: every step a hub checkpoint takes through bench (its token ids, image size and
patches, processor, generation config, module names for LoRA, a full CLIP checkpoint as a vision
tower, adapter save and reload) up to scored captions and attention maps. What it cannot prove:
caption quality (the weights are random, so every caption runs to max_new_tokens).
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest
import torch

from bench.backends import backend_class, backend_spec
from bench.config import GenerationConfig, LoraConfig, ModelConfig
from bench.data.types import Sample
from bench.io import read_records
from conftest import tiny_setting_text

CPU = torch.device("cpu")
LIMIT, MAX_NEW = 4, 24  # 24 > the real vit-gpt2 config's max_length 20: a leaked default would cut
E2E = f"""
[lora]
r = 4
alpha = 8
targets = "attn"
[train]
epochs = 1
lr = 1e-3
batch_size = 5
train_size = 1
[generation]
max_new_tokens = {MAX_NEW}
batch_size = 4
"""


@pytest.fixture(scope="module")
def images(shared_data: Path) -> list[Sample]:
    paths = sorted((shared_data / "flickr8k-1k" / "images").glob("*.jpg"))[:2]
    return [Sample(p.stem, p, ("a dog runs on the grass .", "two people sit on a bench .")) for p in paths]


@pytest.fixture(scope="module")
def vit_gpt2(real_vit_gpt2: Path):
    torch.set_num_threads(1)
    return backend_class("vit-gpt2").load(ModelConfig(model=str(real_vit_gpt2)), CPU)


@pytest.fixture(scope="module")
def clip_flan_t5(real_clip_flan_t5: Path):
    torch.set_num_threads(1)
    return backend_class("clip-flan-t5").load(ModelConfig(model=str(real_clip_flan_t5)), CPU)


# --- ViT-GPT2: token ids and decoding settings from the real files --------------------------------

def test_vit_gpt2_takes_start_pad_and_eos_from_the_real_config(vit_gpt2, real_vit_gpt2: Path) -> None:
    real = json.loads((real_vit_gpt2 / "config.json").read_text())
    assert real["decoder_start_token_id"] == real["pad_token_id"] == real["eos_token_id"] == 50256
    config = vit_gpt2.model.config
    assert (config.decoder_start_token_id, config.pad_token_id, config.eos_token_id) == (50256, 50256, 50256)
    assert vit_gpt2.tokenizer.eos_token_id == 50256 and len(vit_gpt2.tokenizer) == config.decoder.vocab_size == 50257
    assert vit_gpt2.processor.size == {"height": 224, "width": 224} and config.encoder.patch_size == 16


def test_vit_gpt2_token_ids_a_config_leaves_undefined_fall_back(real_vit_gpt2: Path, tmp_path: Path) -> None:
    """transformers 5's VisionEncoderDecoderConfig raises AttributeError for an id config.json
    does not define; the decoder's ids (then the tokenizer's) must be used instead."""
    import shutil

    folder = tmp_path / "no-top-level-ids"
    shutil.copytree(real_vit_gpt2, folder)
    config = json.loads((folder / "config.json").read_text())
    for key in ("decoder_start_token_id", "pad_token_id", "bos_token_id", "eos_token_id"):
        config.pop(key)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "generation_config.json").unlink()
    captioner = backend_class("vit-gpt2").load(ModelConfig(model=str(folder)), CPU)
    assert (captioner.model.config.decoder_start_token_id, captioner.model.config.pad_token_id) == (50256, 50256)


def test_hub_generation_defaults_never_override_the_settings_decoding(vit_gpt2, clip_flan_t5, real_vit_gpt2: Path,
                                                                     real_clip_flan_t5: Path, images, tmp_path: Path) -> None:
    """flan-t5-base ships a generation_config.json (and num_beams 4 in its task presets); for
    vit-gpt2 the defaults its model card uses (beam 4, max_length 16, no-repeat 3) are written into
    one. bench's greedy MAX_NEW-token decoding must come out unchanged."""
    import shutil

    assert json.loads((real_clip_flan_t5 / "t5" / "generation_config.json").read_text())["decoder_start_token_id"] == 0
    hub_like = tmp_path / "vit-gpt2-hub-generation"
    shutil.copytree(real_vit_gpt2, hub_like)
    defaults = {"num_beams": 4, "max_length": 16, "no_repeat_ngram_size": 3, "early_stopping": True, "do_sample": True}
    on_disk = json.loads((hub_like / "generation_config.json").read_text())
    (hub_like / "generation_config.json").write_text(json.dumps({**on_disk, **defaults}))
    hub_vit_gpt2 = backend_class("vit-gpt2").load(ModelConfig(model=str(hub_like)), CPU)

    gen = GenerationConfig(max_new_tokens=MAX_NEW)
    for captioner in (vit_gpt2, hub_vit_gpt2, clip_flan_t5):
        batch = captioner.caption_collate()(images)
        generate = captioner.model.generate
        ids = generate(batch["pixel_values"], **_kwargs(gen)) if captioner is clip_flan_t5 else \
            generate(pixel_values=batch["pixel_values"], **_kwargs(gen))
        assert ids.shape == (len(images), 1 + MAX_NEW)  # one greedy row per image, no cap at 16 or 20
        assert captioner.generate(batch, gen) and captioner.last_truncated == [True] * len(images)
    batch = vit_gpt2.caption_collate()(images)
    assert hub_vit_gpt2.generate(batch, gen) == vit_gpt2.generate(batch, gen)


def _kwargs(gen: GenerationConfig) -> dict:
    from bench.models.decoding import generation_kwargs

    return generation_kwargs(gen)


# --- CLIP-ViT + Flan-T5: label shifting, a full CLIP checkpoint as the vision tower ---------------

def test_t5_labels_shift_right_from_pad_with_padding_ignored(clip_flan_t5, images) -> None:
    t5 = clip_flan_t5.model.t5
    assert t5.config.decoder_start_token_id == t5.config.pad_token_id == 0 and t5.config.eos_token_id == 1
    pairs = [(images[0], "a dog"), (images[1], "two people sit on a long wooden bench near the water")]
    labels = clip_flan_t5.train_collate()(pairs)["labels"]
    short = (labels[0] != -100).sum()
    assert labels[0, short - 1] == 1 and (labels[0, short:] == -100).all()  # </s>, then ignored
    decoder_inputs = t5._shift_right(labels)
    assert (decoder_inputs[:, 0] == 0).all()  # decoding starts from <pad> = 0
    assert (decoder_inputs[:, 1:] == labels[:, :-1].masked_fill(labels[:, :-1] == -100, 0)).all()
    assert clip_flan_t5.tokenizer.decode(labels[1][labels[1] != -100]) == pairs[1][1] + "</s>"


def test_the_full_clip_checkpoint_loads_as_a_vision_tower_without_a_report(real_clip_flan_t5: Path, capfd,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    from safetensors import safe_open

    with safe_open(str(real_clip_flan_t5 / "vision" / "model.safetensors"), "pt") as f:
        assert any(k.startswith("text_model.") for k in f.keys())  # a full CLIP, text half included
    caplog.set_level("DEBUG")
    captioner = backend_class("clip-flan-t5").load(ModelConfig(model=str(real_clip_flan_t5)), CPU)
    out, err = capfd.readouterr()
    assert "UNEXPECTED" not in out + err and "unexpected" not in (out + err).lower()
    assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")], caplog.text
    vision = captioner.model.vision.config
    assert (vision.image_size, vision.patch_size) == (224, 16)  # 196 patches + CLS into T5


# --- LoRA on the real architectures ----------------------------------------------------------------

REAL_TARGETS = {
    ("vit-gpt2", "attn"): {"attn.c_attn", "attn.c_proj", "crossattention.c_attn", "crossattention.q_attn",
                           "crossattention.c_proj"},
    ("vit-gpt2", "attn_ffn"): {"attn.c_attn", "attn.c_proj", "crossattention.c_attn", "crossattention.q_attn",
                               "crossattention.c_proj", "mlp.c_fc", "mlp.c_proj"},
    ("clip-flan-t5", "attn"): {f"{b}.{p}" for b in ("SelfAttention", "EncDecAttention") for p in "qkvo"},
    # Flan-T5 is gated-GELU: wi_0 and wi_1, no plain wi.
    ("clip-flan-t5", "attn_ffn"): {f"{b}.{p}" for b in ("SelfAttention", "EncDecAttention") for p in "qkvo"}
    | {"DenseReluDense.wi_0", "DenseReluDense.wi_1", "DenseReluDense.wo"},
}


@pytest.mark.parametrize("backend, preset", sorted(REAL_TARGETS))
def test_lora_presets_resolve_to_the_real_decoder_modules(backend: str, preset: str, real_vit_gpt2: Path,
                                                          real_clip_flan_t5: Path) -> None:
    folder = real_vit_gpt2 if backend == "vit-gpt2" else real_clip_flan_t5
    captioner = backend_class(backend).load(ModelConfig(model=str(folder)), CPU)
    captioner.add_lora(LoraConfig(r=2, alpha=4, targets=preset))
    adapted = [n.removesuffix(".lora_A.default") for n, _ in captioner.torch_module().named_modules()
               if n.endswith(".lora_A.default")]
    layers = 2  # the layers of bench.testing.real_models.SHRINK
    assert all(re.search(r"(^|\.)decoder\.", n) for n in adapted)  # never the encoder / vision tower
    suffixes = {re.sub(r"^.*?\.\d+\.(layer\.\d+\.)?", "", n) for n in adapted}
    assert suffixes == REAL_TARGETS[(backend, preset)]
    assert len(adapted) == layers * len(REAL_TARGETS[(backend, preset)])


def _guard_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record (and refuse) every attempt to reach the hub while saving."""
    import peft.utils.other

    attempts: list[str] = []

    def refuse(*args: object, **kwargs: object):
        attempts.append(repr(args[:1]))
        raise OSError("network use refused by the test")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(peft.utils.other, "file_exists", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return attempts


@pytest.mark.filterwarnings("ignore:The PEFT config's `base_model_name_or_path` was renamed")
@pytest.mark.parametrize("backend", ["vit-gpt2", "clip-flan-t5"])
def test_adapters_save_without_the_hub_and_reload_equal(backend: str, real_vit_gpt2: Path, real_clip_flan_t5: Path,
                                                        images, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = str(real_vit_gpt2 if backend == "vit-gpt2" else real_clip_flan_t5)
    cls = backend_class(backend)
    trained = cls.load(ModelConfig(model=folder), CPU)
    trained.add_lora(LoraConfig(r=4, alpha=8, targets="attn_ffn"))
    with torch.no_grad():  # "trained": every adapted weight away from its initial value
        generator = torch.Generator().manual_seed(1)
        for name, p in trained.torch_module().named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=generator))
    # As for a hub model: peft's "auto" embedding check would ask the hub about this id.
    trained.peft_model.peft_config["default"].base_model_name_or_path = backend_spec(backend).default_model
    attempts = _guard_network(monkeypatch)
    trained.save_adapter(tmp_path / "adapter")
    assert attempts == []

    reloaded = cls.load(ModelConfig(model=folder), CPU)
    reloaded.load_adapter(tmp_path / "adapter")
    batch = trained.train_collate()([(images[0], "a dog runs"), (images[1], "two people sit")])
    trained.torch_module().eval()
    reloaded.torch_module().eval()
    with torch.no_grad():
        assert torch.equal(trained.loss(batch), reloaded.loss(batch))
    gen = GenerationConfig(max_new_tokens=8)
    caption_batch = trained.caption_collate()(images)
    assert trained.generate(caption_batch, gen) == reloaded.generate(caption_batch, gen)


# --- end to end through the CLI --------------------------------------------------------------------

@pytest.mark.slow
def test_bench_run_and_attend_on_the_real_lora_architectures(
    bench_env, shared_data: Path, real_vit_gpt2: Path, real_clip_flan_t5: Path, real_clip32: Path,
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bench.cli import main

    models = {"vit-gpt2": real_vit_gpt2, "clip-flan-t5": real_clip_flan_t5}
    setting = tmp_path / "real_lora.toml"
    setting.write_text(tiny_setting_text(models, real_clip32, backends=tuple(models), extra=E2E)
                       .replace("[scoring]\n", '[scoring]\nmetrics = ["bleu", "cider", "clipscore"]\n'))
    done = bench_env.run_cli("run", "--setting", str(setting), "--limit", str(LIMIT), "--device", "cpu",
                             "--workers", "0", "--no-progress", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for backend in models:
        run = bench_env.runs / "real_lora" / backend
        results = json.loads((run / "results.json").read_text())
        assert results["n_images"] == LIMIT and results["config"]["generation"]["max_new_tokens"] == MAX_NEW
        assert results["metrics"]["CLIPScore"] >= 0 and "CIDEr" in results["metrics"]
        assert json.loads((run / "train" / "state.json").read_text())["epochs_done"] == 1
        assert results["n_truncated"] == LIMIT  # random weights never say </s> or <|endoftext|>
        assert f"real_lora/{backend}: {LIMIT} of {LIMIT} captions stopped at generation.max_new_tokens = {MAX_NEW}" \
            in " ".join(done.stdout.split())

        # bench attend, in process: one PNG whose panels are the caption's tokens over the real patch grid.
        captions = {r["image_id"]: r["caption"] for r in read_records(run / "predictions.jsonl")}
        image_id = next(iter(captions))
        monkeypatch.setenv("BENCH_RUNS", str(bench_env.runs))
        with pytest.raises(SystemExit) as exit_info:
            main(["attend", "--run", f"real_lora/{backend}", "--images", image_id, "--device", "cpu"])
        assert int(exit_info.value.code or 0) == 0, capsys.readouterr().err
        from PIL import Image

        with Image.open(run / "attend" / f"{image_id}.png") as png:
            assert int(png.text["bench:panels"]) > 0
            assert json.loads(png.text["bench:grid"]) == [14, 14]  # 16 px patches of the real 224 px input
            assert png.text["bench:caption"] == captions[image_id]
