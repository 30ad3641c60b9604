"""`make bench`: every benchmark in one run, one table, reports/performance.{md,json}.

Sections (each measures its figure side by side with its baseline in this same run):
- captioning.py  batched DataLoader path vs a naive per-image generate loop, per tiny backend;
                 on a GPU also LLaVA-1.5-7B (random weights) in bf16 and 4-bit;
- harness.py     `bench run` end to end vs the bare model script (harness overhead), cache hit;
- scoring.py     bench's scorer vs pycocoevalcap's scorers alone (1,000 images, 5 metrics);
- bootstrap.py   95% CIs of one 1,000-image run with 1,000 resamples;
- compare_scale.py  `bench compare` time and peak RSS at 10 x 1,000, 10 x 5,000, 30 x 5,000 runs x
                 images, and a re-compare after one more run;
- real_architectures.py  each default model's real architecture at full width on CPU (LLaVA-1.5-7B
                 at reduced depth): images/s, CPU seconds per image and peak memory;
- explorer.py    the HTML explorer of 5,000 images x 10 runs in headless Chromium: first render,
                 re-sort, HTML and thumbnail sizes.
- served.py      captioning through an OpenAI-compatible endpoint at concurrency 16 vs 1.

A section whose module declares NEEDS_SHARED_DATA / NEEDS_SHARED_MODELS (paths under
BENCH_SHARED_DATA / BENCH_SHARED_MODELS) is skipped, and named in the report, when one is absent:
a user's clone without ../shared still exits 0. A section that fails for any other reason is
reported as failed (the others still run) and the command exits 1 with a one-line cause.

    python benchmarks/run_all.py [--quick]
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # `benchmarks.*` as a namespace package, whatever the cwd

GPU_PENDING = "GPU figures pending: no GPU on this machine"


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        ram_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        ram_gib = None
    cuda = torch.cuda.is_available()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": ram_gib,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


def missing_shared(name: str) -> str | None:
    """Why section `name` cannot run here ("needs BENCH_SHARED_DATA (PATH not found)"), from its
    module's NEEDS_SHARED_DATA / NEEDS_SHARED_MODELS; None when it can (or has no such module)."""
    from bench.testing.shared import missing_env

    try:
        module = importlib.import_module(f"benchmarks.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"benchmarks.{name}":
            raise  # the module is there but imports something missing: a failure, not a skip
        return None
    return missing_env(getattr(module, "NEEDS_SHARED_DATA", ()), getattr(module, "NEEDS_SHARED_MODELS", ()))


def skipped_sections(r: dict[str, Any]) -> dict[str, str]:
    """Section -> "skipped: needs ...", from the `<name>_skipped` keys `_section` returns."""
    return {k.removesuffix("_skipped"): v for k, v in r.items() if k.endswith("_skipped")}


def _section(name: str, fn: Callable[[], dict[str, Any]], errors: dict[str, str]) -> dict[str, Any]:
    from rich.console import Console

    console = Console(stderr=True)
    if (reason := missing_shared(name)) is not None:
        console.print(f"[yellow]benchmark {name} skipped[/]: {reason}", highlight=False)
        return {f"{name}_skipped": f"skipped: {reason}"}
    console.print(f"[bold]benchmark[/] {name} ...")
    start = time.perf_counter()
    try:
        out = fn()
    except (Exception, SystemExit) as exc:  # one failed section must not lose the others
        errors[name] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        console.print(f"[red]{name} failed[/]: {errors[name]}")
        traceback.print_exc()
        return {}
    console.print(f"  {name}: {time.perf_counter() - start:.0f} s")
    return {**out, f"{name}_section_s": round(time.perf_counter() - start, 1)}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def summary_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(figure, value, how it was measured) for the one table."""
    rows: list[tuple[str, str, str]] = []
    cap = r.get("captioning", {})
    for backend, v in cap.items():
        rows.append((
            f"batched vs naive captioning, {backend}",
            f"{v['speedup']:.1f}x",
            f"{v['images']} Flickr8k images: bench {v['bench_images_per_s']:.1f} img/s (batch "
            f"{r.get('captioning_batch_size')}, {r.get('captioning_workers')} workers) vs per-image "
            f"generate {v['naive_images_per_s']:.1f} img/s; captions identical: {_pct(v['captions_identical_fraction'])}",
        ))
    if "overall" in r.get("batched_vs_naive_speedup", {}):
        rows.append(("batched vs naive captioning, overall", f"{r['batched_vs_naive_speedup']['overall']:.1f}x",
                     "summed seconds over the three tiny backends"))
    if "harness_overhead_fraction" in r:
        rows.append((
            "harness overhead (bench run vs bare model script)",
            _pct(r["harness_overhead_fraction"]),
            f"tiny ViT-GPT2, LoRA 1 epoch + {r['harness_images']} captions: bench run "
            f"{min(r['harness_bench_run_s']):.1f} s minus scoring vs pure script {min(r['harness_pure_s']):.1f} s "
            f"(fastest of {len(r['harness_pure_s'])}; median {_pct(r.get('harness_overhead_fraction_median'))})",
        ))
    if "cache_hit_seconds" in r:
        rows.append(("cache hit (bench run of a finished run)", f"{r['cache_hit_seconds']:.2f} s", "subprocess wall time, second call"))
    if "scoring_vs_pycocoevalcap_ratio" in r:
        rows.append((
            "scoring time / pycocoevalcap alone",
            f"{r['scoring_vs_pycocoevalcap_ratio']:.2f}",
            f"{r['scoring_n_images']} images, BLEU/METEOR/ROUGE-L/CIDEr: {r['scoring_bench_s']:.1f} s vs "
            f"{r['scoring_pycocoevalcap_s']:.1f} s (median of {len(r['scoring_bench_runs_s'])}); max |diff| {r['scoring_max_abs_diff']:.1e}",
        ))
    if "bootstrap_seconds_1000x1000" in r:
        rows.append(("bootstrap CIs, 1,000 images x 1,000 resamples", f"{r['bootstrap_seconds_1000x1000']:.1f} s",
                     f"all metrics of one run; {r.get('speedup_vs_naive', '?')}x the pycocoevalcap loop"))
    rows += _compare_scale_rows(r)
    for name, v in (r.get("real_architectures") or {}).items():
        rows.append((
            f"real architecture on CPU, {name}",
            f"{v['images_per_s']:.3f} img/s, peak {v['peak_rss_mb'] / 1024:.1f} GiB",
            f"{v['model']} ({v['depth']}, {v['parameters'] / 1e6:,.0f} M parameters, random weights): "
            f"{v['images']} Flickr8k images, batch {r.get('real_architectures_batch')}"
            + (f", {v['new_tokens']} new tokens" if "new_tokens" in v else ", CLIPScore + RefCLIPScore")
            + f"; {v['cpu_s_per_image']} CPU s/image, load average {v['load_average_at_start']}",
        ))
    from benchmarks.served import summary_rows as served_rows

    rows += served_rows(r)
    gpu = r.get("llava_7b_gpu") or {}
    if gpu.get("gpu"):
        for row in gpu["rows"]:
            rows.append((
                f"LLaVA-1.5-7B {row['precision']}, batch {row['batch_size']}",
                f"{row['images_per_s']:.2f} img/s",
                f"{gpu['gpu']}: {row['new_tokens']} new tokens, peak {row['peak_memory_gib']} GiB, MFU {_pct(row['mfu'])}",
            ))
    else:
        rows.append(("LLaVA-1.5-7B on GPU (bf16, 4-bit; batch 1, 32)", "pending", gpu.get("reason", GPU_PENDING)))
    if "explorer_first_render_s" in r:
        rows.append((
            f"HTML explorer, {r['explorer_images']:,} images x {r['explorer_runs']} runs",
            f"{r['explorer_first_render_s']:.2f} s first render, {r['explorer_resort_s']:.3f} s re-sort",
            f"headless Chromium from file:// (target < {r['explorer_target_s']:.0f} s each): median of fresh loads / of "
            f"header-click sorts (max {r['explorer_resort_max_s']:.3f} s; difference sort {r['explorer_diff_sort_s']:.3f} s, "
            f"search {r['explorer_search_s']:.3f} s); HTML {r['explorer_html_mb']} MB, {r['explorer_thumbs']:,} "
            f"thumbnails {r['explorer_thumbs_mb']} MB",
        ))
    if "make_bench_seconds" in r:
        rows.append(("make bench, total", f"{r['make_bench_seconds']:.0f} s", "this run, all sections"))
    rows += [(f"section {name}", "skipped", why.removeprefix("skipped: ")) for name, why in skipped_sections(r).items()]
    return rows


def _compare_scale_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    from benchmarks.compare_scale import summary_rows as rows

    return rows(r)


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(x: Any) -> str:
        return str(x).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def real_architectures_md(real: dict[str, Any] | None) -> list[str]:
    """The "Real architectures on CPU" section (benchmarks/real_architectures.py)."""
    if not real:
        return []
    return [
        "## Real architectures on CPU",
        "",
        "Each default model's real architecture at full width (LLaVA-1.5-7B: full width, "
        f"{real.get('llava', {}).get('depth', 'reduced depth')}), built by `bench.testing.real_models` from its real hub "
        "files with random weights, loaded and run through bench in its own process "
        "(benchmarks/real_architectures.py): one batch of Flickr8k images, greedy; with random weights a "
        "caption runs to max_new_tokens unless a random end token stops it (column \"cut\").",
        "",
        _md_table(
            ["model", "parameters", "depth", "images", "new tokens", "cut", "img/s", "CPU s/image", "peak RSS MB",
             "load avg"],
            [[v["model"], f"{v['parameters']:,}", v["depth"], v["images"], v.get("new_tokens", "-"),
              v.get("cut_at_max_new_tokens", "-"),
              v["images_per_s"], v["cpu_s_per_image"], v["peak_rss_mb"], v["load_average_at_start"]]
             for v in real.values()],
        ),
        "",
    ]


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    out = [
        "# bench performance",
        "",
        f"Generated by `make bench` (benchmarks/run_all.py) on {r['created_at']}.",
        "",
        f"**Machine:** {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, {m['os']}, Python {m['python']}, "
        f"torch {m['torch']}, device: {m['device']}. Load average at start: {m['load_average_at_start']} "
        "(the machine is shared; every figure is a ratio of runs made side by side in this one run).",
        "",
        _md_table(["figure", "value", "measured"], [list(x) for x in summary_rows(r)]),
        "",
    ]
    cap = r.get("captioning")
    if cap:
        out += [
            "## Captioning: bench vs a naive loop",
            "",
            f"Tiny random models of each backend, {r['captioning_max_new_tokens']} new tokens greedy, "
            f"{r['captioning_threads']} intra-op thread(s) for both paths. bench: `caption_samples` with batch "
            f"{r['captioning_batch_size']} and {r['captioning_workers']} DataLoader workers decoding images while "
            "the model runs. Naive: decode one image, run the processor, `generate` at batch size 1.",
            "",
            _md_table(
                ["backend", "images", "bench img/s", "naive img/s", "speedup", "captions identical"],
                [[b, v["images"], v["bench_images_per_s"], v["naive_images_per_s"], f"{v['speedup']}x",
                  _pct(v["captions_identical_fraction"])] for b, v in cap.items()],
            ),
            "",
        ]
    if "harness_overhead_fraction" in r:
        st = r["harness_bench_stages_s"]
        out += [
            "## Harness overhead",
            "",
            "`python -m bench run` (fresh process) of a tiny ViT-GPT2 LoRA setting on the 1,000 Flickr8k images "
            "vs `benchmarks/harness.py --pure`, the shortest script doing the same model work with "
            "torch/transformers/peft alone (same imports, model, LoRA, training steps, DataLoader workers, batch "
            "size, captions). Scoring is excluded from both (it is benchmarked against pycocoevalcap below). "
            f"Overhead = (bench - scoring - pure) / (bench - scoring) = {_pct(r['harness_overhead_fraction'])} "
            f"(fastest runs; medians: {_pct(r['harness_overhead_fraction_median'])}).",
            "",
            f"- bench run wall: {r['harness_bench_run_s']} s, of which scoring {r['harness_bench_score_s']} s",
            f"- pure script wall: {r['harness_pure_s']} s",
            f"- bench stages (fastest run): train {st['train_s']} s, captioning {st['generate_s']} s "
            f"(model {st['model_s']} s), scoring {st['score_s']} s",
            f"- both with OMP_NUM_THREADS={r['harness_threads']}: the intra-op thread count `bench run` picks "
            "itself on CPU (cores minus DataLoader workers, at least 1; an explicit OMP_NUM_THREADS wins), so "
            "the figure compares harnesses, not threading.",
            f"- cache hit: {r['cache_hit_runs_s']} s (the same command again on the finished run)",
            "",
        ]
        if r.get("harness_breakdown_s"):
            out += [
                "Stage by stage (fastest run of each side; bench's setup includes its model load of "
                f"{st.get('load_s')} s):",
                "",
                _md_table(
                    ["stage", "bench s", "pure s", "bench - pure s"],
                    [[k, a, b, round(a - b, 2)] for k, (a, b) in r["harness_breakdown_s"].items()],
                ),
                "",
            ]
    out += real_architectures_md(r.get("real_architectures"))
    gpu = r.get("llava_7b_gpu") or {}
    out += ["## GPU: LLaVA-1.5-7B architecture, random weights", ""]
    if gpu.get("gpu"):
        out += [
            f"{gpu['gpu']} (dense bf16 peak {gpu['bf16_peak_tflops']} TFLOP/s); {gpu['parameters']:,} parameters "
            f"(built from the llava-1.5-7b-hf config, nothing downloaded); exactly {gpu['new_tokens']} new tokens.",
            "",
            _md_table(
                ["precision", "batch", "img/s", "peak GiB", "TFLOPs/image", "MFU"],
                [[x["precision"], x["batch_size"], x["images_per_s"], x["peak_memory_gib"], x["tflops_per_image"],
                  _pct(x["mfu"])] for x in gpu["rows"]],
            ),
            "",
        ]
    else:
        out += [
            f"{gpu.get('reason', GPU_PENDING)}. The section (benchmarks/captioning.py `run_gpu`) builds "
            "LLaVA-1.5-7B from its config (7,063,427,072 parameters, checked in tests/test_device.py), loads it "
            "through bench's LLaVA backend in bf16 and 4-bit NF4, and reports images/s, peak memory and MFU at "
            "batch 1 and 32 with 32 new tokens; its CPU code path is tested on the tiny LLaVA.",
            "",
        ]
    if skipped_sections(r):
        out += ["## Skipped sections", ""] + [f"- {k}: {v}" for k, v in skipped_sections(r).items()] + [""]
    if r.get("errors"):
        out += ["## Failed sections", ""] + [f"- {k}: {v}" for k, v in r["errors"].items()] + [""]
    return "\n".join(out)


def failure_line(errors: dict[str, str]) -> str | None:
    """The one line `make bench` exits with when a section failed (None when none did)."""
    if not errors:
        return None
    causes = "; ".join(f"{name}: {cause}" for name, cause in errors.items())
    return f"make bench: {len(errors)} section(s) failed: {causes}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and repeats (a smoke run, not for the report)")
    parser.add_argument("--out", type=Path, default=None, help="folder for performance.md/.json (default reports/)")
    args = parser.parse_args()
    if args.out is None:  # a smoke run never overwrites the real report
        args.out = Path(tempfile.mkdtemp(prefix="bench-perf-quick-")) if args.quick else REPO / "reports"

    from rich.console import Console
    from rich.table import Table

    from bench.io import atomic_write_json, atomic_write_text
    from benchmarks import bootstrap, captioning, compare_scale, explorer, harness, real_architectures, scoring, served

    start = time.perf_counter()
    results: dict[str, Any] = {"created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine()}
    errors: dict[str, str] = {}
    images = {"vit-gpt2": 100, "clip-flan-t5": 20, "llava": 20} if args.quick else None
    results.update(_section("captioning", lambda: captioning.run(images), errors))
    results.update(_section("harness", lambda: harness.run(1 if args.quick else 3, 100 if args.quick else 1000), errors))
    results.update(_section("scoring", lambda: scoring.run(1 if args.quick else 2), errors))
    results.update(_section("bootstrap", lambda: bootstrap.run(), errors))
    results.update(_section("compare_scale", lambda: compare_scale.run(compare_scale.QUICK if args.quick else compare_scale.SIZES), errors))
    real_models = ("vit-gpt2", "clipscore") if args.quick else real_architectures.MODELS
    results.update(_section("real_architectures", lambda: real_architectures.run(real_models), errors))
    results.update(_section("explorer", lambda: explorer.run(500 if args.quick else 5000, 10, 1 if args.quick else 3), errors))
    results.update(_section("served", lambda: served.run(8 if args.quick else served.IMAGES, gpu=not args.quick), errors))
    results["make_bench_seconds"] = round(time.perf_counter() - start, 1)
    results["quick"] = bool(args.quick)
    results["errors"] = errors
    results["skipped"] = skipped_sections(results)

    table = Table(title=f"bench performance on {results['machine']['cpu']} ({results['machine']['cores']} cores, {results['machine']['device']})")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("measured", overflow="fold")
    for row in summary_rows(results):
        table.add_row(*row)
    Console().print(table)

    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "performance.json", results)
    atomic_write_text(args.out / "performance.md", markdown(results))
    print(f"wrote {args.out / 'performance.md'} and {args.out / 'performance.json'}")
    if (line := failure_line(errors)) is not None:
        sys.exit(line)  # printed on stderr, exit status 1


if __name__ == "__main__":
    main()
