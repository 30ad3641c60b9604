"""The runs of a report, read with their PTB tokens and degeneration statistics, and kept in
.cache/compare/ so that a re-compare reads one small file per unchanged run instead of parsing
its folder, its tokens.json and counting its n-grams again.

    load_runs(runs_root, dataset=..., runs_glob=..., cache=FOLDER or None) -> [LoadedRun]

A run's entry (`runs/<key>.json`) is keyed by the sha256 of the bytes of the members
bench.report.load reads (results.json, split.json, predictions.jsonl, metrics.json:
RunFolder.digest) and the versions of this module, of the tokenization and of the degeneration
definitions; it holds what load_run read from those files, the tokens of the captions, the
degeneration statistics and which captions repeat. The split part (image ids, raw image paths,
references and their tokens), the same for every run of a split, is one entry of its own
(`splits/<key>.json`, keyed by the split.json bytes) read once per compare. What lies outside
those members is looked up every time: image paths are expanded on this machine
(${BENCH_SHARED_DATA}, the project folder), train/loss.csv and attend/*.png are listed.
An entry that cannot be read or does not fit is recomputed and rewritten, never trusted;
without a cache folder nothing is kept. Deleting the folder loses nothing but time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.io import atomic_write_text
from bench.report import diagnostics
from bench.report.diagnostics import Degeneration, degeneration, is_degenerate, recorded_count
from bench.report.load import MEMBERS_READ, RunData, check_unique, image_path, load_run, select_runs
from bench.report.tokens import TOKENS_VERSION, RunTokens, tokenize_runs
from bench.run.folder import SPLIT, RunFolder

VERSION = 1  # of the entries' layout: bump when it changes
_FIELDS = ("run", "kind", "setting", "backend", "prompt", "prompt_text", "model", "image_mode", "dataset",
           "fingerprint")


@dataclass(frozen=True)
class LoadedRun:
    """One finished run as a report uses it."""

    data: RunData
    tokens: RunTokens  # aligned with data.image_ids
    degeneration: Degeneration
    repetitive: tuple[bool, ...]  # per caption (data.image_ids order): diagnostics.is_degenerate
    cached: bool = field(default=False, compare=False)  # read from the cache, not from its folder

    @property
    def name(self) -> str:
        return self.data.run


def derive(data: RunData, tokens: RunTokens) -> LoadedRun:
    """The statistics a report needs of a run's tokenized captions."""
    words = [t.split() for t in tokens.captions]
    return LoadedRun(data, tokens, degeneration(tokens.captions, recorded_count(data.results, "n_truncated")),
                     tuple(is_degenerate(w) for w in words))


def load_runs(
    runs_root: Path,
    *,
    dataset: str | None = None,
    runs_glob: str | None = None,
    cache: Path | None = None,
    progress: Callable[[str, int, int, str], None] | None = None,
) -> list[LoadedRun]:
    """Every finished run of bench.report.load.select_runs(), sorted by run name: unchanged runs
    from `cache`, the others read, tokenized together (one JVM) and, with `cache`, kept.
    `progress(label, done, total, run)` is called after each run read and around the tokenizer."""
    chosen = select_runs(runs_root, dataset=dataset, runs_glob=runs_glob)
    check_unique(chosen)
    store = _Store(cache)
    loaded: list[LoadedRun] = []
    todo: list[tuple[RunData, str]] = []
    for k, (folder, results) in enumerate(chosen):
        key = store.run_key(folder)
        hit = store.get(folder, key)
        if hit is not None:
            loaded.append(hit)
        else:
            todo.append((load_run(folder, results), key))
        if progress is not None:
            progress("read runs", k + 1, len(chosen), str(results["run"]))
    if todo:
        label = f"PTB-tokenize {len(todo)} run{'s' if len(todo) > 1 else ''}"
        if progress is not None:
            progress(label, 0, len(todo), "")
        tokens = tokenize_runs([data for data, _ in todo], known=[(r.data, r.tokens) for r in loaded])
        for k, (data, key) in enumerate(todo):
            run = derive(data, tokens[data.run])
            store.put(key, run)
            loaded.append(run)
            if progress is not None:
                progress(label, k + 1, len(todo), data.run)
    return sorted(loaded, key=lambda r: r.name)


