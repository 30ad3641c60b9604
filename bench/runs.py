"""The run registry: one folder per (setting, backend) under `bench.paths.runs_dir()`.

    runs/<setting>/<backend>/   (external systems: runs/<name>/external/)
      .lock  config.json  split.json  predictions.jsonl  train/  metrics.json  results.json

`results.json` is written last and atomically: its presence means the run is complete. A run
whose config and split fingerprint match its `results.json` is a cache hit, answered without
importing torch. A run folder never mixes configs: a different config on an existing run is an
error that asks for `--force`. `run_state.json` carries the finished stages' figures (training,
captioning) across a resume, so a run killed after captioning does not reload its model.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import platform
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import paths
from bench.config import Setting
from bench.data.types import Sample, Split
from bench.distributed import SHARD_GLOB, SINGLE, Dist, detect
from bench.errors import BenchError
from bench.io import atomic_write_json, atomic_write_text, encode_record, exclusive_lock, read_json, read_records
from bench.settings import is_lora_backend

METRIC_KEYS: tuple[str, ...] = (
    "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "CLIPScore", "RefCLIPScore",
)
# Everything a run writes; --force removes all of it (after taking the lock) so nothing stale stays.
RUN_FILES: tuple[str, ...] = (
    "results.json", "metrics.json", "predictions.jsonl", "run_state.json", "split.json", "config.json",
)
RUN_DIRS: tuple[str, ...] = ("train", "attend")  # attend/: figures of this run's model (bench attend)
VERSIONED_PACKAGES: tuple[str, ...] = (
    "torch", "transformers", "peft", "accelerate", "bitsandbytes", "pycocoevalcap", "safetensors", "tokenizers",
)
# Config keys that label a run without changing its outputs: editing them is no reason to recompute.
_LABEL_KEYS: tuple[str, ...] = ("name", "source", "group", "description", "backends", "models")


@dataclass(frozen=True)
class RunPlan:
    """Everything needed to execute or cache-check one run, computed without torch."""

    setting: Setting  # with --data / --limit applied
    backend: str
    kind: str  # "lora" | "zero-shot"
    run_dir: Path
    split: Split
    samples: tuple[Sample, ...]  # the validation images captioned and scored, in order
    prompt: Any  # the PromptTemplate of a zero-shot run (bench.prompts), else None
    prompt_text: str | None
    config: dict[str, Any]  # what config.json holds

    @property
    def name(self) -> str:
        return f"{self.setting.name}/{self.backend}"


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    results: dict[str, Any]
    cached: bool

    @property
    def name(self) -> str:
        return str(self.results.get("run", self.run_dir.name))


@dataclass(frozen=True)
class RunInfo:
    name: str  # "<setting>/<backend>"
    setting: str
    backend: str
    kind: str | None
    status: str  # "complete" | "partial" | "empty"
    n_predictions: int
    metrics: dict[str, float] | None
    dataset: str | None
    fingerprint: str | None
    path: Path


# --- small helpers -------------------------------------------------------------------------------

def run_label(run_dir: Path) -> str:
    """`runs/x/y` when inside the project, the absolute path otherwise (for messages)."""
    try:
        return str(run_dir.resolve().relative_to(paths.project_dir()))
    except ValueError:
        return str(run_dir)


def run_dir_for(setting_name: str, backend: str, root: Path | None = None) -> Path:
    return (root or paths.runs_dir()) / setting_name / backend


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def resolved_config(setting: Setting, backend: str, kind: str, prompt_text: str | None) -> dict[str, Any]:
    """config.json: the whole resolved setting plus what this run uses from it."""
    model = setting.models[backend]
    return _jsonable(
        {
            **dataclasses.asdict(setting),
            "backend": backend,
            "kind": kind,
            "model": dataclasses.asdict(model),
            "prompt_text": prompt_text,
        }
    )


def run_identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a config that determines a run's outputs."""
    ident = {k: v for k, v in config.items() if k not in _LABEL_KEYS}
    if config.get("kind") != "lora":  # zero-shot runs neither train nor use LoRA settings
        ident.pop("lora", None)
        ident.pop("train", None)
    if isinstance(ident.get("scoring"), dict):  # batch size changes speed, not scores
        ident["scoring"] = {k: v for k, v in ident["scoring"].items() if k != "clip_batch_size"}
    return ident


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): obj}


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between two configs' identities ("lora.r: 32 -> 64")."""
    a, b = _flatten(run_identity(old)), _flatten(run_identity(new))
    return [f"{k}: {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def resolve_device(name: str) -> Any:
    """`auto` picks cuda, then mps, then cpu; an unavailable explicit device is an error."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda: CUDA is not available on this machine (use --device auto or cpu)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise BenchError("--device mps: MPS is not available on this machine (use --device auto or cpu)")
    if name not in ("cpu", "cuda", "mps") and not name.startswith("cuda:"):
        raise BenchError(f"--device {name}: must be auto, cpu, cuda or mps")
    return torch.device(name)


def cpu_thread_budget(cores: int, workers: int, processes: int = 1) -> int:
    """Intra-op threads for a model on CPU: the cores left to this process after its DataLoader
    workers, at least 1.

    PyTorch's default (one thread per core) oversubscribes the cores the workers decode images
    on; for small models the threads then wait on each other at every op (measured: tiny
    ViT-GPT2 + LoRA generation 20x slower with 2 threads than with 1 on a busy 2-core machine).
    """
    return max(1, cores // max(1, processes) - max(0, workers))


@contextmanager
def cpu_threads(device: Any, workers: int, processes: int = 1) -> Iterator[int | None]:
    """Run the block with `cpu_thread_budget` intra-op threads on CPU, restoring the count after.

    Left alone when the user chose (OMP_NUM_THREADS set) or the device is not the CPU; the count
    is only ever lowered.
    """
    import os

    import torch

    before = torch.get_num_threads()
    if getattr(device, "type", None) != "cpu" or os.environ.get("OMP_NUM_THREADS"):
        yield None
        return
    budget = cpu_thread_budget(os.cpu_count() or 1, workers, processes)
    torch.set_num_threads(min(before, budget))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def library_versions() -> dict[str, str | None]:
    from bench import __version__

    versions: dict[str, str | None] = {"bench": __version__, "python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=paths.REPO_DIR, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def peak_memory(device: Any = None) -> dict[str, float | None]:
    # ru_maxrss is KiB on Linux, bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_mb = rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024
    cuda_mb = None
    if device is not None and getattr(device, "type", None) == "cuda":
        import torch

        cuda_mb = torch.cuda.max_memory_allocated(device) / (1024 * 1024)
    return {"peak_rss_mb": round(rss_mb, 1), "peak_cuda_mb": None if cuda_mb is None else round(cuda_mb, 1)}


def split_json(split: Split, samples: Sequence[Sample]) -> dict[str, Any]:
    return {
        "dataset": split.dataset,
        "fingerprint": split.fingerprint,
        "n": len(samples),
        "samples": [{"image_id": s.image_id, "path": str(s.path), "refs": list(s.refs)} for s in samples],
    }


# --- planning (cheap, no torch) ------------------------------------------------------------------

def _load_split(dataset: str, limit: int | None) -> Split:
    from bench.data import load_dataset, make_split

    return make_split(load_dataset(dataset), limit=limit)


def plan_run(
    setting: Setting,
    backend: str,
    *,
    limit: int | None = None,
    dataset: str | None = None,
    root: Path | None = None,
    splits: dict[tuple[str, int | None], Split] | None = None,
) -> RunPlan:
    """Resolve a run without touching its folder: overrides, split, prompt, config.

    Every bad input (backend, dataset, prompt) is raised here, before any run starts.
    `splits` caches loaded splits across the runs of one command.
    """
    if backend not in setting.backends:
        raise BenchError(
            f"--backend {backend}: setting {setting.name!r} ({setting.source}) runs {', '.join(setting.backends)}"
        )
    if limit is not None and limit < 1:
        raise BenchError(f"--limit must be >= 1 (got {limit})")
    data = setting.data
    if dataset is not None:
        data = dataclasses.replace(data, dataset=dataset)
    if limit is not None:
        data = dataclasses.replace(data, limit=limit)
    setting = dataclasses.replace(setting, data=data)
    key = (data.dataset, data.limit)
    if splits is not None and key in splits:
        split = splits[key]
    else:
        split = _load_split(data.dataset, data.limit)
        if splits is not None:
            splits[key] = split
    samples = tuple(split.val[: data.limit] if data.limit else split.val)
    if not samples:
        raise BenchError(f"dataset {data.dataset!r}: the validation split is empty")
    kind = "lora" if is_lora_backend(backend) else "zero-shot"
    if kind == "lora" and not split.train:
        raise BenchError(
            f"dataset {data.dataset!r}: the split has no training images, so {backend!r} has nothing to "
            "fine-tune its LoRA on; use a zero-shot setting or another dataset"
        )
    template = None
    if kind == "zero-shot" and setting.prompt:
        from bench.prompts import load_prompt

        template = load_prompt(setting.prompt)
    prompt_text = template.template if template is not None else None
    return RunPlan(
        setting=setting,
        backend=backend,
        kind=kind,
        run_dir=run_dir_for(setting.name, backend, root),
        split=split,
        samples=samples,
        prompt=template,
        prompt_text=prompt_text,
        config=resolved_config(setting, backend, kind, prompt_text),
    )


# --- executing -----------------------------------------------------------------------------------

def _cached_results(plan: RunPlan, force: bool) -> dict[str, Any] | None:
    """Results of a finished run with this config; None when there is work to do.

    A folder holding another config (finished, or partial with outputs) is an error: runs are
    never mixed; --force starts afresh.
    """
    if force:
        return None
    run_dir, label = plan.run_dir, run_label(plan.run_dir)
    results_path = run_dir / "results.json"
    if results_path.exists():
        results = read_json(results_path)
        diff = config_diff(results.get("config", {}), plan.config)
        if results.get("fingerprint") != plan.split.fingerprint:
            diff.append(f"split fingerprint: {results.get('fingerprint')} -> {plan.split.fingerprint}")
        if not diff:
            return results
        raise BenchError(
            f"{label}: holds finished results for a different config ({'; '.join(diff)}); "
            "re-run with --force to replace them"
        )
    config_path = run_dir / "config.json"
    has_outputs = (
        (run_dir / "predictions.jsonl").exists() or (run_dir / "train").exists() or any(run_dir.glob(SHARD_GLOB))
    )
    if config_path.exists() and has_outputs:
        diff = config_diff(read_json(config_path), plan.config)
        if (run_dir / "split.json").exists():
            old_fp = read_json(run_dir / "split.json").get("fingerprint")
            if old_fp != plan.split.fingerprint:
                diff.append(f"split fingerprint: {old_fp} -> {plan.split.fingerprint}")
        if diff:
            raise BenchError(
                f"{label}: holds a partial run of a different config ({'; '.join(diff)}); "
                "re-run with --force to start it afresh"
            )
    return None


def clear_run_dir(run_dir: Path) -> None:
    """Remove every output of a run (the lock file stays: it is held by the caller)."""
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for shard in run_dir.glob(SHARD_GLOB):  # captions of an interrupted multi-process run
        shard.unlink(missing_ok=True)
    for name in RUN_DIRS:
        shutil.rmtree(run_dir / name, ignore_errors=True)


def escape(text: str) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def _say(console: Any, message: str) -> None:
    if console is not None:
        console.print(message, highlight=False)


@contextmanager
def _blame(source: str) -> Iterator[None]:
    """Prefix a model/LoRA error with the setting file that chose the model and the targets."""
    try:
        yield
    except BenchError as exc:
        if str(exc).startswith(source):
            raise
        raise BenchError(f"{source}: {exc}", exit_code=exc.exit_code) from exc


def _load_captioner(
    plan: RunPlan, device: Any, console: Any, progress: bool, num_workers: int, dist: Dist = SINGLE
) -> tuple[Any, dict[str, Any] | None]:
    """Load the backend (and train LoRA, resuming); returns (captioner, training figures)."""
    import torch

    from bench.backends import get_backend

    setting = plan.setting
    model_cfg = setting.models[plan.backend]
    _say(console, f"loading {plan.backend} model [bold]{escape(model_cfg.model)}[/] on {device}")
    torch.manual_seed(setting.seed)  # LoRA init is random: seed it so a run is reproducible
    with _blame(setting.source):
        captioner = get_backend(plan.backend).load(model_cfg, device, prompt=plan.prompt)
    if plan.kind != "lora":
        return captioner, None
    from bench.training import train, training_pairs

    with _blame(setting.source):
        captioner.add_lora(setting.lora)
    # Every reference of each of the first `train_size` training images.
    pairs = training_pairs(plan.split.train, setting.train.train_size)
    _say(console, f"training LoRA r={setting.lora.r} for {setting.train.epochs} epoch(s) on {len(pairs)} pairs")
    result = train(
        captioner, pairs, setting.train, plan.run_dir / "train", setting.seed, device,
        progress=progress, num_workers=num_workers, dist=dist,
    )
    trainable, total = int(result.trainable), int(result.total)
    return captioner, {
        "epochs_done": int(result.epochs_done),
        "steps": int(result.steps),
        "final_loss": float(result.final_loss) if result.final_loss is not None else None,
        "train_s": float(result.train_s),
        "trainable": trainable,
        "total": total,
        "n_pairs": len(pairs),
    }


def _free_memory(device: Any) -> None:
    """Give the captioner's memory back before the scorer loads CLIP."""
    gc.collect()
    if getattr(device, "type", None) == "cuda":
        import torch

        torch.cuda.empty_cache()


class ScorerPool:
    """The scorers of one command: each CLIP model and METEOR JVM loads once per process.

    `bench run --group` scores many runs with the same scoring config; without the pool every
    run would load CLIP and start the JVM again. Close it (or use it as a context manager) when
    the command ends.
    """

    def __init__(self) -> None:
        self._scorers: dict[tuple[Any, ...], Any] = {}

    def get(self, metrics: Sequence[str], clip_model: str, device: str, clip_batch_size: int) -> Any:
        from bench.scoring import Scorer

        key = (tuple(metrics), clip_model, device, clip_batch_size)
        if key not in self._scorers:
            self._scorers[key] = Scorer(
                metrics=metrics, clip_model=clip_model, device=device, clip_batch_size=clip_batch_size
            )
        return self._scorers[key]

    def close(self) -> None:
        scorers, self._scorers = self._scorers, {}
        for scorer in scorers.values():
            scorer.close()

    def __enter__(self) -> "ScorerPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _score(
    plan: RunPlan,
    predictions: dict[str, str],
    device: Any,
    console: Any,
    progress: bool,
    scorers: ScorerPool | None = None,
) -> tuple[dict[str, Any], float]:
    sc = plan.setting.scoring
    _say(console, f"scoring {len(predictions)} captions ({', '.join(sc.metrics)}; CLIP {escape(sc.clip_model)})")
    start = time.perf_counter()
    with ExitStack() as stack:
        if scorers is None:  # a pool for this run alone
            scorers = stack.enter_context(ScorerPool())
        # CLIPScore on the run's device (cuda:<local rank> in a multi-process run).
        scorer = scorers.get(sc.metrics, sc.clip_model, str(device), sc.clip_batch_size)
        result = scorer.score(
            predictions,
            {s.image_id: list(s.refs) for s in plan.samples},
            {s.image_id: Path(s.path) for s in plan.samples},
            progress=progress,
        )
    return metrics_json(result), time.perf_counter() - start


