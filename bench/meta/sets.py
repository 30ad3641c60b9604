"""The human-judgment sets `bench meta` reads, each in its published layout, one reader per format.

Every reader returns a `HumanSet`: one row per scored candidate (candidate text, references, the
image it describes) plus either human ratings per row (correlation benchmarks) or caption pairs
with the human choice (pairwise benchmarks). The protocol details of each benchmark (which rows,
which text cleaning, which statistic) live in `BENCHMARKS`, the one table of benchmarks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.errors import BenchError


@dataclass(frozen=True)
class HumanSet:
    """Rows to score and what people said about them.

    `groups[i]` names the image of row i: the bootstrap resamples images, so that the ratings of one
    image (several raters, several candidates) stay together.
    """

    name: str
    candidates: list[str]
    refs: list[list[str]]
    groups: list[str]
    human: dict[str, np.ndarray] = field(default_factory=dict)  # aspect -> (n_rows,) ratings
    # Pairwise sets: row indices of the two captions, the human choice (0: first, 1: second) and
    # the category of every pair.
    pair_a: np.ndarray | None = None
    pair_b: np.ndarray | None = None
    label: np.ndarray | None = None
    category: list[str] = field(default_factory=list)

    @property
    def n_rows(self) -> int:
        return len(self.candidates)

    @property
    def n_images(self) -> int:
        return len(set(self.groups))


@dataclass(frozen=True)
class Benchmark:
    """One row of the benchmark table: where its file lives, how to read it, what to report."""

    name: str
    path: str  # relative to the shared data folder
    read: Callable[[Path], HumanSet]
    kind: str  # "correlation" or "pairwise"
    statistic: str  # "tau-c", "tau-b" (scipy.stats.kendalltau variants) or "accuracy"
    protocol: str  # one line for the report


def _clean(text: str) -> str:
    # Hessel et al.'s flickr8k_example (and aimagelab/pacscore after it) collapse whitespace in
    # candidates and references before scoring; every reader here does the same.
    return " ".join(text.split())


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise BenchError(f"--path {path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BenchError(f"{path}: not valid JSON ({exc})") from exc


def _field(entry: Any, key: str, path: Path, where: str) -> Any:
    if not isinstance(entry, dict) or key not in entry:
        raise BenchError(f"{path}: {where} has no field {key!r}")
    return entry[key]


def _text_list(value: Any, path: Path, where: str) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise BenchError(f"{path}: {where} must be a non-empty list of strings")
    return [_clean(v) for v in value]


def read_flickr8k(path: Path) -> HumanSet:
    """Hessel et al.'s layout: one row per expert rating (3 per candidate), NaN ratings skipped."""
    data = _load_json(path)
    if not isinstance(data, dict):
        raise BenchError(f"{path}: expected an object of images")
    cands, refs, groups, ratings = [], [], [], []
    for image_id, entry in data.items():
        gts = _text_list(_field(entry, "ground_truth", path, f"image {image_id!r}"), path, f"image {image_id!r} ground_truth")
        judgements = _field(entry, "human_judgement", path, f"image {image_id!r}")
        for k, judgement in enumerate(judgements):
            where = f"image {image_id!r} human_judgement[{k}]"
            caption, rating = _field(judgement, "caption", path, where), _field(judgement, "rating", path, where)
            if not isinstance(caption, str) or not isinstance(rating, (int, float)):
                raise BenchError(f"{path}: {where} needs a string caption and a numeric rating")
            if math.isnan(rating):
                continue  # the published protocol skips unrated rows
            cands.append(_clean(caption))
            refs.append(gts)
            groups.append(str(image_id))
            ratings.append(float(rating))
    return HumanSet("flickr8k-expert", cands, refs, groups, {"rating": np.asarray(ratings)})


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise BenchError(f"--path {path}: file not found")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise BenchError(f"{path}: line {n} is not JSON ({exc})") from exc
    return rows


THUMB_ASPECTS = {"precision": "P", "recall": "R", "total": "human_score"}


