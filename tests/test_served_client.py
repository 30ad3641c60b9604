"""The chat-completions client (bench.served.client) against the loopback server: every fault
retried to success or recorded as failed, Retry-After honoured, the concurrency bound, the key
never in a reason. Short timeouts and backoffs keep each test well under a second or two."""

from __future__ import annotations

import base64
import email.utils
import hashlib
import time

import pytest

from bench.served.client import (
    ChatRequest,
    ClientConfig,
    EndpointError,
    RetryPolicy,
    list_models,
    retry_after_s,
    run_chats,
)
from bench.testing.openai_server import Fault, OpenAIServer, ScriptedAnswerer

FAST = RetryPolicy(max_retry_s=3.0, initial_backoff_s=0.01, max_backoff_s=0.05)
TRANSIENT = ["429", "500", "503", "slow", "drop", "malformed", "empty"]


def request(key: str, image: bytes = b"image-bytes", model: str = "tiny-vlm") -> ChatRequest:
    url = "data:image/jpeg;base64," + base64.b64encode(image).decode()
    parts = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Describe the image."}]
    return ChatRequest(key, model, [{"role": "user", "content": parts}], max_tokens=16)


def config(server: OpenAIServer, **kw: object) -> ClientConfig:
    # 1 s per attempt: well above a loaded machine's answer time, below the "slow" fault's 2 s
    values: dict[str, object] = {"timeout_s": 1.0, "max_concurrency": 4, "retry": FAST, **kw}
    return ClientConfig(server.base_url, **values)  # type: ignore[arg-type]


@pytest.fixture
def server():
    with OpenAIServer(ScriptedAnswerer(), idle_timeout_s=30) as srv:
        yield srv


@pytest.mark.parametrize("kind", TRANSIENT)
def test_a_transient_fault_is_retried_to_success(server: OpenAIServer, kind: str) -> None:
    server.faults.append(Fault(kind, times=1, delay_s=2.0))
    [result] = run_chats(config(server), [request("img1")])
    assert result.ok, result.reason
    assert result.attempts == 2
    assert result.text == f"a photo numbered {hashlib.sha256(b'image-bytes').hexdigest()[:8]}."
    assert server.stats.answered == 1  # the fault's attempt was not an answer


@pytest.mark.parametrize("kind", TRANSIENT)
def test_a_fault_that_never_clears_is_recorded_as_failed(server: OpenAIServer, kind: str) -> None:
    server.faults.append(Fault(kind, times=None, delay_s=2.0))
    policy = RetryPolicy(max_retry_s=1.2, initial_backoff_s=0.02, max_backoff_s=0.05)
    [result] = run_chats(config(server, retry=policy), [request("img1")])
    assert not result.ok and result.text is None
    assert "gave up" in (result.reason or "") and "\n" not in (result.reason or "")
    assert result.attempts >= 2
    assert result.wait_s <= policy.max_retry_s  # bounded by total retry time, not a count


def test_retry_after_is_honoured(server: OpenAIServer) -> None:
    server.faults.append(Fault("429", times=1, retry_after=0.3))
    [result] = run_chats(config(server), [request("img1")])
    assert result.ok and result.attempts == 2
    assert result.wait_s == pytest.approx(0.3)  # the server's wait, not the 0.01 s backoff


def test_retry_after_beyond_the_budget_fails_without_waiting(server: OpenAIServer) -> None:
    server.faults.append(Fault("429", times=None, retry_after=60))
    [result] = run_chats(config(server), [request("img1")])
    assert not result.ok and result.attempts == 1 and result.wait_s == 0
    assert "HTTP 429" in (result.reason or "")


def test_finish_reason_length_is_a_truncated_caption(server: OpenAIServer) -> None:
    server.faults.append(Fault("length", times=1))
    [result] = run_chats(config(server), [request("img1")])
    assert result.ok and result.truncated and result.finish_reason == "length"


def test_a_bad_request_fails_that_image_at_once(server: OpenAIServer) -> None:
    bad = b"the-bad-one"
    server.faults.append(Fault("400", times=None, match=lambda r: r.image == bad))
    results = run_chats(config(server), [request("good"), request("bad", bad)])
    assert [r.ok for r in results] == [True, False]
    assert results[1].attempts == 1 and results[1].reason == "HTTP 400: injected 400"


