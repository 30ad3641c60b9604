"""A sturdy asynchronous chat-completions client over the official `openai` package.

Any endpoint speaking OpenAI's `/v1/chat/completions` (vLLM, SGLang, LMDeploy, llama.cpp's
server, Ollama, hosted APIs) is driven through `openai.AsyncOpenAI` with its own retries turned
off (`max_retries=0`): the retry policy here is bounded by total time rather than a count, since
a rate limit followed by two overloads is ordinary for a hosted API, and it must stay the same
whatever the installed client version does.

    results = run_chats(ClientConfig(base_url=..., api_key=...), requests, on_result=append)

- at most `max_concurrency` requests in flight (an `asyncio.Semaphore`, held per attempt);
- transient failures (429, 408/409, 5xx, timeouts, dropped connections, malformed JSON, a reply
  without choices or text) are retried with exponential backoff and jitter, honouring the
  server's `Retry-After`, until `RetryPolicy.max_retry_s` is spent; then the request's result
  is `failed` with a one-line reason;
- a permanent error of one request (400, 413, 422) fails that request at once;
- a permanent error of the endpoint itself (401, 403, 404: key or model) stops everything:
  `EndpointError` with the status, so the caller can name the setting field at fault.

The API key never appears in a result, a reason or an error: reasons are built from status
codes and the server's messages, and every one is scrubbed of the key before it leaves here.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.errors import BenchError

# HTTP statuses that say "try again later"; anything else 4xx is the request's own fault.
TRANSIENT_STATUSES = frozenset({408, 409, 429}) | frozenset(range(500, 600))
# Statuses that no request can succeed after: the key or the model is wrong for every image.
ENDPOINT_STATUSES = frozenset({401, 403, 404})
LOCAL_API_KEY = "EMPTY"  # what a local server without --api-key accepts (vLLM's convention)


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of one request: exponential backoff with jitter, bounded by total time."""

    max_retry_s: float = 300.0  # no new attempt starts this long after the first one began
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    jitter: float = 0.25  # each wait is shortened by a random fraction up to this
    max_retry_after_s: float = 120.0  # a longer Retry-After is capped here (then still bounded)

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Seconds before retry number `attempt` (1-based), without a Retry-After."""
        base = min(self.initial_backoff_s * 2.0 ** (attempt - 1), self.max_backoff_s)
        return base * (1.0 - self.jitter * rng.random())


@dataclass(frozen=True)
class ClientConfig:
    base_url: str
    api_key: str | None = field(default=None, repr=False)  # never printed with the config
    timeout_s: float = 120.0  # one attempt, connect to last byte
    max_concurrency: int = 16
    retry: RetryPolicy = RetryPolicy()


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion to obtain; `key` names it in results (an image id)."""

    key: str
    model: str
    messages: Sequence[dict[str, Any]]
    max_tokens: int | None = None
    temperature: float | None = 0.0
    seed: int | None = None
    stop: Sequence[str] | None = None
    extra_body: dict[str, Any] | None = None  # server-specific fields, passed through


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class ChatResult:
    """ok: `text` is the first choice's message; failed: `reason` says why, in one line."""

    key: str
    ok: bool
    text: str | None = None
    reason: str | None = None
    finish_reason: str | None = None
    model: str | None = None  # the model id the server reports having used
    system_fingerprint: str | None = None
    usage: Usage = Usage()
    usage_reported: bool = True  # False: the server sent no usage (tokens unknown, not zero)
    attempts: int = 1
    wait_s: float = 0.0  # seconds spent backing off

    @property
    def truncated(self) -> bool:
        """The reply stopped at max_tokens (a fragment): counted, never hidden."""
        return self.finish_reason == "length"


class EndpointError(BenchError):
    """The endpoint refuses every request (bad key, unknown model or path): stop the run."""

    def __init__(self, message: str, status: int | None) -> None:
        super().__init__(message)
        self.status = status


class _Transient(Exception):
    """One attempt failed in a way that another attempt may not."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class _Permanent(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def retry_after_s(headers: Any) -> float | None:
    """Seconds a response's `retry-after-ms` / `Retry-After` (seconds or HTTP date) asks for."""
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / scale
        except ValueError:
            parsed = email.utils.parsedate_tz(value)
            if parsed is None:
                continue
            seconds = email.utils.mktime_tz(parsed) - time.time()
        return max(0.0, seconds) if seconds == seconds else None  # NaN: ignored
    return None


