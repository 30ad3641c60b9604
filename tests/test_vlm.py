"""The zero-shot `vlm` backend on a tiny random model of each family (bench.testing.vlm), loaded by path
through the same `load()` as a hub id: prompt rules, batched == batch-1 captions (dynamic
resolution included), decoding owned by the setting, image modes and quantization configs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from unittest import mock

import pytest
import torch

from bench.backends import backend_class
from bench.models.vlm_families import FAMILIES
from bench.config import GenerationConfig, ModelConfig
from bench.data.types import Sample
from bench.errors import BenchError
from bench.prompts import load_prompt
from bench.testing.vlm import BUILDERS
from conftest import REPO, tiny_vlm_dir

CPU = torch.device("cpu")
GREEDY = GenerationConfig(max_new_tokens=8)
# Families whose rows get different prompt lengths for different images (tiles, patch grids).
DYNAMIC = ("llava_next", "qwen2_vl", "idefics3")
# What each family's prompt looks like: its chat template's markers, or its rule (no template).
PROMPT_MARKS = {
    "llava": "USER: <image>\nBriefly describe this image in a sentence. Thank you. ASSISTANT:",
    "llava_next": "USER: <image>\nBriefly describe this image in a sentence. Thank you. ASSISTANT:",
    "qwen2_vl": "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Briefly describe",
    "idefics3": "<|begin_of_text|>User:<image>Briefly describe this image in a sentence. Thank you.<end_of_utterance>\nAssistant:",
    "gemma3": "<bos><start_of_turn>user\n<start_of_image>Briefly describe this image in a sentence. Thank you.<end_of_turn>\n<start_of_turn>model\n",
}


@pytest.fixture(scope="module")
def samples(shared_data: Path) -> list[Sample]:
    # 500x375, 375x500, 500x281, 500x500 and 500x333 photos: different tile grids and patch counts.
    names = ("1001773457_577c3a7d70", "1000268201_693b08cb0e", "1022975728_75515238d8", "1007320043_627395c3d8")
    folder = shared_data / "flickr8k-1k" / "images"
    square = next(p for p in sorted(folder.glob("*.jpg")) if _size(p) == (500, 500))
    return [Sample(p.stem, p, ("ref",)) for p in (*(folder / f"{n}.jpg" for n in names[:3]), square, folder / f"{names[3]}.jpg")]


def _size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.size


@pytest.fixture(scope="module")
def brief():
    return load_prompt("brief", REPO / "prompts")


@pytest.fixture(scope="module")
def captioners(tiny_root: Path, brief) -> dict[str, object]:
    torch.set_num_threads(1)
    backend = backend_class("vlm")
    return {f: backend.load(ModelConfig(model=str(tiny_vlm_dir(tiny_root, f))), CPU, prompt=brief) for f in BUILDERS}


def test_families_are_chosen_by_model_type(captioners):
    for family, captioner in captioners.items():
        assert captioner.family.model_type == family
        assert captioner.model.config.model_type == family


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_prompt_rule(captioners, family):
    captioner = captioners[family]
    if family == "paligemma":
        assert captioner.prompt_text == "caption en"  # the task prefix, whatever the prompt file says
    elif family == "blip":
        assert captioner.prompt_text is None  # unconditional captioning
    else:
        assert PROMPT_MARKS[family] in captioner.prompt_text


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_batched_equals_batch_size_one(captioners, samples, family):
    captioner = captioners[family]
    collate = captioner.caption_collate()
    singles = [captioner.generate(collate([s]), GREEDY)[0] for s in samples]
    batch = collate(samples)
    assert captioner.generate(batch, GREEDY) == singles
    assert captioner.generate(collate(samples[:2]), GREEDY) + captioner.generate(collate(samples[2:]), GREEDY) == singles
    assert len(set(singles)) > 1  # the images reach the model
    if family in DYNAMIC:  # rows really differ in length, so left padding is exercised
        lengths = batch["attention_mask"].sum(dim=1)
        assert len(set(lengths.tolist())) > 1, lengths
        assert (batch["attention_mask"][:, -1] == 1).all() and (batch["attention_mask"][:, 0] == 0).any()


def test_row_ends_record_eos_and_lengths(captioners, samples):
    """Each row's new-token count and whether it stopped at eos (for truncation counts)."""
    from bench.backends.vlm import RowEnd

    captioner = captioners["llava"]
    batch = captioner.caption_collate()(samples)
    gen = GenerationConfig(max_new_tokens=4)
    with torch.inference_mode():
        out = captioner.model.generate(**captioner._inputs(batch), generation_config=captioner._generation_config(gen))
    new = out[:, batch["input_ids"].shape[1]:].tolist()
    saved = captioner.model.generation_config.eos_token_id
    stop = new[0][0]
    captioner.model.generation_config.eos_token_id = stop  # row 0 now ends at its first token
    try:
        captioner.generate(batch, gen)
    finally:
        captioner.model.generation_config.eos_token_id = saved
    assert captioner.last_rows[0] == RowEnd(1, True)
    for row, tokens in zip(captioner.last_rows[1:], new[1:]):  # the same tokens up to the first stop
        ended = stop in tokens
        assert row == RowEnd(tokens.index(stop) + 1 if ended else 4, ended)