class _Store:
    """The entries under one cache folder (None: nothing read or written)."""

    def __init__(self, folder: Path | None):
        self.folder = folder
        self._splits: dict[str, tuple[tuple[str, ...], tuple[Path | None, ...], tuple, tuple]] = {}

    def run_key(self, folder: Path) -> str:
        if self.folder is None:
            return ""
        versions = f"{VERSION}/{TOKENS_VERSION}/{diagnostics.VERSION}"
        return hashlib.sha256(f"{versions}/{RunFolder(folder).digest(MEMBERS_READ)}".encode()).hexdigest()

    def _split_key(self, folder: Path) -> str:
        return hashlib.sha256(f"{VERSION}/{TOKENS_VERSION}/{RunFolder(folder).digest((SPLIT,))}".encode()).hexdigest()

    def _read(self, kind: str, key: str) -> Any:
        assert self.folder is not None
        try:
            return json.loads((self.folder / kind / f"{key}.json").read_bytes())
        except (OSError, ValueError):
            return None  # missing or damaged: recomputed

    def _write(self, kind: str, key: str, obj: dict[str, Any]) -> None:
        assert self.folder is not None
        try:
            atomic_write_text(self.folder / kind / f"{key}.json", json.dumps(obj, ensure_ascii=False))
        except (BenchError, OSError):
            pass  # an unwritable or full cache folder only costs a recomputation next time

    def _split(self, key: str) -> tuple[tuple[str, ...], tuple[Path | None, ...], tuple, tuple] | None:
        """(image ids, image paths, references, their tokens) of a split entry, read once."""
        if key not in self._splits:
            obj = self._read("splits", key)
            try:
                ids, paths = tuple(obj["ids"]), tuple(image_path(p) for p in obj["paths"])
                refs = tuple(tuple(r) for r in obj["refs"])
                ref_tokens = tuple(tuple(r) for r in obj["ref_tokens"])
            except (KeyError, TypeError):
                return None
            if not len(ids) == len(paths) == len(refs) == len(ref_tokens) or obj.get("version") != VERSION:
                return None
            self._splits[key] = (ids, paths, refs, ref_tokens)
        return self._splits[key]

    def get(self, folder: Path, key: str) -> LoadedRun | None:
        if self.folder is None:
            return None
        obj = self._read("runs", key)
        if not isinstance(obj, dict) or obj.get("version") != VERSION:
            return None
        split = self._split(str(obj.get("split")))
        if split is None:
            return None
        ids, paths, refs, ref_tokens = split
        try:
            captions, tokens = tuple(obj["captions"]), tuple(obj["tokens"])
            repeats = set(obj["repetitive"])
            rf = RunFolder(folder)
            loss, attend = rf.member("train") / "loss.csv", rf.member("attend")
            data = RunData(
                **{name: obj["fields"][name] for name in _FIELDS}, folder=folder, image_ids=ids, image_paths=paths,
                refs=refs, captions=captions, metrics=obj["metrics"], per_image=obj["per_image"],
                meteor_stats={k: tuple(v) for k, v in obj["meteor_stats"].items()},
                caption_flags={k: tuple(v) for k, v in obj["caption_flags"].items()}, results=obj["results"],
                loss_csv=loss if loss.is_file() else None,
                attend_pngs=tuple(sorted(attend.glob("*.png"))) if attend.is_dir() else (),
            )
            stats = Degeneration(**obj["degeneration"])
        except (KeyError, TypeError, AttributeError):
            return None
        if not len(captions) == len(tokens) == len(ids):
            return None
        return LoadedRun(data, RunTokens(tokens, ref_tokens), stats, tuple(k in repeats for k in range(len(ids))),
                         cached=True)

    def put(self, key: str, run: LoadedRun) -> None:
        if self.folder is None:
            return
        d = run.data
        split_key = self._split_key(d.folder)
        if self._split(split_key) is None:
            raw = [s.path for s in RunFolder(d.folder).read_split().samples]
            self._write("splits", split_key, {"version": VERSION, "ids": list(d.image_ids), "paths": raw,
                                              "refs": [list(r) for r in d.refs],
                                              "ref_tokens": [list(r) for r in run.tokens.refs]})
        self._write("runs", key, {
            "version": VERSION,
            "split": split_key,
            "fields": {name: getattr(d, name) for name in _FIELDS},
            "captions": list(d.captions),
            "tokens": list(run.tokens.captions),
            "metrics": d.metrics,
            "per_image": d.per_image,
            "meteor_stats": d.meteor_stats,
            "caption_flags": d.caption_flags,
            "results": d.results,
            "degeneration": asdict(run.degeneration),
            "repetitive": [k for k, r in enumerate(run.repetitive) if r],
        })


def with_data(run: LoadedRun, data: RunData) -> LoadedRun:
    """The run with other RunData (the judge's scores added), its text unchanged."""
    return dataclasses.replace(run, data=data)