def read_thumb(path: Path) -> HumanSet:
    """THumB 1.0: every system's caption (the human one included) against the 4 references of
    mscoco_references.json (the COCO references minus the human caption that is rated)."""
    refs_path = path.parent / "mscoco_references.json"
    refs_by_seg = {}
    for row in _jsonl(refs_path):
        refs_by_seg[str(_field(row, "seg_id", refs_path, "a row"))] = _text_list(
            _field(row, "refs", refs_path, "a row"), refs_path, f"seg_id {row['seg_id']} refs"
        )
    cands, refs, groups = [], [], []
    aspects: dict[str, list[float]] = {a: [] for a in THUMB_ASPECTS}
    for n, row in enumerate(_jsonl(path), 1):
        seg = str(_field(row, "seg_id", path, f"line {n}"))
        if seg not in refs_by_seg:
            raise BenchError(f"{path}: line {n}: seg_id {seg} has no references in {refs_path}")
        hyp = _field(row, "hyp", path, f"line {n}")
        if not isinstance(hyp, str):
            raise BenchError(f"{path}: line {n}: field 'hyp' is not a string")
        cands.append(_clean(hyp))
        refs.append(refs_by_seg[seg])
        groups.append(seg)
        for aspect, key in THUMB_ASPECTS.items():
            value = _field(row, key, path, f"line {n}")
            if not isinstance(value, (int, float)):
                raise BenchError(f"{path}: line {n}: field {key!r} is not a number")
            aspects[aspect].append(float(value))
    return HumanSet("thumb", cands, refs, groups, {a: np.asarray(v) for a, v in aspects.items()})


PASCAL_CATEGORIES = ("HC", "HI", "HM", "MM")


def read_pascal50s(path: Path) -> HumanSet:
    """Pascal-50S pairs: both captions of every pair are rows, scored with the pair's references."""
    data = _load_json(path)
    if not isinstance(data, dict):
        raise BenchError(f"{path}: expected an object of categories")
    cands, refs, groups, pair_a, pair_b, labels, cats = [], [], [], [], [], [], []
    for cat in PASCAL_CATEGORIES:
        for k, pair in enumerate(data.get(cat, [])):
            where = f"{cat}[{k}]"
            captions = _text_list(_field(pair, "captions", path, where), path, f"{where} captions")
            label = _field(pair, "label", path, where)
            if len(captions) != 2 or label not in (0, 1):
                raise BenchError(f"{path}: {where} needs 2 captions and a label 0 or 1")
            pair_refs = _text_list(_field(pair, "references", path, where), path, f"{where} references")
            for caption in captions:
                cands.append(caption)
                refs.append(pair_refs)
                groups.append(f"{cat}/{k}")  # a pair is the resampled unit
            pair_a.append(len(cands) - 2)
            pair_b.append(len(cands) - 1)
            labels.append(int(label))
            cats.append(cat)
    if not cats:
        raise BenchError(f"{path}: no pairs in categories {', '.join(PASCAL_CATEGORIES)}")
    return HumanSet(
        "pascal-50s", cands, refs, groups, {},
        np.asarray(pair_a), np.asarray(pair_b), np.asarray(labels), cats,
    )


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark(
            "flickr8k-expert", "human/flickr8k-expert/flickr8k.json", read_flickr8k, "correlation", "tau-c",
            "one row per expert rating (16,992), Kendall tau-c x 100 (Hessel et al. 2021; pacscore)",
        ),
        Benchmark(
            "thumb", "human/thumb-mscoco/mscoco_THumB-1.0.jsonl", read_thumb, "correlation", "tau-b",
            "5 systems x 500 COCO images against 4 references, Kendall tau-b x 100 (ties: 1-5 scales)",
        ),
        Benchmark(
            "pascal-50s", "human/pascal-50s/pascal_50s.json", read_pascal50s, "pairwise", "accuracy",
            "share of pairs where the metric prefers the caption people chose, per category, x 100",
        ),
    )
}


def benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise BenchError(f"--data: unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]