@pytest.mark.parametrize("status", ["401", "403", "404"])
def test_a_key_or_model_error_stops_everything(server: OpenAIServer, status: str) -> None:
    server.faults.append(Fault(status, times=None))
    with pytest.raises(EndpointError) as info:
        run_chats(config(server), [request(f"img{i}") for i in range(6)])
    assert info.value.status == int(status)
    assert str(info.value).startswith(f"HTTP {status}")


def test_results_report_usage_model_and_fingerprint(server: OpenAIServer) -> None:
    [result] = run_chats(config(server), [request("img1")])
    assert result.model == "tiny-vlm" and result.system_fingerprint == server.fingerprint
    assert result.usage.prompt_tokens > 0 and result.usage.completion_tokens == len(result.text.split())


def test_the_concurrency_bound_is_honoured() -> None:
    with OpenAIServer(ScriptedAnswerer(), latency_s=0.1) as server:
        seen: list[str] = []
        requests = [request(f"img{i}", f"image {i}".encode()) for i in range(12)]
        results = run_chats(config(server, max_concurrency=3), requests, on_result=lambda r: seen.append(r.key))
    assert server.stats.max_in_flight == 3
    assert [r.key for r in results] == [f"img{i}" for i in range(12)]  # request order
    assert sorted(seen) == sorted(r.key for r in results)  # each reported once as it arrived


def test_the_key_is_sent_and_never_in_an_error() -> None:
    key = "sk-test-do-not-leak-4242"
    with OpenAIServer(ScriptedAnswerer(), api_key=key) as server:
        [result] = run_chats(config(server, api_key=key), [request("img1")])
        assert result.ok and server.stats.auth == [f"Bearer {key}"]
        server.faults.append(Fault("500", times=None))
        [failed] = run_chats(config(server, api_key=key, retry=RetryPolicy(0.1, 0.01, 0.02)), [request("img2")])
        with pytest.raises(EndpointError) as info:
            run_chats(config(server, api_key="sk-wrong-key-777"), [request("img3")])
    assert key not in repr(config(server, api_key=key))
    assert key not in (failed.reason or "") and "sk-wrong-key-777" not in str(info.value)
    assert info.value.status == 401


def test_models_are_listed(server: OpenAIServer) -> None:
    assert list_models(config(server)) == ["tiny-vlm"]


def test_the_server_stops_by_itself_when_idle() -> None:
    server = OpenAIServer(ScriptedAnswerer(), idle_timeout_s=0.2).start()
    assert server.wait_stopped(5.0)


def test_retry_after_header_forms() -> None:
    assert retry_after_s({"retry-after": "2"}) == 2.0
    assert retry_after_s({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= (retry_after_s({"retry-after": date}) or 0) <= 31
    assert retry_after_s({"retry-after": "soon"}) is None and retry_after_s({}) is None


def test_requests_are_read_lazily_one_per_free_worker() -> None:
    # A generator that encodes an image per request holds at most max_concurrency of them.
    with OpenAIServer(ScriptedAnswerer(), latency_s=0.05) as server:
        taken: list[int] = []
        finished: list[int] = []

        def requests():
            for i in range(10):
                taken.append(i)
                assert len(taken) - len(finished) <= 3  # never more than the workers ahead
                yield request(f"img{i}", f"image {i}".encode())

        results = run_chats(config(server, max_concurrency=3), requests(), on_result=lambda r: finished.append(1))
    assert len(results) == 10 and all(r.ok for r in results)


def test_a_reply_without_usage_is_unknown_tokens_not_zero(server: OpenAIServer, tmp_path) -> None:
    from bench.served.records import append, summary

    server.faults.append(Fault("no_usage", times=1))
    first, second = run_chats(config(server, max_concurrency=1), [request("a"), request("b", b"other")])
    assert first.ok and not first.usage_reported and second.usage_reported
    path = tmp_path / "served.jsonl"
    append(path, first, None)
    append(path, second, None)
    totals = summary(path, ["a", "b"])
    assert totals["prompt_tokens"] is None and totals["prompt_tokens_per_image"] is None
