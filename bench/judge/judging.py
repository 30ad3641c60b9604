"""CLAIR-style judgements of captions through the served-VLM client, cached and counted.

    judged = judge_rows(spec, candidates, references)   # judged.scores: (n,) in 0-1, NaN = failed

Every distinct (judge model, prompt version, candidate, references) is asked once: answers are
cached in `.cache/judge/<model>--<prompt version>.jsonl` (bench.io's checksummed JSONL, appended
as they arrive, so an interrupted run keeps what it got), and a rerun makes no requests. An
answer that is not a JSON object with a numeric "score" in 0-100 (invalid JSON, out of range,
a refusal) is asked again up to `parse_retries` times; then it is cached and counted as failed
and its score is NaN: left out of means and correlations, never scored 0. A transport failure
(the client gave up after its retries) is counted too but not cached, so a rerun asks again.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.io import append_records, read_records
from bench.judge.spec import METRIC, JudgeSpec
from bench.paths import cache_dir

_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def parse_answer(text: str | None) -> tuple[float | None, str]:
    """(score in 0-100, reason) of a judge answer, or (None, why it is unusable)."""
    if not text:
        return None, "empty answer"
    found = _OBJECT.search(text)  # models wrap JSON in prose or ``` fences
    if found is None:
        return None, "no JSON object in the answer"
    try:
        obj = json.loads(found.group(0))
    except json.JSONDecodeError:
        return None, "invalid JSON"
    score = obj.get("score") if isinstance(obj, dict) else None
    if isinstance(score, bool) or not isinstance(score, (int, float)) or score != score:
        return None, "no numeric 'score'"
    if not 0 <= score <= 100:
        return None, f"score {score:g} outside 0-100"
    reason = obj.get("reason")
    return float(score), reason if isinstance(reason, str) else ""


def cache_key(spec: JudgeSpec, candidate: str, references: Sequence[str]) -> str:
    payload = json.dumps([spec.model, spec.prompt.version, candidate, list(references)], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def cache_file(spec: JudgeSpec) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{spec.model}--{spec.prompt.version}")
    return cache_dir() / "judge" / f"{safe}.jsonl"


@dataclass
class Judged:
    metric: str
    scores: np.ndarray  # (n,) in 0-1; NaN where no usable judgement
    reasons: list[str]
    n_requests: int = 0  # requests sent by this call (0 on a fully cached rerun)
    n_cached: int = 0  # distinct items answered from the cache
    n_unparsable: int = 0  # distinct items whose every answer was unusable
    n_transport: int = 0  # distinct items the client could not get an answer for
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def n_failed(self) -> int:
        return self.n_unparsable + self.n_transport

    @property
    def notes(self) -> list[str]:
        if not self.n_failed:
            return []
        return [f"{self.metric}: {self.n_failed} of {len(self.scores)} captions have no judgement "
                f"({self.n_unparsable} unusable answers after retries, {self.n_transport} requests that "
                "failed); they are left out of its mean, never scored 0"]


def _requests(spec: JudgeSpec, items: dict[str, tuple[str, list[str]]], attempt: int) -> list[Any]:
    from bench.served.client import ChatRequest

    out = []
    for key, (candidate, references) in items.items():
        messages = [{"role": "user", "content": spec.prompt.render(candidate, references)}]
        if spec.prompt.system:
            messages.insert(0, {"role": "system", "content": spec.prompt.system})
        seed = None if spec.seed is None else spec.seed + attempt  # a retry is a new draw
        out.append(ChatRequest(key, spec.model, messages, max_tokens=spec.max_tokens, temperature=0.0, seed=seed))
    return out


def _ask(spec: JudgeSpec, items: dict[str, tuple[str, list[str]]], cache: Path, judged: Judged,
         answers: dict[str, dict[str, Any]], advance: Callable[[Any], None] | None) -> None:
    """Ask for every item, re-asking unusable answers; fill `answers` and append to the cache."""
    from bench.served.client import ClientConfig, RetryPolicy, run_chats

    config = ClientConfig(base_url=spec.base_url, api_key=spec.api_key(), timeout_s=spec.timeout_s,
                          max_concurrency=spec.max_concurrency, retry=RetryPolicy(max_retry_s=spec.max_retry_s))
    preflight(spec, config)
    pending = dict(items)
    for attempt in range(spec.parse_retries + 1):
        if not pending:
            return
        judged.n_requests += len(pending)
        results = run_chats(config, _requests(spec, pending, attempt), on_result=advance)
        cache.parent.mkdir(parents=True, exist_ok=True)
        again: dict[str, tuple[str, list[str]]] = {}
        new: list[dict[str, Any]] = []
        for r in results:
            if not r.ok:
                answers[r.key] = {"key": r.key, "ok": False, "transport": True, "reason": r.reason}
                continue
            score, reason = parse_answer(r.text)
            if score is not None:
                rec = {"key": r.key, "ok": True, "score": score, "reason": reason, "model": r.model,
                       "system_fingerprint": r.system_fingerprint}
            elif attempt < spec.parse_retries:
                again[r.key] = pending[r.key]
                continue
            else:
                rec = {"key": r.key, "ok": False, "reason": reason, "answer": r.text}
            answers[r.key] = rec
            new.append(rec)
        append_records(cache, new)
        pending = again


def preflight(spec: JudgeSpec, config: Any) -> None:
    """One GET /models before any judgement: a wrong URL, key or model is a one-line error naming
    the judge file's field, not minutes of retries."""
    from bench.errors import BenchError
    from bench.served.client import EndpointError, list_models

    try:
        ids = list_models(config)
    except EndpointError as exc:
        field = "api_key_env" if exc.status in (401, 403) else "base_url"
        raise BenchError(f"{spec.path}: field {field!r}: {spec.base_url} refused the judge ({exc})") from None
    except BenchError as exc:
        raise BenchError(f"{spec.path}: field 'base_url': {spec.base_url} did not answer ({exc})") from None
    if spec.model not in ids:
        raise BenchError(f"{spec.path}: field 'model': {spec.model!r} is not served at {spec.base_url} "
                         f"(it serves {', '.join(ids) or 'no model'})")


