"""`bench attend`: word-by-word attention maps over the image for a captioned run (see bench.attend)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape


def attend(
    run: Annotated[Optional[str], typer.Option("--run", help="Run name SETTING/BACKEND (or a run folder).")] = None,
    setting: Annotated[Optional[str], typer.Option("--setting", help="Setting name (with --backend) instead of --run.")] = None,
    backend: Annotated[Optional[str], typer.Option("--backend", help="Backend of the run (with --setting).")] = None,
    images: Annotated[Optional[str], typer.Option("--images", help="Image ids, comma-separated.")] = None,
    top: Annotated[Optional[int], typer.Option("--top", help="The K images with the run's highest per-image CLIPScore.")] = None,
    bottom: Annotated[Optional[int], typer.Option("--bottom", help="The K images with the run's lowest per-image CLIPScore.")] = None,
    layer: Annotated[str, typer.Option("--layer", help="Layer index (0-based, -1 = last) or 'all' (mean over layers).")] = "all",
    heads: Annotated[str, typer.Option("--heads", help="Aggregate the heads of a layer by 'mean' or 'max'.")] = "mean",
    out: Annotated[Optional[Path], typer.Option("--out", help="Folder for the PNGs (default runs/<run>/attend/).")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or mps.")] = "auto",
) -> None:
    """Draw where each caption token attended over the image: one PNG per image, one panel per token.

    The run's model (with its final LoRA adapter) re-reads the run's own caption with eager
    attention; each panel is one token's attention over the image patches, aggregated over heads
    (--heads) and layers (--layer) as the figure states.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from bench.attend import attend_run, resolve_run

    console = Console()
    folder = resolve_run(run, setting, backend)
    err = Console(stderr=True)
    with Progress(TextColumn("attention maps"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as bar:
        task = bar.add_task("attend", total=None)
        figures = attend_run(
            folder, images=images, top=top, bottom=bottom, layer=layer, heads=heads, out=out, device=device,
            on_start=lambda n: bar.update(task, total=n),
            on_image=lambda _figure: bar.advance(task),
            console=console,
        )
    for f in figures:
        score = f", CLIPScore {f.score:.4f}" if f.score is not None else ""
        console.print(f"wrote {escape(str(f.path))} ({f.n_panels} panels{score}): {escape(f.caption)}",
                      highlight=False, soft_wrap=True)


