"""`bench demo`: the whole comparison offline on the built-in synthetic world (see bench.demo)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bench.paths import project_dir


def _interval(metric: dict[str, Any] | None, digits: int = 3) -> str:
    if not metric or metric.get("value") is None:
        return "—"
    text = f"{metric['value']:.{digits}f}"
    if metric.get("lo") is not None and metric.get("hi") is not None:
        text += f" [{metric['lo']:.{digits}f}, {metric['hi']:.{digits}f}]"
    return text


def leaderboard(payload: dict[str, Any]) -> Table:
    """The report's leaderboard, narrowed to what fits an 80-column terminal (all of it is in the
    report): CIDEr with its 95% CI, CLIPScore and BLEU-4; zero-shot rows dimmed."""
    from rich import box

    section = payload["sections"][0]
    table = Table(title=f"{section['dataset']}: {section['n_images']} images, CIDEr with its 95% bootstrap CI",
                  title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("#", justify="right")
    table.add_column("Run", overflow="fold")
    table.add_column("CIDEr [95% CI]", justify="right", no_wrap=True)
    table.add_column("CLIPScore", justify="right")
    table.add_column("BLEU-4", justify="right")
    for k, run in enumerate(section["runs"], start=1):
        m = run["metrics"]
        table.add_row(
            str(k), escape(run["run"]), _interval(m.get("CIDEr")), _interval(m.get("CLIPScore")).split(" [")[0],
            _interval(m.get("BLEU-4")).split(" [")[0], style="dim" if run["kind"] == "zero-shot" else None,
        )
    return table


def demo(
    out: Annotated[Optional[Path], typer.Option("--out", help="Markdown report to write (default reports/demo.md).")] = None,
    fast: Annotated[bool, typer.Option("--fast", help="A smaller, faster demo (shorter pretraining, no METEOR; the test suite runs it).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Rebuild the demo models and recompute every demo run.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
) -> None:
    """Run the whole comparison offline on built-in synthetic data: tiny models, zero-shot vs LoRA, report."""
    from bench.demo import run_demo

    console = Console(highlight=False)
    started = time.perf_counter()
    out = out or project_dir() / "reports" / "demo.md"
    result = run_demo(out, fast=fast, force=force, console=console, progress=progress)
    console.rule("[bold]demo report[/]")
    console.print(leaderboard(json.loads(result.json.read_text(encoding="utf-8"))))
    for note in result.report_result.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
    for line in result.verdict.lines:
        ok = line.split(":", 1)[1].strip().startswith("yes")
        console.print(f"[{'green' if ok else 'yellow'}]{escape(line)}[/]", soft_wrap=True)
    for line in result.verdict.caveats:
        console.print(escape(line), soft_wrap=True)
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in result.timings.items())
    console.print(f"demo finished in {time.perf_counter() - started:.0f} s ({steps})", soft_wrap=True)
    console.print(f"report: {escape(str(result.report))} (every table, the figures and the galleries)", soft_wrap=True)
    console.print(f"explorer: {escape(str(result.report_result.html))} (open it in a browser: every image, every run)",
                  soft_wrap=True)
