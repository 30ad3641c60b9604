"""`bench attend` itself: the run's chosen images traced and drawn, one PNG each (see bench.attend)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.attend.figure import HEADS, AttendFigure, figure_for, model_view, parse_layer, safe_name
from bench.attend.run_folder import generation_config, load_captioner, read_run, select_images
from bench.errors import BenchError
from bench.io import exclusive_lock
from bench.run.folder import CONFIG, SPLIT
from bench.run.folder import RunFolder as Folder  # the owner (attend's RunFolder is what it reads)


def attend_run(
    folder: Path,
    *,
    images: str | None = None,
    top: int | None = None,
    bottom: int | None = None,
    layer: str = "all",
    heads: str = "mean",
    out: Path | None = None,
    device: str = "auto",
    on_start: Callable[[int], None] | None = None,
    on_image: Callable[[AttendFigure], None] | None = None,
    console: Any = None,
) -> list[AttendFigure]:
    """Write one attention PNG per chosen image of the run in `folder`; returns what was drawn."""
    from bench.data.types import Sample
    from bench.device import resolve_device

    layer_index = parse_layer(layer)
    if heads not in HEADS:
        raise BenchError(f"--heads {heads}: must be one of {', '.join(HEADS)}")
    if not Folder(Path(folder)).has(CONFIG):
        raise BenchError(f"{folder}: not a run folder (no config.json)")
    dev = resolve_device(device)
    figures: list[AttendFigure] = []
    # The lock keeps `bench run` (--force) from rewriting the run while it is read; a run still
    # being computed is a one-line "in use" error.
    with exclusive_lock(folder):
        run = read_run(folder)
        picked = select_images(run, images, top, bottom)
        for image_id, _ in picked:
            if not run.image_paths[image_id].is_file():
                raise BenchError(f"{Folder(run.path).member(SPLIT)}: image file {run.image_paths[image_id]} of image id {image_id!r} not found")
        gen = generation_config(run)
        out_dir = Path(out) if out is not None else Folder(run.path).member("attend")
        if console is not None:
            console.print(f"loading {run.backend} model of run [bold]{run.label}[/] on {dev}", highlight=False)
        captioner = load_captioner(run, dev)
        collate = captioner.caption_collate()
        if on_start is not None:
            on_start(len(picked))
        for image_id, score in picked:
            batch = collate([Sample(image_id, run.image_paths[image_id], ())])
            batch["captions"] = [run.captions[image_id]]
            trace = captioner.generate_with_attention(batch, gen)[0]
            pixel_values = batch.get("pixel_values")
            view = model_view(captioner, pixel_values[0] if pixel_values is not None else None)
            figure = figure_for(run, image_id, score, trace, view, gen, layer_index, heads, out_dir / f"{safe_name(image_id)}.png")
            figures.append(figure)
            if on_image is not None:
                on_image(figure)
    return figures
