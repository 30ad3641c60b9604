"""Experiment trackers for `bench run --log-with NAME`: TensorBoard, Weights & Biases, MLflow, Trackio.

Built on accelerate's tracker classes (accelerate.tracking), used without an Accelerator. A run
logs its resolved config, per-step training loss and learning rate, per-epoch summaries, the final
metrics (with 95% bootstrap intervals for the metrics that are means of per-image scores) and a
table of sample images with their caption and references.

Everything stays local unless the user says otherwise, and nothing contacts a host by default:

    tensorboard  event files in RUN/tracking/tensorboard/
    wandb        offline mode (WANDB_MODE=online to stream), files in RUN/tracking/wandb/
    mlflow       a local store in RUN/tracking/mlruns/ (MLFLOW_TRACKING_URI to use a server)
    trackio      trackio's local store (its default)

A resumed run (same run folder, no --force) continues the same tracker run: wandb and MLflow by
the run id kept in RUN/tracking/state.json, Trackio by run name, and TensorBoard by writing to the
same folder, dropping the events of a half-done epoch (SummaryWriter's purge_step).
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.io import atomic_write_json, read_json

# name -> the module it needs (the pip extra has the same name: pip install 'bench[NAME]')
TRACKER_MODULES: dict[str, str] = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}
SAMPLE_ROWS = 8  # images in the samples table
STATE_FILE = "state.json"


def check_trackers(names: Sequence[str]) -> tuple[str, ...]:
    """The tracker names, deduplicated; unknown or not installed is a one-line BenchError."""
    for name in names:
        if name not in TRACKER_MODULES:
            raise BenchError(f"--log-with: unknown tracker {name!r} (choose from {', '.join(TRACKER_MODULES)})")
        if importlib.util.find_spec(TRACKER_MODULES[name]) is None:
            raise BenchError(f"--log-with {name}: {TRACKER_MODULES[name]} is not installed: pip install 'bench[{name}]'")
    return tuple(dict.fromkeys(names))


def flat_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"lora.r": 8, ...}: trackers take flat scalars (lists and None become text)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flat_config(value, name + "."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = json.dumps(value)
    return flat


# --- building accelerate's trackers ------------------------------------------------------------

def _tensorboard(folder: Path, name: str, state: dict[str, Any], resume_step: int) -> Any:
    from accelerate.tracking import TensorBoardTracker

    # purge_step: on resume, events logged after the last saved epoch are dropped (retrained).
    kwargs = {"purge_step": resume_step + 1} if resume_step else {}
    return TensorBoardTracker("tensorboard", folder, **kwargs)


def _wandb(folder: Path, name: str, state: dict[str, Any], resume_step: int) -> Any:
    from accelerate.tracking import WandBTracker

    state.setdefault("wandb_id", secrets.token_hex(8))
    mode = os.environ.get("WANDB_MODE", "offline")  # never online unless the user asks
    return WandBTracker(
        "bench", name=name, id=state["wandb_id"], resume="allow", dir=str(folder), mode=mode,
    )


def _mlflow(folder: Path, name: str, state: dict[str, Any], resume_step: int) -> Any:
    import mlflow
    from accelerate.tracking import MLflowTracker

    if not os.environ.get("MLFLOW_TRACKING_URI"):
        mlflow.set_tracking_uri((folder / "mlruns").resolve().as_uri())
    return MLflowTracker(experiment_name="bench", run_id=state.get("mlflow_run_id"), run_name=name)


def _trackio(folder: Path, name: str, state: dict[str, Any], resume_step: int) -> Any:
    from accelerate.tracking import TrackioTracker

    return TrackioTracker("bench", name=name, resume="allow")


_BUILDERS = {"tensorboard": _tensorboard, "wandb": _wandb, "mlflow": _mlflow, "trackio": _trackio}


def _resume_step(run_dir: Path) -> int:
    """The optimizer step of the last saved epoch (train/state.json), 0 when none."""
    path = run_dir / "train" / "state.json"
    try:
        return int(read_json(path).get("step", 0)) if path.is_file() else 0
    except (BenchError, ValueError, TypeError, AttributeError):
        return 0


@dataclass
class Trackers:
    """The trackers of one run; every call logs to each of them."""

    folder: Path
    trackers: list[Any] = field(default_factory=list)
    last_step: int = 0

    @classmethod
    def start(cls, run_dir: Path, config: Mapping[str, Any], names: Sequence[str], *, name: str) -> "Trackers":
        """Start (or, for a run folder with tracker state, resume) each named tracker."""
        from accelerate import PartialState

        names = check_trackers(names)
        if not PartialState._shared_state:  # accelerate's tracker logging needs a state; one process: CPU
            PartialState(cpu=True)
        folder = Path(run_dir) / "tracking"
        folder.mkdir(parents=True, exist_ok=True)
        state_path = folder / STATE_FILE
        state = read_json(state_path) if state_path.is_file() else {}
        resumed = bool(state)
        resume_step = _resume_step(Path(run_dir)) if resumed else 0
        self = cls(folder, last_step=resume_step)
        for tracker_name in names:
            tracker = _BUILDERS[tracker_name](folder, name, state, resume_step)
            tracker.main_process_only = False  # bench calls it on rank 0 only; no accelerate state
            try:
                tracker.start()
            except Exception as exc:  # a tracker's own failure: one line naming it
                raise BenchError(f"--log-with {tracker_name}: cannot start ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from exc
            if tracker_name == "mlflow":
                state["mlflow_run_id"] = tracker.tracker.info.run_id
            if not (resumed and tracker_name in state.get("started", [])):
                tracker.store_init_configuration(flat_config(config))
            self.trackers.append(tracker)
        state["started"] = sorted(set(state.get("started", [])) | set(names))
        atomic_write_json(state_path, state)
        return self

    def _log(self, values: dict[str, Any], step: int) -> None:
        for tracker in self.trackers:
            tracker.log(values, step=step)

    def log_train(self, step: int, loss: float, lr: float) -> None:
        """One optimizer step: the loss loss.csv records for it and the learning rate it used."""
        self.last_step = max(self.last_step, step)
        self._log({"train/loss": float(loss), "train/lr": float(lr)}, step)

    def log_epoch(self, epoch: int, step: int, mean_loss: float | None, train_s: float) -> None:
        values = {"epoch/epoch": epoch, "epoch/train_s": float(train_s)}
        if mean_loss is not None:
            values["epoch/mean_loss"] = float(mean_loss)
        self._log(values, step)

    def log_results(
        self,
        metrics: Mapping[str, float],
        cis: Mapping[str, tuple[float, float]],
        samples: Sequence[tuple[Path, str, str, Sequence[str]]],
    ) -> None:
        """Final metrics (+ CI bounds where known) and a table of (image, id, caption, references)."""
        values: dict[str, Any] = {f"results/{k}": float(v) for k, v in metrics.items() if v is not None}
        for key, (low, high) in cis.items():
            values[f"results/{key}/ci_low"], values[f"results/{key}/ci_high"] = float(low), float(high)
        step = self.last_step + 1
        self._log(values, step)
        for tracker in self.trackers:
            _SAMPLE_LOGGERS[tracker.name](tracker, samples, step)

    def finish(self) -> None:
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []


# --- the samples table, in each tracker's own table/image types ----------------------------------

SampleRow = tuple[Path, str, str, Sequence[str]]  # image file, image id, caption, references


def _images(samples: Sequence[SampleRow], max_side: int = 384) -> list[Any]:
    """Decoded with bench's safe loader, never by the tracker from the raw file."""
    from bench.data import load_image

    return [load_image(path, max_side=max_side) for path, *_ in samples]


