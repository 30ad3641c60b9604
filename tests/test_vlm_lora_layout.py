"""VLM LoRA training batches on the REAL llava-hf/llava-1.5-7b-hf files (tokenizer, processor, chat
template and config from ../shared/models; no weights): the token layout, the label mask, padding,
truncation, the LoRA targets and QLoRA's full-precision parts.

The reference for the label mask is the chat template itself: rendering the conversation with the
assistant's answer and asking transformers for its `{% generation %}` mask
(`return_assistant_tokens_mask`) marks the answer tokens independently of bench's code.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.models.vlm_lora import (
    FULL_PRECISION_PARTS,
    IGNORE,
    MAX_CAPTION_TOKENS,
    VlmTrainCollate,
    check_image_slot,
    keep_vlm_parts_full,
    vlm_target_regex,
)
from bench.backends.llava import render_prompt
from bench.data.types import Sample
from bench.errors import BenchError
from bench.paths import shared_data_dir
from bench.prompts import load_prompt

REAL = shared_data_dir().parent / "models" / "llava-hf__llava-1.5-7b-hf"
IMAGE_TOKEN, PAD, EOS = 32000, 32001, 2
CAPTIONS = ("A dog runs through the grass.", "Two children in red jackets play on a snowy hill near a wooden fence.")


@pytest.fixture(scope="module")
def processor():
    if not (REAL / "tokenizer.json").is_file():
        pytest.skip(f"real LLaVA-1.5 files not found in {REAL}")
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(str(REAL))


@pytest.fixture(scope="module")
def brief():
    return load_prompt("brief")


@pytest.fixture(scope="module")
def images(shared_data: Path) -> list[Path]:
    return sorted((shared_data / "flickr8k-1k" / "images").glob("*.jpg"))[:2]


def collate(processor, brief, **kwargs) -> VlmTrainCollate:
    return VlmTrainCollate(processor, render_prompt(processor, brief), EOS, IMAGE_TOKEN, **kwargs)


def template_reference(processor, brief, image: Path, caption: str) -> tuple[list[int], list[int]]:
    """input_ids and the chat template's own assistant-token mask for (image, prompt, caption)."""
    conversation = [
        {"role": "user", "content": [{"type": "image", "path": str(image)}, {"type": "text", "text": brief.text}]},
        {"role": "assistant", "content": [{"type": "text", "text": caption}]},
    ]
    out = processor.apply_chat_template(
        conversation, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, return_tensors="pt"
    )
    return out["input_ids"][0].tolist(), out["assistant_masks"][0].tolist()


def test_label_mask_token_by_token_against_the_chat_template(processor, brief, images) -> None:
    batch = collate(processor, brief)([(Sample(p.stem, p, ("r",)), c) for p, c in zip(images, CAPTIONS)])
    assert batch["pixel_values"].shape == (2, 3, 336, 336)
    for i, (image, caption) in enumerate(zip(images, CAPTIONS)):
        n = int(batch["attention_mask"][i].sum())
        ids, labels = batch["input_ids"][i].tolist(), batch["labels"][i].tolist()
        ref_ids, answer_mask = template_reference(processor, brief, image, caption)
        # Same tokens as the template renders them, up to the answer's last token: the template
        # ends the turn with a space, the model ends it with </s> (what stops generation).
        assert len(ref_ids) == n and ids[: n - 1] == ref_ids[: n - 1]
        assert (ids[n - 1], processor.tokenizer.convert_ids_to_tokens(ref_ids[n - 1])) == (EOS, "\u2581")
        for k in range(n):  # the loss counts exactly the template's answer tokens (+ </s> for its space)
            counted = labels[k] != IGNORE
            assert counted == bool(answer_mask[k]), (k, processor.tokenizer.convert_ids_to_tokens(ids[k]))
            assert not counted or labels[k] == ids[k]
        assert ids.count(IMAGE_TOKEN) == 576 and all(labels[k] == IGNORE for k in range(n) if ids[k] == IMAGE_TOKEN)
        assert ids[0] == processor.tokenizer.bos_token_id and labels[0] == IGNORE
        answer = [t for t in labels if t != IGNORE]
        assert processor.tokenizer.decode(answer) == caption + "</s>"
        # Right padding: masked out of attention and loss.
        assert ids[n:] == [PAD] * (len(ids) - n) and set(labels[n:]) <= {IGNORE}
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (len(ids) - n)