def test_text_prefix_for_blip(tiny_root: Path, brief, samples):
    blip = backend_class("vlm").load(
        ModelConfig(model=str(tiny_vlm_dir(tiny_root, "blip")), options={"text_prefix": "a picture of"}), CPU, prompt=brief,
    )
    assert blip.prompt_text == "a picture of"
    captions = blip.generate(blip.caption_collate()(samples[:2]), GREEDY)
    assert all(c.lower().startswith("a picture of") for c in captions)  # BLIP's caption keeps its prefix


def test_checkpoint_generation_config_never_overrides_the_setting(tmp_path: Path, tiny_root: Path, captioners, brief, samples):
    folder = tmp_path / "llava-with-generation-config"
    shutil.copytree(tiny_vlm_dir(tiny_root, "llava"), folder)
    config = json.loads((folder / "generation_config.json").read_text())
    config.update(do_sample=True, temperature=5.0, top_k=3, num_beams=3, max_new_tokens=2, repetition_penalty=3.0)
    (folder / "generation_config.json").write_text(json.dumps(config))
    loaded = backend_class("vlm").load(ModelConfig(model=str(folder)), CPU, prompt=brief)
    kept = set(loaded.model.generation_config.to_diff_dict()) - {"transformers_version"}
    assert kept <= {"bos_token_id", "eos_token_id", "pad_token_id"}, kept  # the file's decoding is dropped
    batch = loaded.caption_collate()(samples[:3])
    torch.manual_seed(0)
    got = loaded.generate(batch, GREEDY)
    assert got == captioners["llava"].generate(batch, GREEDY)
    assert all(r.new_tokens > 2 or r.ended_with_eos for r in loaded.last_rows)  # not the file's max_new_tokens


def test_options_are_checked(tiny_root: Path, brief):
    backend = backend_class("vlm")
    qwen = str(tiny_vlm_dir(tiny_root, "qwen2_vl"))
    for options, expected in [
        ({"image_mode": "pad"}, "models.vlm.options.image_mode must be 'auto' or 'native' for model_type 'qwen2_vl', got 'pad'"),
        ({"image_mode": "tile"}, "models.vlm.options.image_mode must be 'auto' or 'pad' or 'crop' or 'native', got 'tile'"),
        ({"colour": 1}, "models.vlm.options: unknown key 'colour'"),
    ]:
        with pytest.raises(BenchError) as info:
            backend.load(ModelConfig(model=qwen, options=options), CPU, prompt=brief)
        assert expected in str(info.value) and "\n" not in str(info.value)


# --- quantization: the right modules stay unquantized (transformers' own matching rule) -------------

@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_quantization_skips_vision_projector_and_lm_head(captioners, family):
    from transformers.quantizers.quantizers_utils import should_convert_module

    skip = list(FAMILIES[family].quant_skip_modules)
    linears = [n for n, m in captioners[family].model.named_modules() if isinstance(m, torch.nn.Linear)]
    converted = {n for n in linears if should_convert_module(n, skip)}
    language = [n for n in linears if ("language_model." in n or "text_model." in n) and ".layers." in n or "text_decoder.bert" in n]
    vision = [n for n in linears if any(k in n for k in ("vision", "visual", "projector", "connector", "lm_head", ".cls."))]
    assert language and vision
    assert set(language) <= converted, "the language model must be quantized"
    assert not converted & set(vision), sorted(converted & set(vision))[:3]


@pytest.mark.parametrize("quantization, flag", [("4bit", "load_in_4bit"), ("8bit", "load_in_8bit")])
def test_quantization_config_for_cuda_without_loading(quantization, flag):
    from bench.models.quantization import quantization_config

    fake_bnb = mock.MagicMock()
    with mock.patch("torch.cuda.is_available", return_value=True), \
            mock.patch("torch.cuda.is_bf16_supported", return_value=True), \
            mock.patch.dict("sys.modules", {"bitsandbytes": fake_bnb}):
        config = quantization_config(quantization, torch.device("cuda"), FAMILIES["llava"].quant_skip_modules)
    assert getattr(config, flag) is True
    assert config.llm_int8_skip_modules == ["model.vision_tower", "model.multi_modal_projector", "lm_head"]
    if quantization == "4bit":
        assert config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_compute_dtype == torch.bfloat16
