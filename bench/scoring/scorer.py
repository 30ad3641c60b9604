"""The scoring facade: all metrics of one prediction set in one call, per-image scores kept.

    with Scorer(metrics=("bleu", "cider", "clipscore"), clip_model=path) as scorer:
        result = scorer.score(preds, refs, images)

One Scorer holds one METEOR JVM and one CLIP model, each started on first use and reused by
every later `score` call; `close()` (or leaving the `with`) stops the JVM.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.scoring.clipscore import DEFAULT_CLIP_MODEL, ClipScorer
from bench.scoring.metrics import default_families, family_compute, image_families, metric_keys, parse_metrics
from bench.scoring.text_metrics import MeteorMetric, TextMetric, tokenize


@dataclass
class ScoreResult:
    """Corpus scores on pycocoevalcap's 0-1 scale (CLIPScore on the paper's 0-2.5 scale)."""

    corpus: dict[str, float]
    per_image: dict[str, dict[str, float]]
    n_images: int
    n_clip_truncated: int = 0
    clip_model: str | None = None
    metrics: tuple[str, ...] = field(default=())
    # image id -> the METEOR jar's 23 sufficient statistics of that image (its answer to the SCORE
    # line); the report aggregates resampled images from them exactly as the jar does.
    meteor_stats: dict[str, list[float]] = field(default_factory=dict)

    def to_json(self, per_image: bool = False) -> dict[str, Any]:
        """Corpus scores and n_images; CLIP details only when CLIP scores were computed."""
        out: dict[str, Any] = dict(self.corpus)
        out["n_images"] = self.n_images
        if self.clip_model is not None:
            out["n_clip_truncated"] = self.n_clip_truncated
            out["clip_model"] = self.clip_model
        if per_image:
            out["per_image"] = self.per_image
            if self.meteor_stats:
                out["meteor_stats"] = self.meteor_stats
        return out


def _examples(ids: Sequence[str], n: int = 3) -> str:
    shown = ", ".join(repr(i) for i in list(ids)[:n])
    return shown + (", ..." if len(ids) > n else "")


def validate_inputs(preds: Mapping[str, Any], refs: Mapping[str, Any], source: str = "predictions") -> None:
    """Same ids on both sides, string predictions, non-empty string reference lists."""
    missing = [k for k in refs if k not in preds]
    unknown = [k for k in preds if k not in refs]
    if missing or unknown:
        parts = []
        if unknown:
            parts.append(f"{len(unknown)} predicted ids have no references ({_examples(unknown)})")
        if missing:
            parts.append(f"{len(missing)} reference images have no prediction ({_examples(missing)})")
        raise BenchError(f"{source}: " + "; ".join(parts))
    if not refs:
        raise BenchError(f"{source}: nothing to score (no images)")
    for key, caption in preds.items():
        if not isinstance(caption, str):
            raise BenchError(f"{source}: prediction for image {key!r} is not a string (got {type(caption).__name__})")
    for key, caps in refs.items():
        if isinstance(caps, str) or not isinstance(caps, Sequence) or len(caps) == 0:
            raise BenchError(f"references: image {key!r} has no reference captions")
        for j, cap in enumerate(caps):
            if not isinstance(cap, str):
                raise BenchError(f"references: image {key!r} reference {j} is not a string (got {type(cap).__name__})")


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[str, int], Callable[[int], None]] | None]:
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:

        def hook(description: str, total: int) -> Callable[[int], None]:
            task = bar.add_task(description, total=total)
            return lambda n: bar.advance(task, n)

        yield hook


class Scorer:
    def __init__(
        self,
        metrics: Sequence[str] | None = None,  # None: the table's default metrics
        clip_model: str = DEFAULT_CLIP_MODEL,
        device: str = "cpu",
        clip_batch_size: int = 64,
    ) -> None:
        self.metrics = parse_metrics(default_families() if metrics is None else tuple(metrics))
        self.clip_model = clip_model
        self._text: dict[str, TextMetric] = {}
        self._clip = ClipScorer(clip_model, device=device, batch_size=clip_batch_size)

    def __enter__(self) -> "Scorer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the METEOR JVM and drop the CLIP model. The Scorer can be used again after."""
        text, self._text = self._text, {}
        for metric in text.values():
            metric.close()
        self._clip.close()

    def _metric(self, name: str) -> TextMetric:
        if name not in self._text:  # the metric table names the class that computes each metric
            module, cls = family_compute(name).split(":")
            self._text[name] = getattr(importlib.import_module(module), cls)()
        return self._text[name]

    @property
    def meteor_process(self):  # the JVM, if running; lets tests check it is not leaked
        meteor = self._text.get("meteor")
        return meteor.process if isinstance(meteor, MeteorMetric) else None

    # --- scoring ------------------------------------------------------------------------------
    def score(
        self,
        preds: Mapping[str, str],
        refs: Mapping[str, Sequence[str]],
        images: Mapping[str, Path] | None = None,
        progress: bool = True,
    ) -> ScoreResult:
        """Score every image of `refs` (ids must equal those of `preds`).

        CLIP metrics are computed when "clipscore" is among the metrics and `images` is given.
        """
        validate_inputs(preds, refs)
        ids = list(refs)
        corpus: dict[str, float] = {}
        per_image: dict[str, dict[str, float]] = {i: {} for i in ids}
        text_names = [m for m in self.metrics if m not in image_families()]
        meteor_stats: dict[str, list[float]] = {}
        if text_names:
            meteor_stats = self._score_text(text_names, ids, preds, refs, corpus, per_image)
        n_truncated, clip_used = 0, None
        if any(m in image_families() for m in self.metrics) and images is not None:
            n_truncated = self._score_clip(ids, preds, refs, images, progress, corpus, per_image)
            clip_used = self.clip_model
        order = {k: n for n, k in enumerate(metric_keys())}
        corpus = dict(sorted(corpus.items(), key=lambda kv: order[kv[0]]))
        per_image = {i: dict(sorted(s.items(), key=lambda kv: order[kv[0]])) for i, s in per_image.items()}
        return ScoreResult(
            corpus=corpus,
            per_image=per_image,
            n_images=len(ids),
            n_clip_truncated=n_truncated,
            clip_model=clip_used,
            metrics=self.metrics,
            meteor_stats=meteor_stats,
        )

    def _score_text(
        self,
        names: list[str],
        ids: list[str],
        preds: Mapping[str, str],
        refs: Mapping[str, Sequence[str]],
        corpus: dict[str, float],
        per_image: dict[str, dict[str, float]],
    ) -> dict[str, list[float]]:
        """Fill corpus and per_image; return METEOR's per-image statistics (empty without METEOR)."""
        metrics = {name: self._metric(name) for name in names}
        meteor = metrics.pop("meteor", None)
        if isinstance(meteor, MeteorMetric):
            meteor.start()  # the JVM loads its paraphrase table while the tokenizer runs
        gts, res = tokenize({i: list(refs[i]) for i in ids}, {i: [preds[i]] for i in ids})
        # METEOR is a round trip per image to its JVM; it runs in a thread beside the Python
        # scorers (it waits on a pipe, so it does not hold the GIL).
        stats: list[list[float]] = []
        with ThreadPoolExecutor(max_workers=1) as pool:
            meteor_future = pool.submit(meteor.compute_with_stats, gts, res) if isinstance(meteor, MeteorMetric) else None
            results = [(m.names, m.compute_score(gts, res)) for m in metrics.values()]
            if meteor_future is not None:
                score, scores, stats = meteor_future.result()
                results.append((MeteorMetric.names, (score, scores)))
        for names_, (score, scores) in results:
            if len(names_) == 1:
                score, scores = [score], [scores]
            for key, value, per in zip(names_, score, scores):  # type: ignore[arg-type]
                corpus[key] = float(value)
                for image_id, v in zip(ids, per):
                    per_image[image_id][key] = float(v)
        return dict(zip(ids, stats))

    def _score_clip(
        self,
        ids: list[str],
        preds: Mapping[str, str],
        refs: Mapping[str, Sequence[str]],
        images: Mapping[str, Path],
        progress: bool,
        corpus: dict[str, float],
        per_image: dict[str, dict[str, float]],
    ) -> int:
        missing = [i for i in ids if i not in images]
        if missing:
            raise BenchError(f"images: {len(missing)} scored images have no image file ({_examples(missing)})")
        with _progress(progress) as hook:
            scores = self._clip.score(
                [preds[i] for i in ids], [list(refs[i]) for i in ids], [Path(images[i]) for i in ids], hook
            )
        corpus["CLIPScore"] = float(scores.clip_s.mean())
        corpus["RefCLIPScore"] = float(scores.refclip_s.mean())
        for image_id, c, r in zip(ids, scores.clip_s, scores.refclip_s):
            per_image[image_id]["CLIPScore"] = float(c)
            per_image[image_id]["RefCLIPScore"] = float(r)
        return scores.n_truncated