def test_prompt_part_is_what_captioning_feeds_the_model(processor, brief, images) -> None:
    from bench.backends.llava import encode
    from bench.data import load_image

    batch = collate(processor, brief)([(Sample("x", images[0], ("r",)), CAPTIONS[0])])
    prompt = encode(processor, [load_image(images[0])], [render_prompt(processor, brief)])
    n_prompt = prompt["input_ids"].shape[1]
    assert batch["input_ids"][0, :n_prompt].tolist() == prompt["input_ids"][0].tolist()
    assert batch["labels"][0, n_prompt - 1].item() == IGNORE and batch["labels"][0, n_prompt].item() != IGNORE
    torch.testing.assert_close(batch["pixel_values"], prompt["pixel_values"])


def test_long_captions_are_cut_and_still_ended(processor, brief, images) -> None:
    long_caption = " ".join(["a dog runs on the grass"] * 60)
    pairs = [(Sample("x", images[0], ("r",)), long_caption), (Sample("y", images[1], ("r",)), CAPTIONS[0])]
    batch = collate(processor, brief)(pairs)
    answer = [t for t in batch["labels"][0].tolist() if t != IGNORE]
    full = processor.tokenizer(long_caption, add_special_tokens=False)["input_ids"]
    assert len(full) > MAX_CAPTION_TOKENS and answer == full[:MAX_CAPTION_TOKENS] + [EOS]
    # The short row is padded to the long one.
    assert batch["input_ids"].shape[1] == int(batch["attention_mask"][0].sum())
    # A bound on positions: prompt + caption + </s> fits max_length exactly.
    prompt_len = batch["labels"][0].tolist().index(full[0])
    tight = collate(processor, brief, max_length=prompt_len + 10)(pairs[:1])
    assert tight["input_ids"].shape[1] == prompt_len + 10
    assert [t for t in tight["labels"][0].tolist() if t != IGNORE] == full[:9] + [EOS]
    with pytest.raises(BenchError) as info:
        collate(processor, brief, max_length=prompt_len)(pairs[:1])
    assert "no room for a caption" in str(info.value) and "\n" not in str(info.value)


def test_a_prompt_with_no_image_slot_is_a_one_line_error(processor, brief, images) -> None:
    no_image = render_prompt(processor, brief).replace("<image>\n", "")
    with pytest.raises(BenchError) as info:
        VlmTrainCollate(processor, no_image, EOS, IMAGE_TOKEN)([(Sample("x", images[0], ("r",)), CAPTIONS[0])])
    assert "no image slot" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(BenchError, match="no image slot"):
        check_image_slot(processor.tokenizer, no_image, IMAGE_TOKEN)
    check_image_slot(processor.tokenizer, render_prompt(processor, brief), IMAGE_TOKEN)


# --- the real architecture: LoRA targets and QLoRA ------------------------------------------------

@pytest.fixture(scope="module")
def meta_llava():
    """llava-1.5-7b's exact module tree (its config.json), on the meta device: no memory, no weights."""
    if not (REAL / "config.json").is_file():
        pytest.skip(f"real LLaVA-1.5 files not found in {REAL}")
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    with torch.device("meta"):
        return LlavaForConditionalGeneration(LlavaConfig.from_pretrained(str(REAL)))


def _linears(model) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


@pytest.mark.parametrize("targets,per_layer,projector", [
    ("attn", ("q_proj", "k_proj", "v_proj", "o_proj"), False),
    ("attn_ffn", ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), False),
    (("attn", "projector"), ("q_proj", "k_proj", "v_proj", "o_proj"), True),
    (("q_proj", "v_proj"), ("q_proj", "v_proj"), False),
])
def test_presets_resolve_to_language_model_layers_only(meta_llava, targets, per_layer, projector) -> None:
    import re

    regex = re.compile(vlm_target_regex(meta_llava, targets, "llava"))
    chosen = [n for n in _linears(meta_llava) if regex.fullmatch(n)]
    lm = [n for n in chosen if n.startswith("model.language_model.layers.")]
    assert len(lm) == 32 * len(per_layer) and {n.rsplit(".", 1)[1] for n in lm} == set(per_layer)
    rest = sorted(set(chosen) - set(lm))
    assert rest == (["model.multi_modal_projector.linear_1", "model.multi_modal_projector.linear_2"] if projector else [])
    assert not any("vision_tower" in n or n == "lm_head" for n in chosen)