@contextmanager
def _bar(enabled: bool, label: str) -> Iterator[Callable[[Any], None] | None]:
    """A rich bar on stderr counting answers as they arrive (retries included)."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=None)
        yield lambda _result: bar.advance(task)


def judge_rows(spec: JudgeSpec, candidates: Sequence[str], references: Sequence[Sequence[str]],
               progress: bool = False) -> Judged:
    """Judge every (candidate, references) row; see the module doc for caching and counting."""
    keys = [cache_key(spec, c, r) for c, r in zip(candidates, references)]
    cache = cache_file(spec)
    answers = {rec["key"]: rec for rec in read_records(cache, repair=True) if "key" in rec}
    judged = Judged(METRIC, np.full(len(keys), np.nan), [""] * len(keys), record=spec.record())
    wanted = dict.fromkeys(keys)
    judged.n_cached = sum(1 for k in wanted if k in answers)
    items = {k: (c, list(r)) for k, c, r in zip(keys, candidates, references) if k not in answers}
    if items:
        with _bar(progress, f"judge {spec.name}") as advance:
            _ask(spec, items, cache, judged, answers, advance)
    for k in wanted:
        rec = answers.get(k)
        if rec is not None and not rec["ok"]:
            if rec.get("transport"):
                judged.n_transport += 1
            else:
                judged.n_unparsable += 1
    for i, k in enumerate(keys):
        rec = answers.get(k, {})
        if rec.get("ok"):
            judged.scores[i] = rec["score"] / 100.0
            judged.reasons[i] = rec.get("reason", "")
    return judged
