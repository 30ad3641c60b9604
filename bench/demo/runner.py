"""`bench demo` step by step: datasets, models, the demo group's runs through bench.run, the report."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.config import Setting
from bench.demo.models import ensure_models
from bench.demo.profile import (
    CLIP_NAME,
    DEMO_GROUP,
    FAST,
    FULL,
    MANIFEST,
    SOURCE_DATASET,
    TARGET_DATASET,
    Profile,
    demo_threads,
    demo_workers,
    display_path,
    for_profile,
    models_root,
    say,
)
from bench.demo.report import make_report
from bench.demo.verdict import Verdict
from bench.errors import BenchError


@dataclass(frozen=True)
class DemoResult:
    report: Path
    json: Path
    verdict: Verdict
    runs: tuple[str, ...]
    timings: dict[str, float]  # seconds per step
    report_result: Any  # bench.report.ReportResult


def demo_settings(profile: Profile) -> list[Setting]:
    from bench.settings import settings_in_group

    settings = [for_profile(s, profile) for s in settings_in_group(DEMO_GROUP)]
    for s in settings:
        if s.data.dataset != TARGET_DATASET:
            raise BenchError(f"{s.source}: data.dataset must be {TARGET_DATASET!r} for a demo setting, got {s.data.dataset!r}")
    return settings


def _stale(plan: Any, model_dirs: Sequence[Path]) -> str | None:
    """Why a finished demo run must be recomputed: a different config in its folder (e.g. a --fast
    demo ran there before), or a model it used rebuilt after it finished."""
    from bench.run import RunFolder, config_diff
    from bench.run.folder import CONFIG, RESULTS

    folder = RunFolder(plan.run_dir)
    if folder.complete:
        results = folder.read_results()
        if config_diff(results.config, plan.config) or results.fingerprint != plan.split.fingerprint:
            return "it holds a run of another demo configuration"
        finished = folder.member(RESULTS).stat().st_mtime
        for folder in model_dirs:
            manifest = folder / MANIFEST
            if manifest.is_file() and manifest.stat().st_mtime > finished:
                return f"its model {folder.name} was rebuilt since"
        return None
    if folder.has(CONFIG) and config_diff(folder.read_config(), plan.config):
        return "it holds a partial run of another demo configuration"
    return None


def run_demo_settings(profile: Profile, *, force: bool = False, console: Any = None, progress: bool = True) -> list[Any]:
    """Every (setting, backend) of the demo group through bench.run, sharing one scorer pool."""
    from bench.run import ScorerPool, execute_plan, plan_run

    plans = []
    splits: dict[Any, Any] = {}
    for setting in demo_settings(profile):
        plans += [plan_run(setting, b, limit=profile.val_limit, splits=splits) for b in setting.backends]
    root = models_root(profile)
    results = []
    with ScorerPool() as scorers:
        for k, plan in enumerate(plans, start=1):
            if console is not None:
                from rich.markup import escape

                console.rule(f"[bold]run {k}/{len(plans)}: {escape(plan.name)}[/]")
            deps = [root / plan.backend, root / CLIP_NAME]
            why = None if force else _stale(plan, deps)
            if why:
                say(console, f"recomputing {plan.name}: {why}")
            result = execute_plan(
                plan, force=force or why is not None, device="cpu", progress=progress,
                num_workers=demo_workers(), console=console, scorers=scorers,
            )
            m = result.results.get("metrics", {})
            state = "cached" if result.cached else "done"
            say(console, f"{state}: CIDEr {m.get('CIDEr', float('nan')):.3f}, CLIPScore {m.get('CLIPScore', float('nan')):.3f}")
            results.append(result)
    return results


def _quiet_transformers() -> Any:
    """No per-file "Loading weights" / "Writing model shards" bars and warnings from transformers
    while the demo saves and loads its tiny models dozens of times (restored afterwards)."""
    from bench.model_source import quiet_transformers

    return quiet_transformers()


def run_demo(out: Path, *, fast: bool = False, force: bool = False, console: Any = None, progress: bool = True) -> DemoResult:
    """The whole demo (see module doc); returns the report paths and the verdict."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(demo_threads())
    try:
        with _quiet_transformers():
            return _run_demo(out, FAST if fast else FULL, force, console, progress)
    finally:
        torch.set_num_threads(threads)


def _run_demo(out: Path, profile: Profile, force: bool, console: Any, progress: bool) -> DemoResult:
    from bench.data import load_dataset, make_split

    timings: dict[str, float] = {}

    def step(title: str) -> float:
        if console is not None:
            console.rule(f"[bold cyan]{title}[/]")
        return time.perf_counter()

    t = step(f"1/4 synthetic datasets ({TARGET_DATASET}, {SOURCE_DATASET})")
    target = make_split(load_dataset(TARGET_DATASET, progress=progress))
    source = make_split(load_dataset(SOURCE_DATASET, progress=progress))
    say(console, f"{TARGET_DATASET}: {len(target.train)} train / {len(target.val)} val images; "
                  f"{SOURCE_DATASET}: {len(source.train)} train images")
    timings["datasets"] = time.perf_counter() - t

    t = step(f"2/4 demo models ({display_path(models_root(profile))})")
    ensure_models(profile, source, target, force=force, console=console, progress=progress)
    timings["models"] = time.perf_counter() - t

    t = step(f"3/4 runs of group {DEMO_GROUP!r}")
    results = run_demo_settings(profile, force=force, console=console, progress=progress)
    timings["runs"] = time.perf_counter() - t

    t = step("4/4 report")
    report, json_out, verdict = make_report(out, profile, console=console, progress=progress)
    timings["report"] = time.perf_counter() - t
    return DemoResult(out, json_out, verdict, tuple(r.name for r in results), timings, report)