def _markdown(samples: Sequence[SampleRow]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| image | caption | references |", "| --- | --- | --- |"]
    lines += [f"| {cell(i)} | {cell(c)} | {cell(' / '.join(r))} |" for _, i, c, r in samples]
    return "\n".join(lines)


def _samples_tensorboard(tracker: Any, samples: Sequence[SampleRow], step: int) -> None:
    import numpy as np

    writer = tracker.tracker
    writer.add_text("samples", _markdown(samples), global_step=step)
    for (_, image_id, _, _), image in zip(samples, _images(samples)):
        writer.add_image(f"samples/{image_id}", np.asarray(image), global_step=step, dataformats="HWC")
    writer.flush()


def _samples_wandb(tracker: Any, samples: Sequence[SampleRow], step: int) -> None:
    import wandb

    rows = [[i, wandb.Image(image, caption=c), c, "\n".join(r)] for (_, i, c, r), image in zip(samples, _images(samples))]
    tracker.log_table("samples", columns=["image_id", "image", "caption", "references"], data=rows, step=step)


def _samples_mlflow(tracker: Any, samples: Sequence[SampleRow], step: int) -> None:
    import mlflow

    table = {"image_id": [i for _, i, _, _ in samples], "caption": [c for _, _, c, _ in samples],
             "references": [" / ".join(r) for _, _, _, r in samples]}
    mlflow.log_table(table, artifact_file="samples.json")
    for (_, image_id, _, _), image in zip(samples, _images(samples)):
        mlflow.log_image(image, artifact_file=f"samples/{image_id}.png")


def _samples_trackio(tracker: Any, samples: Sequence[SampleRow], step: int) -> None:
    import pandas as pd
    import trackio

    frame = pd.DataFrame([{"image_id": i, "caption": c, "references": " / ".join(r)} for _, i, c, r in samples])
    tracker.log({"samples": trackio.Table(dataframe=frame)}, step=step)


_SAMPLE_LOGGERS = {
    "tensorboard": _samples_tensorboard, "wandb": _samples_wandb, "mlflow": _samples_mlflow, "trackio": _samples_trackio,
}


# --- what a finished run folder holds ------------------------------------------------------------


def run_outputs(run_dir: Path, samples: Sequence[Any], n_boot: int = 1000, seed: int = 0) -> tuple[
    dict[str, float], dict[str, tuple[float, float]], list[SampleRow]
]:
    """(metrics, CIs, sample rows) of a finished run, for Trackers.log_results.

    CIs: a seeded percentile bootstrap over images for the metrics that are means of per-image
    scores; CIDEr and BLEU need the tokenized text and are left to `bench compare`.
    """
    import numpy as np

    from bench.captioning import existing_predictions
    from bench.scoring.metrics import keys_aggregated
    from bench.scoring.resample import percentile_ci, resample_counts

    from bench.run.folder import RunFolder

    folder = RunFolder(run_dir)
    metrics = dict(folder.read_results().metrics)
    scored = folder.read_metrics()
    per_image = scored.per_image if scored is not None else {}
    ids = [s.image_id for s in samples if s.image_id in per_image]
    counts = resample_counts(len(ids), n_boot, seed) if ids else None
    cis: dict[str, tuple[float, float]] = {}
    for metric in keys_aggregated("mean"):  # corpus value = mean of per-image scores
        scores = np.array([per_image[i].get(metric, np.nan) for i in ids], dtype=np.float64)
        if counts is not None and metric in metrics and not np.isnan(scores).any():
            cis[metric] = percentile_ci(counts @ scores / len(ids))
    captions = existing_predictions(folder.predictions, samples)
    rows = [(Path(s.path), s.image_id, captions[s.image_id], list(s.refs)) for s in samples if s.image_id in captions]
    return metrics, cis, rows[:SAMPLE_ROWS]
