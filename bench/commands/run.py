"""`bench run`: train (LoRA backends), caption and score settings, prompts or whole groups.

Every run is planned first (settings, prompt, dataset and backend resolved and validated) so a
bad input stops the command before any run folder is touched; then the runs execute in order.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bench.errors import BenchError

DEVICES = ("auto", "cpu", "cuda", "mps")


# Options of the endpoint backend and of job arrays (bench.backends.served, bench.shards).
EndpointOption = Annotated[str | None, typer.Option(
    "--endpoint", help="With --model: the OpenAI-compatible URL serving it (openai backend), e.g. http://127.0.0.1:8000/v1.")]
KeyEnvOption = Annotated[str | None, typer.Option(
    "--api-key-env", help="With --endpoint: the environment variable holding the endpoint's key.")]
ShardOption = Annotated[str | None, typer.Option(
    "--shard", help="I/N: run only the I-th of N deterministic shares of the planned runs (job arrays).")]


def _check_device(device: str) -> None:
    if device not in DEVICES and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise BenchError(f"--device {device}: must be one of {', '.join(DEVICES)} (or cuda:N)")


def _check_flags(device: str, limit: int | None, workers: int) -> None:
    _check_device(device)
    if limit is not None and limit < 1:
        raise BenchError(f"--limit must be >= 1 (got {limit})")
    if workers < 0:
        raise BenchError(f"--workers must be >= 0 (got {workers})")


def _settings_for(
    setting: str | None, prompt: str | None, group: str | None, models: list[str] | None = None,
    endpoint: str | None = None, api_key_env: str | None = None,
) -> list[Any]:
    """The settings to run, sweeps expanded into one setting per (prompt, model)."""
    from bench.settings import expanded, load_setting, prompt_setting, settings_in_group

    chosen = [name for name, value in (("--setting", setting), ("--prompt", prompt), ("--group", group)) if value]
    if len(chosen) != 1:
        raise BenchError("bench run: give exactly one of --setting NAME, --prompt NAME or --group NAME")
    if models and not prompt:
        raise BenchError("bench run --model: give it with --prompt NAME (a setting names its models itself)")
    if (endpoint or api_key_env) and not models:
        flag = "--endpoint" if endpoint else "--api-key-env"
        raise BenchError(f"bench run {flag}: give it with --prompt NAME --model SERVED_NAME")
    if api_key_env and not endpoint:
        raise BenchError("bench run --api-key-env: give it with --endpoint URL")
    if setting:
        return expanded([load_setting(setting)])
    if prompt:
        if models:
            return [prompt_setting(prompt, model=m, endpoint=endpoint, api_key_env=api_key_env) for m in models]
        return [prompt_setting(prompt)]
    return expanded(settings_in_group(group or ""))


def _with_flags(settings: list[Any], model: list[str] | None, clip_model: str | None, metrics: str | None) -> list[Any]:
    """The settings with the scoring choices of the command line, each value marked with its
    flag (errors about it name the flag)."""
    import dataclasses
    from pathlib import Path

    from bench.scoring import parse_metrics
    from bench.settings.schema import resolve_path_value

    names = parse_metrics(metrics) if metrics is not None else None  # a bad list fails before any work
    out = []
    for s in settings:
        flags, scoring = dict(s.flags), s.scoring
        if model:  # --model fills the vlm backend's model, or the openai backend's with --endpoint
            flags["models.vlm.model"] = flags["models.openai.model"] = "--model"
        if clip_model is not None:
            if not clip_model.strip():
                raise BenchError("--clip-model: give a hub id or a CLIP model folder")
            scoring = dataclasses.replace(scoring, clip_model=resolve_path_value(clip_model, Path.cwd()))
            flags["scoring.clip_model"] = "--clip-model"
        if names is not None:
            scoring = dataclasses.replace(scoring, metrics=names)
            flags["scoring.metrics"] = "--metrics"
        out.append(dataclasses.replace(s, scoring=scoring, flags=flags))
    return out


def _plans(settings: list[Any], backend: str | None, data: str | None, limit: int | None) -> list[Any]:
    from bench.run import plan_run
    from bench.backends.table import backend_table

    if backend is not None and backend not in backend_table():
        raise BenchError(f"--backend {backend}: unknown backend; available: {', '.join(sorted(backend_table()))}")
    splits: dict[Any, Any] = {}
    plans = []
    for s in settings:
        if backend is not None:
            if backend not in s.backends:
                if len(settings) == 1:
                    raise BenchError(f"--backend {backend}: setting {s.name!r} ({s.source}) runs {', '.join(s.backends)}")
                continue  # in a group, --backend picks the settings that run it
            backends = [backend]
        else:
            backends = list(s.backends)
        plans.extend(plan_run(s, b, limit=limit, dataset=data, splits=splits) for b in backends)
    if not plans:
        raise BenchError(f"--backend {backend}: no setting of this group runs it")
    return plans


def _sharded(console: Console, shard: str | None, plan_all: Any) -> list[Any]:
    """Every planned run, or with --shard I/N only the I-th share (bench.shards)."""
    from bench.shards import parse_shard, shard_share

    share = parse_shard(shard) if shard is not None else None  # a bad --shard fails before planning
    plans = plan_all()
    if share is None:
        return plans
    plans = shard_share(plans, *share)
    console.print(f"shard {share[0]}/{share[1]}: {len(plans)} run(s): {', '.join(p.name for p in plans) or 'none'}")
    return plans


def metrics_table(results: dict[str, Any], title: str | None = None) -> Table:
    """One row per metric (pycocoevalcap 0-1 scale; CLIPScore on the paper's 0-2.5 scale)."""
    from bench.scoring.metrics import metric_keys

    metrics = results.get("metrics", {})
    timings = results.get("timings", {})
    table = Table(title=title, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    known = metric_keys()
    keys = [k for k in known if k in metrics] + sorted(k for k in metrics if k not in known)
    for key in keys:
        value = metrics[key]
        table.add_row(key, f"{value:.4f}" if isinstance(value, (int, float)) else escape(str(value)))
    table.add_section()
    table.add_row("images", str(results.get("n_images", "")))
    for key, label in (("train_s", "train s"), ("generate_s", "caption s"), ("score_s", "score s")):
        if isinstance(timings.get(key), (int, float)):
            table.add_row(label, f"{timings[key]:.1f}")
    if timings.get("images_per_s"):
        table.add_row("images/s", f"{timings['images_per_s']:.2f}")
    return table


def _summary(console: Console, results: list[tuple[Any, Any]]) -> None:
    from bench.run import run_label

    table = Table(title="runs", header_style="bold")
    for col in ("run", "status", "images", "CIDEr", "CLIPScore", "BLEU-4", "folder"):
        table.add_column(col, justify="right" if col in ("images", "CIDEr", "CLIPScore", "BLEU-4") else "left")
    for plan, result in results:
        m = result.results.get("metrics", {})
        table.add_row(
            plan.name,
            "cached" if result.cached else "done",
            str(result.results.get("n_images", "")),
            *(f"{m[k]:.4f}" if k in m else "-" for k in ("CIDEr", "CLIPScore", "BLEU-4")),
            run_label(result.run_dir),
        )
    console.print(table)


def _warn_truncated(console: Console, done: list[tuple[Any, Any]]) -> None:
    """Last words of `bench run`: runs whose captions were cut by max_new_tokens (scored as fragments)."""
    for plan, result in done:
        n = int(result.results.get("n_truncated") or 0)
        if n:
            limit = plan.setting.generation.max_new_tokens
            console.print(
                f"[yellow]warning[/]: {escape(plan.name)}: {n} of {result.results.get('n_images')} captions stopped at "
                f"generation.max_new_tokens = {limit} without an end token and were scored as cut; "
                "raise max_new_tokens in the setting"
            )


def run(
    setting: Annotated[
        str | None, typer.Option("--setting", "-s", help="Setting name (settings/NAME.toml) or path to a .toml.")
    ] = None,
    prompt: Annotated[
        str | None, typer.Option("--prompt", "-p", help="Zero-shot LLaVA-1.5 (or each --model) with this prompt (run prompt-NAME).")
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="With --prompt: this hub id or model folder on the vlm backend (run prompt-NAME--MODEL); repeat for several."),
    ] = None,
    endpoint: EndpointOption = None, api_key_env: KeyEnvOption = None, shard: ShardOption = None,
    group: Annotated[str | None, typer.Option("--group", "-g", help="Run every setting of this group, in order.")] = None,
    backend: Annotated[str | None, typer.Option("--backend", "-b", help="Only this backend of the setting.")] = None,
    data: Annotated[str | None, typer.Option("--data", help="Dataset name or .toml path (overrides the setting).")] = None,
    limit: Annotated[int | None, typer.Option("--limit", "-n", help="Caption only the first N validation images.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Recompute even if a finished run exists.")] = False,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or mps.")] = "auto",
    workers: Annotated[int, typer.Option("--workers", help="DataLoader workers decoding images.")] = 2,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
    log_with: Annotated[list[str] | None, typer.Option(
        "--log-with", help="Also log to tensorboard, wandb, mlflow or trackio (repeatable; offline by default).")] = None,
    clip_model: Annotated[str | None, typer.Option(
        "--clip-model", help="CLIP for CLIPScore: hub id or local folder (overrides the setting's scoring.clip_model).")] = None,
    metrics: Annotated[str | None, typer.Option(
        "--metrics", help="Comma-separated subset of bleu,meteor,rouge,cider,clipscore (overrides scoring.metrics).")] = None,
) -> None:
    """Train (LoRA backends), caption the validation split and score it; cached when done."""
    # Long: typer declares each option in the signature; the body reads top to bottom (check, plan, run each).
    from bench.distributed import is_main_process
    from bench.run import ScorerPool, execute_plan, run_label

    # Under `accelerate launch` / torchrun every process runs this; rank 0 alone prints.
    console = Console(highlight=False, quiet=not is_main_process())
    _check_flags(device, limit, workers)
    from bench.tracking import check_trackers

    trackers = check_trackers(log_with or [])  # a missing extra fails before any work
    chosen = _with_flags(_settings_for(setting, prompt, group, model, endpoint, api_key_env), model, clip_model, metrics)
    plans = _sharded(console, shard, lambda: _plans(chosen, backend, data, limit))
    done = []
    with ScorerPool() as scorers:  # CLIP and the METEOR JVM load once for all the runs of this command
        for plan in plans:
            s = plan.setting
            console.rule(f"[bold]{escape(plan.name)}[/]")
            if s.description:
                console.print(f"[dim]{escape(s.description)}[/]")
            result = execute_plan(
                plan, force=force, device=device, progress=progress, num_workers=workers, console=console,
                scorers=scorers, log_with=trackers,
            )
            if result.cached:
                console.print(
                    f"[green]cached[/]: finished {escape(str(result.results.get('created_at', '?')))}; "
                    "use --force to recompute"
                )
            console.print(metrics_table(result.results))
            console.print(f"run folder: {escape(run_label(result.run_dir))}")
            done.append((plan, result))
    if len(done) > 1:
        _summary(console, done)
    _warn_truncated(console, done)
