"""What the real llava-hf/llava-1.5-7b-hf files change (real tokenizer, processor, chat template and
generation config from ../shared/models; random weights of shrunk widths): 576 image tokens at
336 px inside the real chat template, left padding with the real pad id, only new tokens decoded,
the setting's decoding, every prompt file; image_mode "pad" exactly as LLaVA's own evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from bench.backends import backend_class
from bench.models.caption_text import postprocess_caption
from bench.backends.vlm import VlmCollate, encode, render_prompt
from bench.config import GenerationConfig, ModelConfig
from bench.data.types import Sample
from bench.prompts import list_prompts, load_prompt
from conftest import REPO

CPU = torch.device("cpu")
IMAGE_TOKEN, PAD, BOS = 32000, 32001, 1  # llava-1.5-7b-hf's config.json and tokenizer
NAMES = ("1001773457_577c3a7d70", "1000268201_693b08cb0e", "1022975728_75515238d8")  # 500x375, 375x500, 500x281


@pytest.fixture(scope="module")
def samples(shared_data: Path) -> list[Sample]:
    return [Sample(n, shared_data / "flickr8k-1k" / "images" / f"{n}.jpg", ("ref",)) for n in NAMES]


@pytest.fixture(scope="module")
def llava(real_vlm: dict[str, Path]):
    torch.set_num_threads(1)
    return backend_class("llava").load(ModelConfig(model=str(real_vlm["llava"])), CPU, prompt=load_prompt("brief", REPO / "prompts"))


def llava_expand2square(image: Image.Image, background: tuple[int, ...]) -> Image.Image:
    """LLaVA's llava/mm_utils.py expand2square, as written there (the reference for image_mode "pad")."""
    width, height = image.size
    if width == height:
        return image
    elif width > height:
        result = Image.new(image.mode, (width, width), background)
        result.paste(image, (0, (width - height) // 2))
        return result
    else:
        result = Image.new(image.mode, (height, height), background)
        result.paste(image, ((height - width) // 2, 0))
        return result


def test_576_image_tokens_at_336_px_inside_the_real_chat_template(llava, samples):
    assert llava.prompt_text == "USER: <image>\nBriefly describe this image in a sentence. Thank you. ASSISTANT:"
    assert llava.image_mode == "pad" and llava.family.model_type == "llava"
    batch = llava.caption_collate()(samples)
    assert tuple(batch["pixel_values"].shape) == (3, 3, 336, 336)
    assert (batch["input_ids"] == IMAGE_TOKEN).sum(dim=1).tolist() == [576, 576, 576]
    row = batch["input_ids"][0].tolist()
    first = row.index(IMAGE_TOKEN)
    tok = llava.processor.tokenizer
    assert row[0] == BOS and tok.decode(row[1:first]).strip() == "USER:"
    assert row[first:first + 576] == [IMAGE_TOKEN] * 576  # one contiguous block, then the text
    assert tok.decode(row[first + 576:]).strip() == "Briefly describe this image in a sentence. Thank you. ASSISTANT:"


def test_left_padding_with_the_real_pad_id(llava, samples):
    images = [Image.open(s.path).convert("RGB") for s in samples[:2]]
    texts = ["USER: <image>\nDescribe. ASSISTANT:", "USER: <image>\nDescribe the key objects in the image. ASSISTANT:"]
    batch = encode(llava.processor, images, texts)
    short = int(batch["attention_mask"][0].sum())
    padding = batch["input_ids"].shape[1] - short
    assert padding > 0 and batch["input_ids"][0, :padding].tolist() == [PAD] * padding
    assert batch["attention_mask"][0, :padding].sum() == 0 and batch["input_ids"][0, padding] == BOS
    singles = [llava.generate(encode(llava.processor, [i], [t]), GenerationConfig(max_new_tokens=6))[0] for i, t in zip(images, texts)]
    assert llava.generate(batch, GenerationConfig(max_new_tokens=6)) == singles


def test_only_new_tokens_are_decoded_and_decoding_is_the_settings(llava, samples):
    batch = llava.caption_collate()(samples[:2])
    assert set(llava.model.generation_config.to_diff_dict()) <= {"bos_token_id", "eos_token_id", "pad_token_id", "transformers_version"}
    with torch.inference_mode():
        out = llava.model.generate(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=batch["pixel_values"],
            max_new_tokens=5, do_sample=False, num_beams=1, pad_token_id=PAD,
        )
    tok = llava.processor.tokenizer
    new = out[:, batch["input_ids"].shape[1]:]
    expected = [postprocess_caption(t, 1) for t in tok.batch_decode(new, skip_special_tokens=True)]
    got = llava.generate(batch, GenerationConfig(max_new_tokens=5))
    assert got == expected and all(got)
    assert all(r.new_tokens <= 5 for r in llava.last_rows)
    assert not any("Briefly" in c or "ASSISTANT" in c for c in got)


def test_every_prompt_file_with_the_real_config_llava(llava, samples):
    tok = llava.processor.tokenizer
    for prompt in list_prompts(REPO / "prompts"):
        text = render_prompt(llava.processor, prompt, llava.family)
        assert text == f"USER: <image>\n{prompt.text} ASSISTANT:", prompt.name
        collate = VlmCollate(llava.processor, text, square_colour=(122, 116, 104))
        batch = collate(samples[:2])
        assert (batch["input_ids"] == IMAGE_TOKEN).sum(dim=1).tolist() == [576, 576], prompt.name
        words = tok.decode([t for t in batch["input_ids"][0].tolist() if t not in (IMAGE_TOKEN, PAD)], skip_special_tokens=True)
        assert prompt.text in " ".join(words.split()), prompt.name
        assert len(llava.generate(batch, GenerationConfig(max_new_tokens=4))) == 2


def test_image_mode_pad_is_llavas_expand2square_and_crop_the_processors(llava, real_vlm, samples):
    processor = llava.processor
    mean = tuple(int(x * 255) for x in processor.image_processor.image_mean)
    assert mean == (122, 116, 104)  # CLIP's image_mean in 0-255, LLaVA's padding colour
    pad = llava.caption_collate()(samples)["pixel_values"]
    images = [Image.open(s.path).convert("RGB") for s in samples]
    reference = processor.image_processor([llava_expand2square(i, mean) for i in images], return_tensors="pt")["pixel_values"]
    assert torch.equal(pad, reference)
    crop_captioner = backend_class("llava").load(
        ModelConfig(model=str(real_vlm["llava"]), options={"image_mode": "crop"}), CPU, prompt=load_prompt("brief", REPO / "prompts")
    )
    assert crop_captioner.resolved_options() == {"model_type": "llava", "prompt_rule": "chat", "image_mode": "crop"}
    crop = crop_captioner.caption_collate()(samples)["pixel_values"]
    assert torch.equal(crop, processor.image_processor(images, return_tensors="pt")["pixel_values"])
    assert not torch.equal(crop, pad)  # none of these photos is square
