"""Executing one planned run: train (LoRA backends), caption, score, in that order.

    execute_plan
      lock the folder; a finished run with this config is a cache hit (no torch imported)
      load_and_train   the backend's model, plus its LoRA adapter trained (or resumed)
      caption          the images still missing from predictions.jsonl, batch by batch
      score_and_record metrics.json, then results.json last (it marks the run complete)

In a multi-process launch (`bench.distributed`) every rank calls `execute_plan`: rank 0 holds the
lock, writes the folder and scores; all ranks train (DDP) and caption their shard.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.distributed import Dist, detect
from bench.errors import BenchError
from bench.io import exclusive_lock
from bench.device import resolve_device
from bench.run.environment import cpu_threads, free_memory, reset_peak_memory
from bench.run.folder import CaptionRecord, MetricsRecord, RunFolder, StageState, TrainRecord
from bench.run.plan import RunPlan, run_label
from bench.run.registry import cached_results, remove_stale_temps, start_run
from bench.run.results import RunResult, build_results
from bench.scoring.pool import ScorerPool


@dataclass
class RunContext:
    """One run being executed: its plan, where it runs, and the stages finished so far."""

    plan: RunPlan
    device: Any
    console: Any
    progress: bool
    num_workers: int
    dist: Dist
    state: StageState  # run_state.json: figures of the finished stages
    trackers: Any = None  # bench.tracking.Trackers of a --log-with run (rank 0), else None

    def say(self, message: str) -> None:
        if self.console is not None:
            self.console.print(message, highlight=False)

    def save_state(self) -> None:
        self.dist.on_main(lambda: RunFolder(self.plan.run_dir).write_state(self.state))


def escape(text: str) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(text)


@contextmanager
def blame(source: str) -> Iterator[None]:
    """Prefix a model/LoRA error with the setting file that chose the model and the targets."""
    try:
        yield
    except BenchError as exc:
        if str(exc).startswith(source):
            raise
        raise BenchError(f"{source}: {exc}", exit_code=exc.exit_code) from exc


def check_models_available(plan: RunPlan) -> None:
    """Every model the run will load must be there (a folder, cached, or a reachable hub) before
    anything starts: an offline machine gets its one-line error in seconds, and a missing CLIP
    is not found only after an hour of training."""
    from bench.model_source import check_available

    setting = plan.setting
    model_cfg = setting.models[plan.backend]
    wanted = [(f"{plan.backend} model", model_cfg.model, f"models.{plan.backend}.model")]
    vision = model_cfg.options.get("vision_model")
    if isinstance(vision, str) and vision.strip():
        wanted.append((f"{plan.backend} vision_model", vision, f"models.{plan.backend}.options.vision_model"))
    if "clipscore" in setting.scoring.metrics:
        wanted.append(("CLIP model", setting.scoring.clip_model, "scoring.clip_model"))
    if model_cfg.base_url:  # an endpoint's model id, not a file: its backend asks the endpoint
        wanted = wanted[1:]
    for what, model, field in wanted:
        flag = setting.flags.get(field)  # a value from the command line: the error names the flag
        with blame(flag or setting.source):
            if model:
                check_available(model, what, flag or field)


# --- the stages ---------------------------------------------------------------------------------------

def load_and_train(run: RunContext) -> Any:
    """The backend's captioner; for LoRA backends with its adapter trained (resumed if killed)."""
    import torch

    from bench.backends import backend_class

    plan, setting = run.plan, run.plan.setting
    model_cfg = setting.models[plan.backend]
    run.say(f"loading {plan.backend} model [bold]{escape(model_cfg.model)}[/] on {run.device}")
    started = time.perf_counter()
    torch.manual_seed(setting.seed)  # LoRA init is random: seed it so a run is reproducible
    with blame(setting.flags.get(f"models.{plan.backend}.model", setting.source)):
        # A VLM about to be LoRA-trained loads for it (QLoRA keeps its vision tower unquantized).
        captioner = backend_class(plan.backend).load(model_cfg, run.device, prompt=plan.prompt, for_lora=setting.vlm_lora)
        if plan.kind == "lora":
            captioner.add_lora(setting.lora)
    # Model loading (imports included) summed over sessions: `make bench` breaks the run down by it.
    run.state.load_s += time.perf_counter() - started
    if plan.kind != "lora":
        resolved = captioner.resolved_options()
        if resolved is not None:  # family, prompt rule and image mode, for results.json and the report
            run.state.model = resolved
            run.save_state()
        return captioner
    from bench import training

    # Every reference of each of the first `train_size` training images.
    pairs = training.training_pairs(plan.split.train, setting.train.train_size)
    run.say(f"training LoRA r={setting.lora.r} for {setting.train.epochs} epoch(s) on {len(pairs)} pairs")
    result = training.train(
        captioner, pairs, setting.train, RunFolder(plan.run_dir).member("train"), setting.seed, run.device,
        progress=run.progress, num_workers=run.num_workers, dist=run.dist, trackers=run.trackers,
    )
    if run.state.train is None:  # a resumed run keeps the first record
        run.state.train = TrainRecord(
            epochs_done=int(result.epochs_done),
            steps=int(result.steps),
            final_loss=float(result.final_loss) if result.final_loss is not None else None,
            train_s=float(result.train_s),
            trainable=int(result.trainable),
            total=int(result.total),
            n_pairs=len(pairs),
        )
        run.save_state()
    return captioner


