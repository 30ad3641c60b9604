"""The run folder, `runs/<setting>/<backend>/`: its members, their schema, and the only code that
reads or writes its JSON files (`bench run`, `bench score --as-run`, `bench compare`, `bench
attend`, tracking and the tests all go through `RunFolder`).

    config.json        the resolved setting of the run (RunPlan.config)
    split.json         SplitRecord: dataset, fingerprint and the images scored, with references
    run_state.json     StageState: figures of the finished stages, carried across a resume
    predictions.jsonl  one checksummed caption record per image (bench.predictions_file)
    served.jsonl       an endpoint run: one record per answer or failure (bench.served.records)
    metrics.json       MetricsRecord: corpus and per-image scores, METEOR statistics
    results.json       ResultsRecord: written last and atomically; its presence = complete
    tokens.json        derived: `bench compare`'s PTB tokens of the run (a cache, rebuilt at will)
    train/ attend/ tracking/   adapter + loss.csv, `bench attend` maps, --log-with files

The records (dataclasses, checked parsing) are in bench.run.records. Every JSON object this
module writes carries `schema_version`; `migrate()` brings an object read from an older folder
(no `schema_version`: version 0, bench 0.1.0) to the current schema, so the rest of the code
sees one shape. Reading never rewrites a folder (it may be read-only).
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.io import atomic_write_json, atomic_write_text, encode_record, read_json
from bench.run.records import (  # noqa: F401  (the records are part of this module's API)
    KINDS,
    CaptionRecord,
    MetricsRecord,
    ResultsRecord,
    SplitRecord,
    SplitSample,
    StageState,
    TrainRecord,
    metrics_from_json,
    results_from_json,
    split_from_json,
)

SCHEMA_VERSION = 1

CONFIG, SPLIT, STATE = "config.json", "split.json", "run_state.json"
PREDICTIONS, METRICS, RESULTS, TOKENS = "predictions.jsonl", "metrics.json", "results.json", "tokens.json"
SERVED = "served.jsonl"
# Everything a run holds; --force removes all of it (after taking the lock) so nothing stale stays.
RUN_FILES: tuple[str, ...] = (RESULTS, METRICS, PREDICTIONS, SERVED, STATE, SPLIT, CONFIG, TOKENS)
RUN_DIRS: tuple[str, ...] = ("train", "attend", "tracking")


def migrate(name: str, obj: Any) -> Any:
    """`obj` as read from member `name` of any bench's folder, in the current schema (without
    `schema_version`). Version 0 -> 1: zero-shot configs from before `image_mode` existed gave
    the processor the image as is, which is mode "crop"."""
    if not isinstance(obj, dict):
        return obj
    version = obj.get("schema_version", 0)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise BenchError(f"{name}: schema_version {version!r} is newer than this bench's ({SCHEMA_VERSION}); "
                         "update bench to read this run")
    obj = {k: v for k, v in obj.items() if k != "schema_version"}
    if version < 1 and name == CONFIG:
        obj = _v1_config(obj)
    if version < 1 and name == RESULTS and isinstance(obj.get("config"), dict):
        obj["config"] = _v1_config(obj["config"])
    return obj


def _v1_config(config: dict[str, Any]) -> dict[str, Any]:
    model = config.get("model")
    if config.get("kind") == "zero-shot" and isinstance(model, dict):
        options = model.get("options") or {}
        if "image_mode" not in options:
            config = {**config, "model": {**model, "options": {**options, "image_mode": "crop"}}}
    return config


# --- the folder --------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunFolder:
    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def member(self, name: str) -> Path:
        """The path of a declared member (a file of RUN_FILES or a folder of RUN_DIRS)."""
        if name not in RUN_FILES and name not in RUN_DIRS:
            raise ValueError(f"{name!r} is not a member of a run folder")
        return self.path / name

    @property
    def predictions(self) -> Path:
        return self.path / PREDICTIONS

    def has(self, name: str) -> bool:
        return self.member(name).exists()

    @property
    def complete(self) -> bool:  # results.json is written last
        return (self.path / RESULTS).is_file()

    def _write(self, name: str, obj: Mapping[str, Any]) -> None:
        atomic_write_json(self.path / name, {"schema_version": SCHEMA_VERSION, **obj})

    def _read(self, name: str) -> Any:
        try:
            return migrate(name, read_json(self.path / name))
        except BenchError as exc:
            if str(exc).startswith(name):  # migrate's message: name the whole path
                raise BenchError(f"{self.path / name}{str(exc)[len(name):]}") from exc
            raise

    def write_config(self, config: Mapping[str, Any]) -> None:
        self._write(CONFIG, config)

    def read_config(self) -> dict[str, Any]:
        obj = self._read(CONFIG)
        if not isinstance(obj, dict):
            raise BenchError(f"{self.path / CONFIG}: expected a JSON object")
        return obj

    def write_split(self, split: SplitRecord) -> None:
        self._write(SPLIT, split.to_json())

    def read_split(self) -> SplitRecord:
        return split_from_json(self._read(SPLIT), self.path / SPLIT)

    def write_state(self, state: StageState) -> None:
        self._write(STATE, state.to_json())

    def read_state(self) -> StageState:
        """The finished stages; none when the run has not started one."""
        return StageState.from_json(self._read(STATE)) if (self.path / STATE).exists() else StageState()

    def write_predictions(self, captions: Mapping[str, str]) -> None:
        """The whole file at once (captioning appends through bench.predictions_file)."""
        atomic_write_text(self.predictions, "".join(encode_record({"image_id": i, "caption": c})
                                                    for i, c in captions.items()))

    def write_metrics(self, metrics: MetricsRecord) -> None:
        self._write(METRICS, metrics.to_json())

    def read_metrics(self) -> MetricsRecord | None:
        """None when the run has not been scored."""
        return metrics_from_json(self._read(METRICS), self.path / METRICS) if (self.path / METRICS).exists() else None

    def write_results(self, results: ResultsRecord) -> None:
        """Written last, atomically: from here on the run is complete."""
        self._write(RESULTS, results.to_json())

    def discard_results(self) -> None:
        """Unmark a run as complete (before any other member of it changes)."""
        (self.path / RESULTS).unlink(missing_ok=True)

    def read_results(self) -> ResultsRecord:
        if not self.complete:
            raise BenchError(f"{self.path}: no results.json (the run is not complete; run it again to finish it)")
        return results_from_json(self._read(RESULTS), self.path / RESULTS)

    def read_tokens(self) -> dict[str, Any] | None:
        """tokens.json is a derived cache: damage or a read-only folder only costs a recomputation."""
        try:
            obj = self._read(TOKENS) if (self.path / TOKENS).is_file() else None
        except BenchError:
            return None
        return obj if isinstance(obj, dict) else None

    def write_tokens(self, payload: Mapping[str, Any]) -> None:
        try:
            self._write(TOKENS, payload)
        except BenchError:
            pass

    def digest(self, names: Sequence[str]) -> str:
        """sha256 of the bytes of the named members (an absent one counts as absent): equal
        digests mean the folder holds exactly the same content for a reader of those members."""
        h = hashlib.sha256()
        for name in names:
            path = self.member(name)
            data = path.read_bytes() if path.is_file() else None
            h.update(f"{name}\0{-1 if data is None else len(data)}\0".encode())
            h.update(data or b"")
        return h.hexdigest()

    def clear(self) -> None:
        """Remove every member (the lock file stays: it is held by the caller)."""
        from bench.predictions_file import SHARD_GLOB

        for name in RUN_FILES:
            (self.path / name).unlink(missing_ok=True)
        for shard in self.path.glob(SHARD_GLOB):  # captions of an interrupted multi-process run
            shard.unlink(missing_ok=True)
        for name in RUN_DIRS:
            shutil.rmtree(self.path / name, ignore_errors=True)