def metrics_json(result: Any) -> dict[str, Any]:
    """metrics.json in the run-folder format, from a bench.scoring ScoreResult."""
    return {
        "corpus": dict(result.corpus),
        "per_image": {k: dict(v) for k, v in result.per_image.items()},
        "n_images": int(result.n_images),
        "n_clip_truncated": int(getattr(result, "n_clip_truncated", 0)),
        "clip_model": getattr(result, "clip_model", None),
        # Per-image METEOR statistics: the report's METEOR intervals are aggregated from them.
        "meteor_stats": dict(getattr(result, "meteor_stats", None) or {}),
    }


def normalize_metrics_json(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Accept the run-folder shape or ScoreResult.to_json()'s flat one (metric keys at the top)."""
    if isinstance(obj.get("corpus"), dict):
        return dict(obj)
    return {
        "corpus": {k: v for k, v in obj.items() if k in METRIC_KEYS},
        "per_image": dict(obj.get("per_image", {})),
        "n_images": obj.get("n_images"),
        "n_clip_truncated": obj.get("n_clip_truncated", 0),
        "clip_model": obj.get("clip_model"),
        "meteor_stats": dict(obj.get("meteor_stats") or {}),
    }


def _results(
    plan: RunPlan,
    metrics_json: dict[str, Any],
    state: dict[str, Any],
    score_s: float,
    device: Any,
) -> dict[str, Any]:
    train_info = state.get("train")
    caption = state.get("caption", {})
    params = None
    if train_info:
        total = train_info["total"] or 1
        params = {
            "trainable": train_info["trainable"],
            "total": train_info["total"],
            "trainable_pct": round(100.0 * train_info["trainable"] / total, 4),
        }
    generate_s = float(caption.get("generate_s", 0.0))
    n_captioned = int(caption.get("n_captioned", 0))
    setting = plan.setting
    return {
        "run": plan.name,
        "setting": setting.name,
        "backend": plan.backend,
        "kind": plan.kind,
        "prompt": setting.prompt if plan.kind == "zero-shot" else None,
        "prompt_text": plan.prompt_text,
        "model": setting.models[plan.backend].model,
        "dataset": plan.split.dataset,
        "fingerprint": plan.split.fingerprint,
        "n_images": len(plan.samples),
        "metrics": dict(metrics_json.get("corpus", {})),
        "params": params,
        "timings": {
            "train_s": round(float(train_info["train_s"]) if train_info else 0.0, 3),
            "generate_s": round(generate_s, 3),
            "model_s": round(float(caption.get("model_s", 0.0)), 3),
            "score_s": round(score_s, 3),
            "images_per_s": round(n_captioned / generate_s, 3) if generate_s > 0 else 0.0,
        },
        "memory": peak_memory(device),
        "device": str(device),
        "versions": library_versions(),
        "git_commit": git_commit(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": plan.config,
    }


def _start_run(plan: RunPlan, force: bool) -> dict[str, Any]:
    """Ready the run folder (under the lock): config and split written, stale outputs gone.

    Returns the stages already finished (`run_state.json`).
    """
    run_dir = plan.run_dir
    config_path = run_dir / "config.json"
    if force or not config_path.exists() or config_diff(read_json(config_path), plan.config):
        clear_run_dir(run_dir)  # a differing config here has no outputs (checked before)
    atomic_write_json(run_dir / "config.json", plan.config)
    atomic_write_json(run_dir / "split.json", split_json(plan.split, plan.samples))
    (run_dir / "results.json").unlink(missing_ok=True)  # a stale one would claim completeness
    state_path = run_dir / "run_state.json"
    return read_json(state_path) if state_path.exists() else {}


def _missing_captions(plan: RunPlan) -> int:
    """Images still to caption, after folding in the shards of an interrupted multi-process run."""
    from bench.distributed import merge_shards

    return len(plan.samples) - len(merge_shards(plan.run_dir / "predictions.jsonl", plan.samples))


def _caption_state(previous: Mapping[str, Any], stats: Sequence[Any]) -> dict[str, Any]:
    """Captioning figures summed over sessions; over the ranks of one session, the slowest rank's
    seconds (they ran side by side) and every rank's images."""
    return {
        "generate_s": float(previous.get("generate_s", 0.0)) + max(s.wall_s for s in stats),
        "model_s": float(previous.get("model_s", 0.0)) + max(s.generate_s for s in stats),
        "n_captioned": int(previous.get("n_captioned", 0)) + sum(s.n_captioned for s in stats),
    }


def _generation_autocast(plan: RunPlan, device: Any) -> Any:
    """bf16 autocast for the fp32 LoRA captioners on GPUs (the dtype training used); None on CPU.

    LLaVA is loaded in bf16/fp16 already (bench.backends.llava.pick_dtype).
    """
    if plan.kind != "lora" or getattr(device, "type", "cpu") != "cuda":
        return None
    from bench.training import autocast_dtype

    return autocast_dtype(plan.setting.train.precision, device)


def _remove_stale_temps(run_dir: Path) -> None:
    """Drop temp files/folders a killed process left mid-write (we hold the lock: nobody writes)."""
    stale = sorted({*run_dir.rglob(".*.tmp"), *run_dir.rglob(".epoch-*.partial")}, key=lambda p: len(p.parts))
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def execute_plan(
    plan: RunPlan,
    *,
    force: bool = False,
    device: str = "auto",
    progress: bool = True,
    num_workers: int = 2,
    console: Any = None,
    dist: Dist | None = None,
    scorers: ScorerPool | None = None,
) -> RunResult:
    """Train (LoRA), caption and score one run, or answer from its finished results.

    In a multi-process launch (`dist`, detected from the environment by default) every rank
    calls this: rank 0 holds the lock, writes the folder and scores; all ranks train (DDP) and
    caption their shard. One process never imports torch on a cache hit.
    """
    dist = detect() if dist is None else dist
    if not dist.is_main:  # rank 0 speaks for the run
        console, progress = None, False
    run_dir = plan.run_dir
    dev = None
    if dist.enabled:  # the process group must exist before the first collective
        dev = dist.device(resolve_device(device))
        dist.init(dev)
    with ExitStack() as stack:
        dist.on_main(lambda: stack.enter_context(exclusive_lock(run_dir)))
        dist.on_main(lambda: _remove_stale_temps(run_dir))
        cached = dist.on_main(lambda: _cached_results(plan, force))
        if cached is not None:
            return RunResult(run_dir=run_dir, results=cached, cached=True)
        state: dict[str, Any] = dist.on_main(lambda: _start_run(plan, force))
        state_path = run_dir / "run_state.json"

        # Heavy imports only from here on: the cache-hit path above stays torch-free.
        from bench.captioning import caption_samples

        dev = dev if dev is not None else resolve_device(device)
        missing = dist.on_main(lambda: _missing_captions(plan))
        # Workers decode images while the model runs: leave them their cores (CPU only).
        with cpu_threads(dev, num_workers, dist.world_size):
            if missing or (plan.kind == "lora" and "train" not in state):
                captioner, train_info = _load_captioner(plan, dev, console, progress, num_workers, dist)
                if train_info is not None and "train" not in state:  # a resumed run keeps the first record
                    state["train"] = train_info
                    dist.on_main(lambda: atomic_write_json(state_path, state))
                captioner.torch_module().eval()
                where = f" on {dist.world_size} processes" if dist.enabled else ""
                _say(console, f"captioning {missing} of {len(plan.samples)} images (batch {plan.setting.generation.batch_size}){where}")
                stats = caption_samples(
                    captioner,
                    plan.samples,
                    plan.setting.generation,
                    run_dir / "predictions.jsonl",
                    num_workers,
                    progress=progress,
                    console=console,
                    dist=dist,
                    amp_dtype=_generation_autocast(plan, dev),
                )
                state["caption"] = _caption_state(state.get("caption", {}), dist.gather(stats))
                dist.on_main(lambda: atomic_write_json(state_path, state))
                del captioner
                _free_memory(dev)

        def finish() -> dict[str, Any]:
            from bench.captioning import existing_predictions

            predictions = existing_predictions(run_dir / "predictions.jsonl", plan.samples)
            scored, score_s = _score(plan, predictions, dev, console, progress, scorers)
            atomic_write_json(run_dir / "metrics.json", scored)
            results = _results(plan, scored, state, score_s, dev)
            if dist.enabled:
                results["processes"] = dist.world_size
            atomic_write_json(run_dir / "results.json", results)  # last: marks the run complete
            return results

        results = dist.on_main(finish)
        return RunResult(run_dir=run_dir, results=results, cached=False)


def execute_run(
    setting: Setting,
    backend: str,
    *,
    force: bool = False,
    device: str = "auto",
    limit: int | None = None,
    dataset: str | None = None,
    progress: bool = True,
    num_workers: int = 2,
    console: Any = None,
    scorers: ScorerPool | None = None,
) -> RunResult:
    """Train (LoRA backends), caption and score one (setting, backend); a cache hit if done."""
    plan = plan_run(setting, backend, limit=limit, dataset=dataset)
    return execute_plan(
        plan, force=force, device=device, progress=progress, num_workers=num_workers, console=console, scorers=scorers
    )


# --- reading the registry ------------------------------------------------------------------------

def load_results(run_dir: str | Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    path = run_dir / "results.json"
    if not path.exists():
        raise BenchError(f"{run_label(run_dir)}: no results.json (the run is not complete; run it again to finish it)")
    results = read_json(path)
    if not isinstance(results, dict):
        raise BenchError(f"{path}: expected a JSON object")
    return results


def _run_info(run_dir: Path, root: Path) -> RunInfo:
    setting, backend = run_dir.parent.name, run_dir.name
    results: dict[str, Any] | None = None
    if (run_dir / "results.json").exists():
        try:
            results = load_results(run_dir)
        except BenchError:
            results = None
    config: dict[str, Any] = {}
    split: dict[str, Any] = {}
    try:
        if (run_dir / "config.json").exists():
            config = read_json(run_dir / "config.json")
        if (run_dir / "split.json").exists():
            split = read_json(run_dir / "split.json")
    except BenchError:
        pass
    n_predictions = len(read_records(run_dir / "predictions.jsonl"))
    if results is not None:
        status = "complete"
    elif any((run_dir / n).exists() for n in ("config.json", "predictions.jsonl", "train")):
        status = "partial"
    else:
        status = "empty"
    source = results or {}
    return RunInfo(
        name=f"{setting}/{backend}",
        setting=setting,
        backend=backend,
        kind=source.get("kind") or config.get("kind"),
        status=status,
        n_predictions=n_predictions,
        metrics=source.get("metrics"),
        dataset=source.get("dataset") or split.get("dataset"),
        fingerprint=source.get("fingerprint") or split.get("fingerprint"),
        path=run_dir,
    )


def list_runs(root: Path | None = None) -> list[RunInfo]:
    """Every run folder (`<root>/<setting>/<backend>/`), sorted by name."""
    root = root or paths.runs_dir()
    if not root.is_dir():
        return []
    return [
        _run_info(run_dir, root)
        for setting_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        for run_dir in sorted(p for p in setting_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    ]


# --- external systems (bench score --as-run) -----------------------------------------------------

def _check_run_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith("."):
        raise BenchError(f"--as-run {name!r}: a run name must be a plain folder name (no '/', not starting with '.')")


def record_external_run(
    name: str,
    predictions: dict[str, str],
    references: dict[str, list[str]],
    result_json: dict[str, Any],
    *,
    dataset: str,
    fingerprint: str,
    images: dict[str, str] | None,
    source: str,
    score_s: float = 0.0,
) -> Path:
    """Register captions produced elsewhere as runs/<name>/external/, in the run-folder format."""
    _check_run_name(name)
    missing = [i for i in predictions if i not in references]
    if missing:
        raise BenchError(f"{source}: prediction for image_id {missing[0]!r} has no references")
    run_dir = run_dir_for(name, "external")
    images = images or {}
    scored = normalize_metrics_json(result_json)
    config = {
        "name": name,
        "kind": "external",
        "backend": "external",
        "source": source,
        "data": {"dataset": dataset},
        "fingerprint": fingerprint,
    }
    with exclusive_lock(run_dir):
        clear_run_dir(run_dir)
        atomic_write_json(run_dir / "config.json", config)
        atomic_write_json(
            run_dir / "split.json",
            {
                "dataset": dataset,
                "fingerprint": fingerprint,
                "n": len(predictions),
                "samples": [
                    {"image_id": i, "path": images.get(i), "refs": list(references[i])} for i in predictions
                ],
            },
        )
        atomic_write_text(
            run_dir / "predictions.jsonl",
            "".join(encode_record({"image_id": i, "caption": c}) for i, c in predictions.items()),
        )
        atomic_write_json(run_dir / "metrics.json", scored)
        results = {
            "run": f"{name}/external",
            "setting": name,
            "backend": "external",
            "kind": "external",
            "prompt": None,
            "prompt_text": None,
            "model": source,
            "dataset": dataset,
            "fingerprint": fingerprint,
            "n_images": int(scored.get("n_images") or len(predictions)),
            "metrics": dict(scored["corpus"]),
            "params": None,
            "timings": {"train_s": 0.0, "generate_s": 0.0, "score_s": round(score_s, 3), "images_per_s": 0.0},
            "memory": peak_memory(),
            "versions": library_versions(),
            "git_commit": git_commit(),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config": config,
        }
        atomic_write_json(run_dir / "results.json", results)
    return run_dir
