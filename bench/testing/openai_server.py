"""A loopback OpenAI-compatible server for tests and `make bench`: real HTTP, a real model.

    with OpenAIServer(TinyVlmAnswerer(model_dir), latency_s=0.05) as server:
        server.base_url          # http://127.0.0.1:<ephemeral port>/v1
        server.faults.append(Fault("429", times=2, retry_after=0.1))
        ...
        server.stats.max_in_flight

It speaks `POST /v1/chat/completions` (one image as an `image_url` data URL plus text parts,
an optional system message, `max_tokens`, `stop`) and `GET /v1/models`, listens on 127.0.0.1
only, and stops by itself after `idle_timeout_s` without a request. Answers come from:

- `TinyVlmAnswerer`: one of bench's tiny VLMs through the `vlm` backend's own collate and
  generate (greedy), so a caption through the endpoint can be compared with an in-process run;
- `ScriptedAnswerer`: a function of the image bytes (fast; for fault and resume tests).

Faults are injected per request, first matching rule first: an HTTP status ("429" with
`Retry-After`, "500", "503", "400", "401", "404"), "slow" (answer after `delay_s`), "drop"
(close the connection without a reply), "malformed" (truncated JSON), "empty" (no choices),
"length" (finish_reason "length"), "no_usage" (a reply without token counts). `times=None` fires on
every matching request.
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.testing.chat_answers import (  # re-exported: tests import them from here
    Answer,
    BadRequest,
    ParsedRequest,
    ScriptedAnswerer,
    TinyVlmAnswerer,
    parse_chat,
)

__all__ = ["Answer", "Fault", "OpenAIServer", "ParsedRequest", "ScriptedAnswerer", "Stats", "TinyVlmAnswerer", "parse_chat"]
FINGERPRINT = "fp_bench_loopback"


@dataclass
class Fault:
    kind: str  # an HTTP status ("429", "500", ...) or slow / drop / malformed / empty / length / no_usage
    times: int | None = 1  # None: every matching request
    match: Callable[[ParsedRequest], bool] | None = None  # None: any request
    retry_after: float | None = None  # seconds, sent as Retry-After with a status fault
    delay_s: float = 1.0  # "slow": how long before the answer

    def take(self, request: ParsedRequest) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.match is not None and not self.match(request):
            return False
        if self.times is not None:
            self.times -= 1
        return True


@dataclass
class Stats:
    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    answered: int = 0
    digests: list[str] = field(default_factory=list)  # image sha256 of each chat request, in arrival order
    models: list[str] = field(default_factory=list)  # the model field of each chat request
    auth: list[str | None] = field(default_factory=list)  # each request's Authorization header


class OpenAIServer:
    """A ThreadingHTTPServer on 127.0.0.1:<ephemeral>, serving `answerer` under `model_ids`."""

    def __init__(
        self, answerer: Callable[[ParsedRequest], Answer], *, model_ids: tuple[str, ...] = ("tiny-vlm",),
        latency_s: float = 0.0, api_key: str | None = None, idle_timeout_s: float = 60.0,
        fingerprint: str = FINGERPRINT,
    ) -> None:
        self.answerer = answerer
        self.model_ids = model_ids
        self.latency_s = latency_s
        self.api_key = api_key
        self.idle_timeout_s = idle_timeout_s
        self.fingerprint = fingerprint
        self.faults: list[Fault] = []
        self.stats = Stats()
        self._lock = threading.Lock()
        self._last_activity = time.monotonic()
        self._stopped = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(self))
        self._httpd.daemon_threads = True
        self._threads: list[threading.Thread] = []

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "OpenAIServer":
        serve = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        watch = threading.Thread(target=self._watchdog, daemon=True)
        self._threads = [serve, watch]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        if not self._stopped.is_set():
            self._stopped.set()
            self._httpd.shutdown()
            self._httpd.server_close()

    def __enter__(self) -> "OpenAIServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_stopped(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

    def _watchdog(self) -> None:
        """Stop after `idle_timeout_s` with nothing in flight: a forgotten server never lingers."""
        while not self._stopped.wait(min(0.1, self.idle_timeout_s)):
            with self._lock:
                idle = self.stats.in_flight == 0 and time.monotonic() - self._last_activity > self.idle_timeout_s
            if idle:
                threading.Thread(target=self.stop, daemon=True).start()
                return

    # --- bookkeeping used by the handler -----------------------------------------------------------
    def enter(self, request: ParsedRequest | None, model: str | None, auth: str | None) -> None:
        with self._lock:
            self._last_activity = time.monotonic()
            self.stats.requests += 1
            self.stats.in_flight += 1
            self.stats.max_in_flight = max(self.stats.max_in_flight, self.stats.in_flight)
            if request is not None:
                self.stats.digests.append(request.image_digest)
                self.stats.models.append(str(model))
                self.stats.auth.append(auth)

    def leave(self, answered: bool) -> None:
        with self._lock:
            self._last_activity = time.monotonic()
            self.stats.in_flight -= 1
            self.stats.answered += int(answered)

    def fault_for(self, request: ParsedRequest) -> Fault | None:
        with self._lock:
            return next((f for f in self.faults if f.take(request)), None)


def _handler_class(server: OpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        owner = server

    return Handler


class _Handler(BaseHTTPRequestHandler):
    owner: OpenAIServer
    protocol_version = "HTTP/1.1"  # keep-alive, as the openai client's pool expects

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet tests
        return

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None, raw: bytes | None = None) -> None:
        data = raw if raw is not None else json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (its timeout): nothing to answer

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._send_json(status, {"error": {"message": message, "type": "loopback", "code": status}}, headers)

    def _authorised(self) -> bool:
        key = self.owner.api_key
        return key is None or self.headers.get("Authorization") == f"Bearer {key}"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path.rstrip("/") != "/v1/models":
            return self._error(404, f"no route {self.path}")
        if not self._authorised():
            return self._error(401, "invalid API key")
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "bench"} for m in self.owner.model_ids]
        self._send_json(200, {"object": "list", "data": data})

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if self.path.rstrip("/") != "/v1/chat/completions":
            return self._error(404, f"no route {self.path}")
        try:
            body = json.loads(raw)
            request = parse_chat(body)
        except (json.JSONDecodeError, BadRequest, AttributeError, TypeError, ValueError) as exc:
            self.owner.enter(None, None, None)
            self.owner.leave(False)
            return self._error(400, f"bad request: {exc}")
        self.owner.enter(request, body.get("model"), self.headers.get("Authorization"))
        answered = False
        try:
            answered = self._answer(body, request)
        finally:
            self.owner.leave(answered)

    def _answer(self, body: dict[str, Any], request: ParsedRequest) -> bool:
        owner = self.owner
        if not self._authorised():
            # Echoes the key given, as some proxies do: the client must scrub it from its errors.
            given = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
            self._error(401, f"Incorrect API key provided: {given}")
            return False
        if body.get("model") not in owner.model_ids:
            self._error(404, f"The model `{body.get('model')}` does not exist.")
            return False
        fault = owner.fault_for(request)
        kind = fault.kind if fault is not None else None
        if kind is not None and kind.isdigit():
            headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else None
            self._error(int(kind), f"injected {kind}", headers)
            return False
        if kind == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return False
        if owner.latency_s:
            time.sleep(owner.latency_s)
        if kind == "slow":
            time.sleep(fault.delay_s)
        if kind == "malformed":
            self._send_json(200, None, raw=b'{"id": "chatcmpl-loopback", "choices": [{"index": 0, "mess')
            return False
        answer = owner.answerer(request)
        if kind == "length":
            answer = replace(answer, finish_reason="length")
        choices = [] if kind == "empty" else [{
            "index": 0, "message": {"role": "assistant", "content": answer.text}, "finish_reason": answer.finish_reason,
        }]
        usage = {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
                 "total_tokens": answer.prompt_tokens + answer.completion_tokens}
        reply = {
            "id": f"chatcmpl-{owner.stats.requests}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model"), "system_fingerprint": owner.fingerprint, "choices": choices, "usage": usage,
        }
        if kind == "no_usage":  # some servers send none: tokens unknown
            reply.pop("usage")
        self._send_json(200, reply)
        return kind != "empty"


def main(argv: list[str] | None = None) -> None:
    """`python -m bench.testing.openai_server --model DIR`: serve until idle, printing the URL."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a local VLM folder (default: scripted answers)")
    parser.add_argument("--served-name", default="tiny-vlm", help="model id the server answers to")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    parser.add_argument("--idle-timeout", type=float, default=300.0, help="stop after this many idle seconds")
    parser.add_argument("--url-file", help="write the base URL to this file once listening")
    args = parser.parse_args(argv)
    answerer = TinyVlmAnswerer(args.model) if args.model else ScriptedAnswerer()
    server = OpenAIServer(answerer, model_ids=(args.served_name,), latency_s=args.latency,
                          idle_timeout_s=args.idle_timeout).start()
    if args.url_file:
        Path(args.url_file).write_text(server.base_url + "\n")
    print(server.base_url, flush=True)
    server.wait_stopped()


if __name__ == "__main__":
    main()