def _generation_autocast(plan: RunPlan, device: Any) -> Any:
    """bf16 autocast for the fp32 LoRA captioners on GPUs (the dtype training used); None on CPU.

    LLaVA is loaded in bf16/fp16 already (bench.backends.llava.pick_dtype).
    """
    if plan.kind != "lora" or getattr(device, "type", "cpu") != "cuda":
        return None
    from bench.training import autocast_dtype

    return autocast_dtype(plan.setting.train.precision, device)


def _caption_state(previous: CaptionRecord | None, stats: Sequence[Any]) -> CaptionRecord:
    """Captioning figures summed over sessions; over the ranks of one session, the slowest rank's
    seconds (they ran side by side) and every rank's images."""
    previous = previous or CaptionRecord()
    return CaptionRecord(
        generate_s=float(previous.generate_s) + max(s.wall_s for s in stats),
        model_s=float(previous.model_s) + max(s.generate_s for s in stats),
        n_captioned=int(previous.n_captioned) + sum(s.n_captioned for s in stats),
        # Each image is captioned once over all sessions and ranks, so its flags simply add up.
        n_truncated=int(previous.n_truncated) + sum(s.n_truncated for s in stats),
    )


def caption_via_endpoint(run: RunContext, captioner: Any, missing: int) -> None:
    """An endpoint backend's own loop (bench.served.stream); images still failing after its
    retries end the run with their ids, uncaptioned and unscored, for a re-run to retry."""
    from bench.served.records import served_path, summary

    plan = run.plan
    model_cfg = plan.setting.models[plan.backend]
    run.say(f"captioning {missing} of {len(plan.samples)} images through {escape(model_cfg.base_url)}")
    outcome = captioner.caption_run(plan.samples, plan.setting.generation, plan.setting.seed, plan.run_dir,
                                    progress=run.progress, console=run.console)
    run.state.caption = _caption_state(run.state.caption, [outcome.stats])
    endpoint = captioner.endpoint_for(plan.setting.generation, plan.setting.seed)
    run.state.served = {
        "base_url": endpoint.client.base_url, "model": endpoint.model, "api_key_env": model_cfg.api_key_env or None,
        "decoding": endpoint.decoding(), **summary(served_path(plan.run_dir), [s.image_id for s in plan.samples]),
    }
    run.save_state()
    if outcome.failed:
        shown = "; ".join(f"{i} ({why})" for i, why in list(outcome.failed.items())[:3])
        more = f"; and {len(outcome.failed) - 3} more (served.jsonl)" if len(outcome.failed) > 3 else ""
        raise BenchError(
            f"{run_label(plan.run_dir)}: {len(outcome.failed)} of {len(plan.samples)} images failed after retries "
            f"and were not scored: {shown}{more}; run the same command again to retry only those"
        )


def caption(run: RunContext, captioner: Any, missing: int) -> None:
    """Caption the images missing from predictions.jsonl (each rank its shard)."""
    from bench import captioning  # looked up at call time: the fault tests wrap caption_samples

    plan = run.plan
    if hasattr(captioner, "caption_run"):  # the model is behind an endpoint (bench.backends.served)
        return caption_via_endpoint(run, captioner, missing)
    captioner.torch_module().eval()
    where = f" on {run.dist.world_size} processes" if run.dist.enabled else ""
    run.say(f"captioning {missing} of {len(plan.samples)} images (batch {plan.setting.generation.batch_size}){where}")
    stats = captioning.caption_samples(
        captioner, plan.samples, plan.setting.generation, RunFolder(plan.run_dir).predictions, run.num_workers,
        progress=run.progress, console=run.console, dist=run.dist,
        amp_dtype=_generation_autocast(plan, run.device),
    )
    run.state.caption = _caption_state(run.state.caption, run.dist.gather(stats))
    run.save_state()


