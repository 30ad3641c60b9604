"""`bench attend`: where each caption token looked, drawn over the image, for any captioned run.

For each chosen image of a run: the run's model is loaded as the run used it (its final LoRA
adapter for LoRA runs), the backend's `generate_with_attention` traces the run's own caption
(teacher-forced over the exact tokens the run's decoding produced, or over the caption re-tokenized
when decoding does not reproduce it), and one PNG is written:

    header   the photo, the run's caption, its per-image CLIPScore, how the maps were aggregated
    panels   one per caption token: the model's input view with the token's attention over the
             patch grid upsampled and overlaid (jet colour map, 0 .. the panel's maximum)

The PNG carries its facts as text chunks (`bench:panels`, `bench:tokens`, `bench:token_ids`,
`bench:grid`, `bench:aggregation`, `bench:source`, `bench:panel_boxes` = pixel boxes of the
panels' image areas), so tools and tests read them back without parsing the picture. Rendering
uses matplotlib's Agg canvas with a fixed size and no version metadata: the same inputs give the
same bytes.

The command (`attend_run`) lives here; `run_folder` reads the run and loads its model, `figure`
aggregates the maps and draws the PNG.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.attend.figure import (
    ALPHA,
    CMAP,
    COLUMNS,
    DPI,
    HEADER_IN,
    HEADS,
    PANEL_IN,
    AttendFigure,
    aggregate,
    check_options,
    describe_aggregation,
    figure_for,
    model_view,
    parse_layer,
    render,
    safe_name,
    upsample,
)
from bench.attend.run_folder import (
    EPOCH_DIR,
    SCORE_KEY,
    RunFolder,
    final_adapter,
    generation_config,
    load_captioner,
    model_config,
    per_image_scores,
    read_run,
    resolve_run,
    run_prompt,
    select_images,
)
from bench.errors import BenchError
from bench.io import exclusive_lock
from bench.run.folder import CONFIG, SPLIT
from bench.run.folder import RunFolder as Folder  # the owner (attend's RunFolder is what it reads)

__all__ = [
    "ALPHA",
    "CMAP",
    "COLUMNS",
    "DPI",
    "EPOCH_DIR",
    "HEADER_IN",
    "HEADS",
    "PANEL_IN",
    "SCORE_KEY",
    "AttendFigure",
    "RunFolder",
    "aggregate",
    "attend_run",
    "check_options",
    "describe_aggregation",
    "figure_for",
    "final_adapter",
    "generation_config",
    "load_captioner",
    "model_config",
    "model_view",
    "parse_layer",
    "per_image_scores",
    "read_run",
    "render",
    "resolve_run",
    "run_prompt",
    "safe_name",
    "select_images",
    "upsample",
]

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
    from bench.run.environment import resolve_device

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