@pytest.mark.parametrize("targets,message", [
    (("nonexistent_proj",), "lora.targets: module 'nonexistent_proj' does not exist in the llava decoder"),
    (("fc1",), "lora.targets: module 'fc1' does not exist"),  # the vision tower's, never the LM's
    ("everything", "lora.targets: unknown preset 'everything'"),
    ((), "lora.targets: the list of target modules is empty"),
])
def test_targets_that_match_nothing_are_one_line_errors(meta_llava, targets, message) -> None:
    with pytest.raises(BenchError) as info:
        vlm_target_regex(meta_llava, targets, "llava")
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_qlora_keeps_vision_tower_projector_and_lm_head_in_full_precision(monkeypatch, meta_llava) -> None:
    """The 4-bit config on a (mocked) bf16 CUDA GPU, and what transformers' own matcher leaves unquantized."""
    from transformers.quantizers.quantizers_utils import should_convert_module

    from bench.backends.llava import quantization_config

    pytest.importorskip("bitsandbytes")  # imported before CUDA is mocked (it probes the real CUDA)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    quant = keep_vlm_parts_full(quantization_config("4bit", torch.device("cuda", 0)))
    assert quant.load_in_4bit and quant.bnb_4bit_quant_type == "nf4" and quant.bnb_4bit_compute_dtype == torch.bfloat16
    assert quant.llm_int8_skip_modules == list(FULL_PRECISION_PARTS)
    kept = [n for n in _linears(meta_llava) if not should_convert_module(n, quant.llm_int8_skip_modules)]
    quantized = [n for n in _linears(meta_llava) if should_convert_module(n, quant.llm_int8_skip_modules)]
    assert kept == [n for n in _linears(meta_llava) if n.startswith(("model.vision_tower.", "model.multi_modal_projector.")) or n == "lm_head"]
    assert len(quantized) == 32 * 7 and all(n.startswith("model.language_model.layers.") for n in quantized)
    assert keep_vlm_parts_full(None) is None


def test_lora_load_keeps_the_vlm_parts_full_precision(monkeypatch) -> None:
    """The llava backend's 4-bit load, zero-shot and for LoRA alike, hands from_pretrained a
    skip list that leaves the vision tower, projector and lm_head unquantized (QLoRA's layout)."""
    import bench.backends.vlm as vlm
    from bench.models.vlm_families import family_for
    from bench.config import ModelConfig

    pytest.importorskip("bitsandbytes")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    seen: list[dict] = []

    class Stop(Exception):
        pass

    def fake_load_model(cls, model, what, field, **kwargs):
        seen.append(kwargs)
        raise Stop

    monkeypatch.setattr(vlm, "load_model", fake_load_model)
    cfg = ModelConfig(model="unused", quantization="4bit")
    family = family_for("llava", True, "test")
    with pytest.raises(Stop):
        vlm.VlmCaptioner._load_model(cfg, torch.device("cuda", 0), family, None, object)
    skip = seen[0]["quantization_config"].llm_int8_skip_modules
    assert {"model.vision_tower", "model.multi_modal_projector", "lm_head"} <= set(skip)
    assert seen[0]["device_map"] == {"": 0}


@pytest.fixture(scope="module")
def shrunk_llava(tmp_path_factory) -> Path:
    """llava-1.5-7b's config shrunk in widths and depths (vocab 32064, 336 px / patch 14 = 576 image
    tokens kept), random weights, beside the real processor files (bench.testing.real_models)."""
    if not (REAL / "config.json").is_file():
        pytest.skip(f"real LLaVA-1.5 files not found in {REAL}")
    from bench.testing.real_models import build_real_model

    return build_real_model(REAL, tmp_path_factory.mktemp("shrunk-llava"), 0)


def test_shrunk_real_llava_trains_only_lora_and_its_loss_is_the_caption_cross_entropy(shrunk_llava, brief, images) -> None:
    from bench.backends import backend_class
    from bench.config import LoraConfig, ModelConfig

    torch.set_num_threads(1)
    captioner = backend_class("llava").load(ModelConfig(model=str(shrunk_llava)), torch.device("cpu"), prompt=brief)
    captioner.add_lora(LoraConfig(r=2, alpha=4, dropout=0.0, targets=("attn", "projector")))
    trainable = [n for n, p in captioner.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert not any("vision_tower" in n for n in trainable) and any("multi_modal_projector" in n for n in trainable)
    batch = captioner.train_collate()([(Sample(p.stem, p, ("r",)), c) for p, c in zip(images, CAPTIONS)])
    assert batch["input_ids"].shape[1] > 576
    loss = captioner.loss(batch)
    # Independent: cross-entropy of the next-token logits at exactly the caption + </s> positions.
    with torch.no_grad():
        logits = captioner.model(**{k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "pixel_values")}).logits
    picks = [(i, k) for i in range(2) for k in range(1, batch["labels"].shape[1]) if batch["labels"][i, k] != IGNORE]
    expected = torch.stack([
        torch.nn.functional.cross_entropy(logits[i, k - 1], batch["input_ids"][i, k]) for i, k in picks
    ]).mean()
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-5)
    n_caption = sum(len(captioner.processor.tokenizer(c, add_special_tokens=False)["input_ids"]) + 1 for c in CAPTIONS)
    assert len(picks) == n_caption