def _missing_captions(plan: RunPlan) -> int:
    """Images still to caption, after folding in the shards of an interrupted multi-process run."""
    from bench.predictions_file import merge_shards

    return len(plan.samples) - len(merge_shards(RunFolder(plan.run_dir).predictions, plan.samples))


def train_and_caption(run: RunContext) -> None:
    missing = run.dist.on_main(lambda: _missing_captions(run.plan))
    untrained = run.plan.kind == "lora" and run.state.train is None
    if not (missing or untrained):
        return
    # Workers decode images while the model runs: leave them their cores (CPU only).
    with cpu_threads(run.device, run.num_workers, run.dist.world_size):
        captioner = load_and_train(run)
        caption(run, captioner, missing)
    del captioner
    free_memory(run.device)


def score(run: RunContext, predictions: dict[str, str], scorers: ScorerPool | None = None) -> tuple[MetricsRecord, float]:
    plan, sc = run.plan, run.plan.setting.scoring
    run.say(f"scoring {len(predictions)} captions ({', '.join(sc.metrics)}; CLIP {escape(sc.clip_model)})")
    start = time.perf_counter()
    with ExitStack() as stack:
        if scorers is None:  # a pool for this run alone
            scorers = stack.enter_context(ScorerPool())
        # CLIPScore on the run's device (cuda:<local rank> in a multi-process run).
        scorer = scorers.get(sc.metrics, sc.clip_model, str(run.device), sc.clip_batch_size)
        result = scorer.score(
            predictions,
            {s.image_id: list(s.refs) for s in plan.samples},
            {s.image_id: Path(s.path) for s in plan.samples},
            progress=run.progress,
        )
    return MetricsRecord.of(result), time.perf_counter() - start


def score_and_record(run: RunContext, scorers: ScorerPool | None) -> dict[str, Any]:
    """metrics.json, then results.json: written last, it marks the run complete (rank 0 only)."""
    from bench.predictions_file import existing_predictions

    folder = RunFolder(run.plan.run_dir)
    predictions = existing_predictions(folder.predictions, run.plan.samples)
    scored, score_s = score(run, predictions, scorers)
    folder.write_metrics(scored)
    processes = run.dist.world_size if run.dist.enabled else None
    results = build_results(run.plan, scored, run.state, score_s, run.device, processes)
    folder.write_results(results)
    return results.to_json()


# --- one run, start to finish -----------------------------------------------------------------------

def _joined_device(dist: Dist, device: str) -> Any:
    """In a multi-process run, this rank's device, with the process group joined (it must exist
    before the first collective); None for a single process (resolved after the cache check)."""
    if not dist.enabled:
        return None
    dev = dist.device(resolve_device(device))
    dist.init(dev)
    return dev


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
    log_with: Sequence[str] = (),
) -> RunResult:
    """Train (LoRA), caption and score one run, or answer from its finished results."""
    dist = detect() if dist is None else dist
    if not dist.is_main:  # rank 0 speaks for the run
        console, progress = None, False
    dev = _joined_device(dist, device)
    with ExitStack() as stack:
        dist.on_main(lambda: stack.enter_context(exclusive_lock(plan.run_dir)))
        dist.on_main(lambda: remove_stale_temps(plan.run_dir))
        cached = dist.on_main(lambda: cached_results(plan, force))
        if cached is not None:
            return RunResult(run_dir=plan.run_dir, results=cached, cached=True)
        dist.on_main(lambda: check_models_available(plan))
        state = dist.on_main(lambda: start_run(plan, force))
        # Heavy imports only from here on: the cache-hit path above stays torch-free.
        run = RunContext(plan, dev if dev is not None else resolve_device(device), console, progress,
                         num_workers, dist, state)
        reset_peak_memory(run.device)  # this run's peak, not the previous run's of this process
        if log_with and dist.is_main:  # --log-with: rank 0 logs (bench.tracking)
            from bench.tracking import Trackers

            run.trackers = Trackers.start(plan.run_dir, plan.config, log_with, name=plan.name)
            stack.callback(run.trackers.finish)
        train_and_caption(run)
        results = dist.on_main(lambda: score_and_record(run, scorers))
        if run.trackers is not None:
            from bench.tracking import run_outputs

            run.trackers.log_results(*run_outputs(plan.run_dir, plan.samples))
        return RunResult(run_dir=plan.run_dir, results=results, cached=False)


def execute_run(
    setting: Any,
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
    from bench.run.plan import plan_run

    plan = plan_run(setting, backend, limit=limit, dataset=dataset)
    return execute_plan(
        plan, force=force, device=device, progress=progress, num_workers=num_workers, console=console, scorers=scorers
    )
