"""What the loopback server (bench.testing.openai_server) answers: the parsed chat request, and
the two answerers, a scripted one (fast) and bench's `vlm` backend on a local folder (greedy).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

@dataclass(frozen=True)
class Answer:
    text: str
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class ParsedRequest:
    """What the answerers need from a chat request."""

    image: bytes
    image_first: bool
    text: str
    system: str | None
    max_tokens: int | None
    stop: tuple[str, ...]

    @property
    def image_digest(self) -> str:
        return hashlib.sha256(self.image).hexdigest()


class BadRequest(Exception):
    """A request the server answers with 400 (message in the error body)."""


def parse_chat(body: dict[str, Any]) -> ParsedRequest:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list")
    system = None
    image: bytes | None = None
    texts: list[str] = []
    image_first = False
    for message in messages:
        role, content = message.get("role"), message.get("content")
        if role == "system":
            system = content if isinstance(content, str) else " ".join(p.get("text", "") for p in content)
            continue
        if role != "user":
            raise BadRequest(f"unsupported role {role!r}")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        for part in parts:
            if part.get("type") == "image_url":
                if image is not None:
                    raise BadRequest("one image per request")
                image, image_first = _data_url_bytes(part.get("image_url", {}).get("url", "")), not texts
            elif part.get("type") == "text":
                texts.append(str(part.get("text", "")))
            else:
                raise BadRequest(f"unsupported content part {part.get('type')!r}")
    if image is None:
        raise BadRequest("no image_url part")
    stop = body.get("stop") or ()
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    return ParsedRequest(image, image_first, " ".join(t.strip() for t in texts if t.strip()), system,
                         int(max_tokens) if max_tokens is not None else None,
                         (stop,) if isinstance(stop, str) else tuple(stop))


def _data_url_bytes(url: str) -> bytes:
    head, sep, data = url.partition(",")
    if not sep or not head.startswith("data:") or not head.endswith(";base64"):
        raise BadRequest("image_url must be a base64 data URL (the loopback server fetches nothing)")
    try:
        return base64.b64decode(data, validate=True)
    except binascii.Error as exc:
        raise BadRequest(f"bad base64 image: {exc}") from None


def _cut_at_stop(answer: Answer, stop: tuple[str, ...]) -> Answer:
    cuts = [answer.text.find(s) for s in stop if s and s in answer.text]
    return replace(answer, text=answer.text[: min(cuts)], finish_reason="stop") if cuts else answer


class ScriptedAnswerer:
    """Answers from a function of the request (default: a caption naming the image's digest)."""

    def __init__(self, script: Callable[[ParsedRequest], str] | None = None) -> None:
        self.script = script or (lambda r: f"a photo numbered {r.image_digest[:8]}.")

    def __call__(self, request: ParsedRequest) -> Answer:
        text = self.script(request)
        return Answer(text, "stop", prompt_tokens=len(request.text.split()) + 1, completion_tokens=len(text.split()))


class TinyVlmAnswerer:
    """A local VLM folder through bench's `vlm` backend: greedy, one request at a time."""

    def __init__(self, model_dir: str | Path, default_max_tokens: int = 64) -> None:
        import torch

        from bench.backends import backend_class
        from bench.config import ModelConfig

        self.captioner = backend_class("vlm").load(ModelConfig(model=str(model_dir)), torch.device("cpu"))
        # The server returns all sentences; the client keeps as many as its prompt file says.
        self.captioner.template = replace(self.captioner.template, sentences=0)
        self.default_max_tokens = default_max_tokens
        self._lock = threading.Lock()  # one generate at a time: the model is not thread-safe

    def _prompt(self, request: ParsedRequest) -> str:
        from bench.backends.vlm import render_prompt
        from bench.prompts import IMAGE_PLACEHOLDER

        template = f"{IMAGE_PLACEHOLDER}\n{request.text}" if request.image_first else f"{request.text}\n{IMAGE_PLACEHOLDER}"
        rendered = render_prompt(self.captioner.processor, replace(self.captioner.template, template=template),
                                 self.captioner.family)
        if request.system and rendered is not None:
            rendered = f"{request.system}\n{rendered}"
        return rendered

    def __call__(self, request: ParsedRequest) -> Answer:
        from bench.config import GenerationConfig
        from bench.data.types import Sample

        gen = GenerationConfig(max_new_tokens=request.max_tokens or self.default_max_tokens, batch_size=1)
        with self._lock, tempfile.TemporaryDirectory(prefix="bench-loopback-") as tmp:
            path = Path(tmp) / "image"
            path.write_bytes(request.image)
            collate = replace(self.captioner.caption_collate(), prompt_text=self._prompt(request))
            batch = collate([Sample("request", path, ())])
            text = self.captioner.generate(batch, gen)[0]
            row = self.captioner.last_rows[0]
            truncated = self.captioner.last_truncated[0]
        prompt_tokens = int(batch["attention_mask"].sum()) if "attention_mask" in batch else 0
        answer = Answer(text, "length" if truncated else "stop", prompt_tokens, row.new_tokens)
        return _cut_at_stop(answer, request.stop)


