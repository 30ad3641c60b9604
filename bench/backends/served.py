"""Zero-shot captioning through any OpenAI-compatible chat-completions endpoint (`openai`).

vLLM, SGLang, LMDeploy, llama.cpp's server, Ollama or a hosted API: the model runs there, bench
sends each image with the prompt file's text and keeps the answer. A setting names it so:

    [models.openai]
    model = "Qwen/Qwen2-VL-7B-Instruct"        # the id the server serves (or a LoRA adapter's name)
    base_url = "http://127.0.0.1:8000/v1"
    api_key_env = "OPENAI_API_KEY"             # optional: local servers need no key
    options = { max_concurrency = 16 }

Decoding is the setting's: temperature 0 (greedy), `max_tokens` = generation.max_new_tokens,
the setting's seed, `options.stop` when given. The captioning loop is the endpoint's own
(`bench.served.stream`: concurrent, appended as answers arrive); `caption_run` is what
`bench.run.execute` calls instead of the batched DataLoader loop.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from bench.backends.base import Batch, Captioner
from bench.config import GenerationConfig, ModelConfig
from bench.errors import BenchError
from bench.prompts import PromptTemplate, load_prompt

DEFAULT_PROMPT = "brief"
FIELD = "models.openai"
# option -> (type, default, minimum): how the endpoint is driven and what is sent.
OPTIONS: dict[str, tuple[type, object, float | None]] = {
    "max_concurrency": (int, 16, 1),
    "timeout_s": (float, 120.0, 0.001),
    "max_retry_s": (float, 600.0, 0.0),
    "system": (str, "", None),
    "max_side": (int, 0, 0),  # 0: the file's own size
    "stop": (list, [], None),
}


def check_options(options: dict[str, object]) -> dict[str, Any]:
    resolved: dict[str, Any] = {k: v[1] for k, v in OPTIONS.items()}
    for key, value in options.items():
        if key not in OPTIONS:
            raise BenchError(f"{FIELD}.options: unknown key {key!r} (allowed: {', '.join(OPTIONS)})")
        kind, _, minimum = OPTIONS[key]
        ok = isinstance(value, kind) and not isinstance(value, bool)
        if kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind is list:
            ok = isinstance(value, list) and all(isinstance(v, str) and v for v in value)
        if not ok:
            raise BenchError(f"{FIELD}.options.{key} must be {'a list of strings' if kind is list else kind.__name__}, got {value!r}")
        if minimum is not None and value < minimum:  # type: ignore[operator]
            raise BenchError(f"{FIELD}.options.{key} must be >= {minimum:g}, got {value!r}")
        resolved[key] = float(value) if kind is float else value  # type: ignore[arg-type]
    return resolved


def api_key(model_cfg: ModelConfig) -> str | None:
    """The key from the environment variable the setting names; None for a keyless server."""
    name = model_cfg.api_key_env
    if not name:
        return None
    value = os.environ.get(name, "")
    if not value.strip():
        raise BenchError(f"{FIELD}.api_key_env: environment variable {name} is not set (it holds the endpoint's key)")
    return value.strip()


class ServedCaptioner(Captioner):
    # No default model (bench.backends.table): a setting or `bench run --model NAME --endpoint URL`
    # names the served model.
    name: ClassVar[str] = "openai"

    endpoint: Any  # bench.served.stream.Endpoint
    template: PromptTemplate

    @classmethod
    def load(cls, model_cfg: ModelConfig, device: torch.device, prompt: str | PromptTemplate | None = None,
             **_: Any) -> "ServedCaptioner":
        """Check the endpoint answers for the model (one `/v1/models` call); nothing loads here."""
        from bench.served.client import ClientConfig, RetryPolicy

        if not model_cfg.base_url:
            raise BenchError(f"{FIELD}.base_url is missing: the endpoint's URL, e.g. http://127.0.0.1:8000/v1")
        template = prompt if isinstance(prompt, PromptTemplate) else load_prompt(prompt or DEFAULT_PROMPT)
        options = check_options(dict(model_cfg.options))
        client = ClientConfig(
            base_url=model_cfg.base_url, api_key=api_key(model_cfg), timeout_s=options["timeout_s"],
            max_concurrency=options["max_concurrency"], retry=RetryPolicy(max_retry_s=options["max_retry_s"]),
        )
        self = cls(model_cfg, device, template.name)
        self.template = template
        self.options = options
        self.client = client
        check_served(client, model_cfg)
        return self

    def endpoint_for(self, gen: GenerationConfig, seed: int | None) -> Any:
        from bench.served.stream import Endpoint

        return Endpoint(
            client=self.client, model=self.model_cfg.model, template=self.template,
            max_tokens=int(gen.for_kind(zero_shot=True).max_new_tokens or 0), seed=seed,
            stop=tuple(self.options["stop"]), system=self.options["system"],
            max_side=self.options["max_side"] or None,
        )

    def caption_run(self, samples: Sequence[Any], gen: GenerationConfig, seed: int | None, run_dir: Path,
                    progress: bool = True, console: Any = None) -> Any:
        """Caption the samples predictions.jsonl lacks through the endpoint (bench.served.stream)."""
        from bench.served.client import EndpointError
        from bench.served.stream import caption_via_endpoint

        endpoint = self.endpoint_for(gen, seed)
        try:
            return caption_via_endpoint(endpoint, samples, run_dir, progress, console)
        except EndpointError as exc:
            raise endpoint_error(exc, self.model_cfg) from None

    def resolved_options(self) -> dict[str, object]:
        return {"endpoint": "openai-compatible", "max_concurrency": self.options["max_concurrency"]}

    def torch_module(self) -> torch.nn.Module:
        return torch.nn.Module()  # the model lives behind the endpoint

    def caption_collate(self) -> Any:
        return _paths_batch

    def generate(self, batch: Batch, gen: GenerationConfig) -> list[str]:
        """One batch through the endpoint (the run itself uses `caption_run`); a failed image
        is an error here, never an empty caption."""
        from bench.models.caption_text import postprocess_caption
        from bench.data.types import Sample
        from bench.served.client import EndpointError, run_chats

        endpoint = self.endpoint_for(gen, None)
        requests = [endpoint.request(Sample(i, Path(p), ()))[0] for i, p in zip(batch["image_ids"], batch["paths"])]
        try:
            results = run_chats(self.client, requests)
        except EndpointError as exc:
            raise endpoint_error(exc, self.model_cfg) from None
        bad = [r for r in results if not r.ok]
        if bad:
            raise BenchError(f"image {bad[0].key}: {bad[0].reason}")
        self.last_truncated = [r.truncated for r in results]
        return [postprocess_caption(r.text or "", self.template.sentences) for r in results]


def _paths_batch(samples: Sequence[Any]) -> Batch:
    return {"image_ids": [s.image_id for s in samples], "paths": [str(s.path) for s in samples]}


def endpoint_error(exc: Any, model_cfg: ModelConfig) -> BenchError:
    """An endpoint refusal as a one-line error naming the setting field at fault."""
    if exc.status in (401, 403):
        env = model_cfg.api_key_env or "(none set)"
        return BenchError(f"{FIELD}.api_key_env {env}: the endpoint refused the key ({exc})")
    return BenchError(f"{FIELD}.model {model_cfg.model!r}: not served at {model_cfg.base_url} ({exc})")


def check_served(client: Any, model_cfg: ModelConfig) -> None:
    """Before any image: the endpoint answers, takes the key, and lists the model (where it
    lists models at all: a server without `/v1/models` is asked directly)."""
    from bench.served.client import EndpointError, list_models

    try:
        served = list_models(client)
    except EndpointError as exc:
        if exc.status == 404:
            return  # no /models route: the first request will say whether the model exists
        raise endpoint_error(exc, model_cfg) from None
    except BenchError as exc:
        raise BenchError(f"{FIELD}.base_url {model_cfg.base_url}: cannot reach the endpoint ({exc})") from None
    if served and model_cfg.model not in served:
        listed = ", ".join(served[:8]) + (", ..." if len(served) > 8 else "")
        raise BenchError(f"{FIELD}.model {model_cfg.model!r}: not served at {model_cfg.base_url} (it serves {listed})")
