"""Captioning through an endpoint: the images `predictions.jsonl` lacks, answers appended as they
arrive, the finished file in split order.

Requests go out `max_concurrency` at a time (`bench.served.client`), so answers arrive out of
order; each is appended the moment it comes (its `served.jsonl` record, then its caption), and
a SIGKILL loses at most the answers in flight. The next call keeps every intact caption and asks
only for the rest. At the end the file is rewritten in split order when it is not already: the
records an uninterrupted run writes, so the bytes are the same however often the run was cut.

An image still failing after the client's retries gets no caption line (it is never scored as an
empty caption); it is returned with its reason, and the next call asks for it again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.models.caption_text import postprocess_caption
from bench.captioning import CaptionStats
from bench.data.types import Sample
from bench.io import append_records, read_records
from bench.predictions_file import existing_predictions, write_in_order
from bench.prompts import PromptTemplate
from bench.run.folder import RunFolder
from bench.served import records
from bench.served.client import ChatRequest, ChatResult, ClientConfig, run_chats
from bench.served.messages import SentImage, chat_messages, image_payload


@dataclass(frozen=True)
class Endpoint:
    """One served model and how to ask it for a caption."""

    client: ClientConfig
    model: str
    template: PromptTemplate
    max_tokens: int
    seed: int | None = None
    stop: tuple[str, ...] = ()
    system: str = ""
    max_side: int | None = None  # resize before sending only when the setting asks
    extra_body: dict[str, Any] = field(default_factory=dict)

    def request(self, sample: Sample) -> tuple[ChatRequest, SentImage]:
        sent = image_payload(Path(sample.path), self.max_side)
        messages = chat_messages(self.template, sent.url, self.system or None)
        request = ChatRequest(
            sample.image_id, self.model, messages, max_tokens=self.max_tokens, temperature=0.0,
            seed=self.seed, stop=self.stop or None, extra_body=self.extra_body or None,
        )
        return request, sent

    def decoding(self) -> dict[str, Any]:
        """What results.json records of the decoding sent with every request."""
        return {"temperature": 0.0, "max_tokens": self.max_tokens, "seed": self.seed, "stop": list(self.stop),
                "system": self.system or None, "max_side": self.max_side}


@dataclass
class StreamOutcome:
    stats: CaptionStats
    failed: dict[str, str]  # image id -> one-line reason, for the images still without a caption


def _progress(enabled: bool, console: Any) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("captioning via endpoint"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[note]}"), TimeElapsedColumn(), disable=not enabled, console=console)


def caption_via_endpoint(
    endpoint: Endpoint, samples: Sequence[Sample], run_dir: Path, progress: bool = True, console: Any = None,
) -> StreamOutcome:
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    predictions_path = RunFolder(Path(run_dir)).predictions
    served_path = records.served_path(run_dir)
    samples = list(samples)
    captions = existing_predictions(predictions_path, samples)  # a torn last line is dropped
    read_records(served_path, repair=True)  # likewise, before appending after it
    todo = [s for s in samples if s.image_id not in captions]
    sent: dict[str, SentImage] = {}
    failed: dict[str, str] = {}
    counts = {"done": 0, "truncated": 0}
    start = time.perf_counter()

    def requests() -> Iterator[ChatRequest]:
        for sample in todo:  # encoded lazily: at most max_concurrency images in memory
            request, payload = endpoint.request(sample)
            sent[sample.image_id] = payload
            yield request

    with _progress(progress and bool(todo), console) as bar:
        task = bar.add_task("captioning", total=len(samples), completed=len(captions), note="")

        def on_result(result: ChatResult) -> None:
            records.append(served_path, result, sent.pop(result.key, None))
            if result.ok:
                caption = postprocess_caption(result.text or "", endpoint.template.sentences)
                append_records(predictions_path, [{"image_id": result.key, "caption": caption}])
                captions[result.key] = caption
                counts["done"] += 1
                counts["truncated"] += int(result.truncated)
            else:
                failed[result.key] = result.reason or "failed"
            note = f"{len(failed)} failed" if failed else ""
            bar.update(task, completed=len(captions), note=note)

        if todo:
            run_chats(endpoint.client, requests(), on_result)
    wall_s = time.perf_counter() - start
    on_disk = [r["image_id"] for r in read_records(predictions_path)]
    if on_disk != [s.image_id for s in samples if s.image_id in captions]:
        write_in_order(predictions_path, samples, captions)
    n = counts["done"]
    stats = CaptionStats(len(samples), len(samples) - len(todo), n, wall_s, wall_s, n / wall_s if n and wall_s > 0 else 0.0,
                         counts["truncated"])
    return StreamOutcome(stats, failed)
