"""The loopback server with a real tiny VLM behind real HTTP, driven by the real openai client:
captions through the endpoint equal the in-process `vlm` backend's (greedy, same prompt)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.backends import backend_class
from bench.models.caption_text import postprocess_caption
from bench.config import GenerationConfig, ModelConfig
from bench.data.types import Sample
from bench.prompts import load_prompt
from bench.served.client import ChatRequest, ClientConfig, run_chats
from bench.served.messages import chat_messages, image_payload
from bench.testing.openai_server import OpenAIServer, TinyVlmAnswerer
from conftest import REPO, tiny_vlm_dir

MAX_NEW = 12


@pytest.fixture(scope="module")
def tiny_dirs(tiny_root: Path) -> dict[str, Path]:
    # LLaVA-1.5's template puts images first whatever the order; Qwen2-VL's keeps the parts' order.
    return {family: tiny_vlm_dir(tiny_root, family) for family in ("llava", "qwen2_vl")}


@pytest.fixture(scope="module")
def samples(shared_data: Path) -> list[Sample]:
    folder = shared_data / "flickr8k-1k" / "images"
    return [Sample(p.stem, p, ("ref",)) for p in sorted(folder.glob("*.jpg"))[:4]]


def in_process(model_dir: Path, prompt: Path, samples: list[Sample]) -> list[str]:
    captioner = backend_class("vlm").load(ModelConfig(model=str(model_dir)), torch.device("cpu"), prompt=load_prompt(prompt))
    batch = captioner.caption_collate()(samples)
    return captioner.generate(batch, GenerationConfig(max_new_tokens=MAX_NEW, batch_size=len(samples)))


@pytest.fixture(scope="module")
def text_first(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prompt with the instruction before the image: the text part goes first."""
    path = tmp_path_factory.mktemp("prompts") / "text_first.toml"
    path.write_text('template = "Look at this photo and describe it. <image>"\nsentences = 0\n')
    return path


@pytest.mark.parametrize(("family", "prompt"), [("llava", "brief"), ("llava", "key_objects"), ("qwen2_vl", "text_first"), ("qwen2_vl", "brief")])
def test_endpoint_captions_equal_in_process_captions(
    tiny_dirs: dict[str, Path], samples: list[Sample], text_first: Path, family: str, prompt: str,
) -> None:
    llava_dir = tiny_dirs[family]
    prompt_ref = text_first if prompt == "text_first" else REPO / "prompts" / f"{prompt}.toml"
    template = load_prompt(prompt_ref)
    with OpenAIServer(TinyVlmAnswerer(llava_dir)) as server:
        requests = [
            ChatRequest(s.image_id, "tiny-vlm", chat_messages(template, image_payload(s.path).url), max_tokens=MAX_NEW)
            for s in samples
        ]
        results = run_chats(ClientConfig(server.base_url, max_concurrency=2), requests)
    assert all(r.ok for r in results)
    through_endpoint = [postprocess_caption(r.text or "", template.sentences) for r in results]
    expected = in_process(llava_dir, prompt_ref, samples)
    assert through_endpoint == expected
    assert len(set(expected)) > 1  # the images reach the model: captions differ
    assert all(r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= MAX_NEW for r in results)


def test_the_image_part_follows_the_placeholder(text_first: Path) -> None:
    first = chat_messages(load_prompt(REPO / "prompts" / "brief.toml"), "data:x")[0]["content"]
    last = chat_messages(load_prompt(text_first), "data:x", system="Be brief.")
    assert [p["type"] for p in first] == ["image_url", "text"]
    assert last[0] == {"role": "system", "content": "Be brief."}
    assert [p["type"] for p in last[1]["content"]] == ["text", "image_url"]
