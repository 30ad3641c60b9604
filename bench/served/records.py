"""`served.jsonl`: one record per answer (or failure) of an endpoint run, and its summary.

Beside `predictions.jsonl` (the captions, owned by `bench.predictions_file`), an endpoint run
appends what each request cost and where it came from: tokens, finish_reason, the model id and
`system_fingerprint` the server reported, attempts, and what was sent (bytes, digest,
re-encoded or not). Failures are recorded too, with their one-line reason; an image that failed
in one session and succeeded in the next has both records, the later one counting.

Records are checksummed lines (`bench.io`), appended as answers arrive, so a SIGKILL loses at
most the line being written; `summary` folds them into the `served` block of results.json.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.io import append_records, read_records
from bench.run.folder import SERVED, RunFolder
from bench.served.client import ChatResult
from bench.served.messages import SentImage


def served_path(run_dir: Path) -> Path:
    return RunFolder(Path(run_dir)).member(SERVED)


def record_of(result: ChatResult, sent: SentImage | None) -> dict[str, Any]:
    record: dict[str, Any] = {
        "image_id": result.key,
        "ok": result.ok,
        "finish_reason": result.finish_reason,
        # None where the server reported no usage: unknown, never counted as zero tokens
        "prompt_tokens": result.usage.prompt_tokens if result.usage_reported else None,
        "completion_tokens": result.usage.completion_tokens if result.usage_reported else None,
        "model": result.model,
        "system_fingerprint": result.system_fingerprint,
        "attempts": result.attempts,
        "reason": result.reason,
    }
    if sent is not None:
        record["sent"] = {"mime": sent.mime, "bytes": sent.n_bytes, "sha256": sent.sha256,
                          "re_encoded": sent.re_encoded, "size": list(sent.size)}
    return record


def append(path: Path, result: ChatResult, sent: SentImage | None) -> None:
    append_records(path, [record_of(result, sent)])


def latest(path: Path) -> dict[str, dict[str, Any]]:
    """image id -> its last record (a later success supersedes an earlier failure)."""
    out: dict[str, dict[str, Any]] = {}
    for record in read_records(path, repair=True):
        if isinstance(record.get("image_id"), str):
            out[record["image_id"]] = record
    return out


def summary(path: Path, image_ids: Sequence[str]) -> dict[str, Any]:
    """Totals over the split's images: tokens, server model ids and fingerprints, failures."""
    records = read_records(path, repair=True)
    last = latest(path)
    ok = [last[i] for i in image_ids if i in last and last[i].get("ok")]
    failed = {i: last[i].get("reason") for i in image_ids if i in last and not last[i].get("ok")}
    ever_failed = {r["image_id"] for r in records if not r.get("ok")}
    n = len(ok)
    reported = all(r.get("prompt_tokens") is not None for r in ok)
    prompt = sum(int(r["prompt_tokens"]) for r in ok) if reported else None
    completion = sum(int(r.get("completion_tokens") or 0) for r in ok) if reported else None
    return {
        "n_answered": n,
        "n_failed": len(failed),
        "failed": failed,
        # images that failed in an earlier session and were answered on a re-run
        "n_failed_then_answered": len(ever_failed - set(failed)),
        "n_retried": sum(1 for r in records if int(r.get("attempts") or 1) > 1),
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "prompt_tokens_per_image": round(prompt / n, 2) if n and prompt is not None else None,
        "completion_tokens_per_image": round(completion / n, 2) if n and completion is not None else None,
        "server_models": sorted({str(r["model"]) for r in ok if r.get("model")}),
        "system_fingerprints": sorted({str(r["system_fingerprint"]) for r in ok if r.get("system_fingerprint")}),
        "n_re_encoded": sum(1 for r in ok if (r.get("sent") or {}).get("re_encoded")),
        "bytes_sent": sum(int((r.get("sent") or {}).get("bytes") or 0) for r in ok),
    }