def one_line(text: object, limit: int = 200) -> str:
    """A server message folded to one line of at most `limit` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _status_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else inner
        if message:
            return one_line(message)
    return one_line(getattr(exc, "message", exc))


def classify(exc: BaseException) -> Exception:
    """An exception of one attempt -> _Transient, _Permanent or EndpointError."""
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return _Transient("timed out")
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc
        return _Transient(f"connection failed ({type(cause).__name__})")
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        text = f"HTTP {status}: {_status_message(exc)}"
        if status in ENDPOINT_STATUSES:
            return EndpointError(text, status)
        if status in TRANSIENT_STATUSES:
            return _Transient(text, retry_after_s(exc.response.headers))
        return _Permanent(text)
    if isinstance(exc, (openai.APIResponseValidationError, json.JSONDecodeError, ValueError)):
        return _Transient(f"malformed response ({type(exc).__name__})")
    if isinstance(exc, (ConnectionError, asyncio.TimeoutError)):
        return _Transient(f"connection failed ({type(exc).__name__})")
    return _Transient(f"unexpected {type(exc).__name__}: {one_line(exc)}")


def _reply(request: ChatRequest, completion: Any, attempts: int, wait_s: float) -> ChatResult:
    """A parsed completion -> ChatResult; a reply without choices or text is transient."""
    choices = getattr(completion, "choices", None)
    if not isinstance(choices, list) or not choices:
        raise _Transient("empty choices")
    choice = choices[0]
    message = getattr(choice, "message", None)
    text = getattr(message, "content", None)
    if not isinstance(text, str):
        raise _Transient("reply has no message content")
    usage = getattr(completion, "usage", None)
    return ChatResult(
        key=request.key,
        ok=True,
        text=text,
        finish_reason=getattr(choice, "finish_reason", None),
        model=getattr(completion, "model", None),
        system_fingerprint=getattr(completion, "system_fingerprint", None),
        usage=Usage(int(getattr(usage, "prompt_tokens", 0) or 0), int(getattr(usage, "completion_tokens", 0) or 0)),
        usage_reported=usage is not None,
        attempts=attempts,
        wait_s=wait_s,
    )


class ChatClient:
    """One `AsyncOpenAI` for a batch of requests; use inside a running event loop."""

    def __init__(self, config: ClientConfig, rng: random.Random | None = None) -> None:
        import openai

        if config.max_concurrency < 1:
            raise BenchError(f"max_concurrency must be >= 1, got {config.max_concurrency}")
        self.config = config
        self._rng = rng or random.Random()
        self._slots = asyncio.Semaphore(config.max_concurrency)
        self._client = openai.AsyncOpenAI(
            api_key=config.api_key or LOCAL_API_KEY, base_url=config.base_url,
            timeout=config.timeout_s, max_retries=0,
        )

    async def close(self) -> None:
        await self._client.close()

    def _scrub(self, text: str) -> str:
        key = self.config.api_key
        return text.replace(key, "***") if key else text

    async def _attempt(self, request: ChatRequest) -> Any:
        kwargs: dict[str, Any] = {"model": request.model, "messages": list(request.messages)}
        for name in ("max_tokens", "temperature", "seed"):
            value = getattr(request, name)
            if value is not None:
                kwargs[name] = value
        if request.stop:
            kwargs["stop"] = list(request.stop)
        if request.extra_body:
            kwargs["extra_body"] = dict(request.extra_body)
        async with self._slots:
            return await self._client.chat.completions.create(**kwargs)

    async def complete(self, request: ChatRequest) -> ChatResult:
        """The request's result after retries; raises EndpointError for a key/model error."""
        policy = self.config.retry
        deadline = time.monotonic() + policy.max_retry_s
        attempts, wait_s = 0, 0.0
        while True:
            attempts += 1
            try:
                try:
                    completion = await self._attempt(request)
                except Exception as exc:  # noqa: BLE001 - every failure is classified below
                    raise classify(exc) from exc
                return _reply(request, completion, attempts, wait_s)
            except EndpointError as exc:
                raise EndpointError(self._scrub(str(exc)), exc.status) from None
            except _Permanent as exc:
                return self._failed(request, exc.reason, attempts, wait_s)
            except _Transient as exc:
                delay = policy.backoff(attempts, self._rng)
                if exc.retry_after is not None:
                    delay = min(max(exc.retry_after, 0.0), policy.max_retry_after_s)
                if time.monotonic() + delay > deadline:
                    why = f"{exc.reason}; gave up after {attempts} attempt(s) in {policy.max_retry_s:g} s of retries"
                    return self._failed(request, why, attempts, wait_s)
                await asyncio.sleep(delay)
                wait_s += delay

    def _failed(self, request: ChatRequest, reason: str, attempts: int, wait_s: float) -> ChatResult:
        return ChatResult(key=request.key, ok=False, reason=self._scrub(one_line(reason)), attempts=attempts, wait_s=wait_s)

    async def complete_all(
        self, requests: Iterable[ChatRequest], on_result: Callable[[ChatResult], None] | None = None,
    ) -> list[ChatResult]:
        """Every request's result, in request order; `on_result` sees each as it arrives.

        `requests` is read lazily, one request per free worker, so a generator that encodes an
        image per request holds at most `max_concurrency` of them in memory. An EndpointError
        (or an error raised by the generator) stops the other workers and is raised."""
        source = iter(enumerate(requests))
        results: dict[int, ChatResult] = {}

        async def worker() -> None:
            for index, request in source:  # one shared iterator: each request is taken once
                result = await self.complete(request)
                results[index] = result
                if on_result is not None:
                    on_result(result)

        tasks = [asyncio.ensure_future(worker()) for _ in range(self.config.max_concurrency)]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return [results[i] for i in sorted(results)]

    async def model_ids(self) -> list[str]:
        """The ids `/v1/models` lists (one attempt; an EndpointError for a bad key)."""
        try:
            page = await self._client.models.list()
        except Exception as exc:  # noqa: BLE001
            err = classify(exc)
            if isinstance(err, EndpointError):
                raise EndpointError(self._scrub(str(err)), err.status) from None
            raise BenchError(self._scrub(f"GET /models: {getattr(err, 'reason', err)}")) from None
        return [m.id for m in page.data]


def run_chats(
    config: ClientConfig, requests: Iterable[ChatRequest], on_result: Callable[[ChatResult], None] | None = None,
    rng: random.Random | None = None,
) -> list[ChatResult]:
    """`ChatClient.complete_all` from synchronous code (a fresh event loop)."""
    async def main() -> list[ChatResult]:
        client = ChatClient(config, rng)
        try:
            return await client.complete_all(requests, on_result)
        finally:
            await client.close()

    return asyncio.run(main())


def list_models(config: ClientConfig) -> list[str]:
    """`ChatClient.model_ids` from synchronous code."""
    async def main() -> list[str]:
        client = ChatClient(config)
        try:
            return await client.model_ids()
        finally:
            await client.close()

    return asyncio.run(main())
