"""One attention figure: the maps aggregated over heads and layers, drawn over the image as one PNG."""

from __future__ import annotations

import io
import json
import re
import textwrap
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.attend.run_folder import SCORE_KEY, RunFolder
from bench.config import GenerationConfig
from bench.errors import BenchError
from bench.io import atomic_write_bytes

HEADS = ("mean", "max")
DPI = 100
COLUMNS = 6
PANEL_IN = 2.0  # panel width; a panel row is PANEL_IN + room for the token label
HEADER_IN = 2.8
ALPHA = 0.5
CMAP = "jet"


def parse_layer(value: str) -> int | None:
    """`--layer`: "all" (None) or an integer index (negative counts from the last layer)."""
    if value.strip().lower() == "all":
        return None
    try:
        return int(value)
    except ValueError:
        raise BenchError(f"--layer {value}: must be 'all' or a layer index such as 0 or -1") from None


def check_options(layer: int | None, heads: str, n_layers: int) -> int | None:
    """The layer index made non-negative, checked against the model's layer count."""
    if heads not in HEADS:
        raise BenchError(f"--heads {heads}: must be one of {', '.join(HEADS)}")
    if layer is None:
        return None
    if not -n_layers <= layer < n_layers:
        raise BenchError(f"--layer {layer}: the model has {n_layers} layers (0..{n_layers - 1}, or -1 for the last)")
    return layer % n_layers


def aggregate(maps: Any, layer: int | None, heads: str) -> np.ndarray:
    """(heads, layers, patches) -> (patches,): over heads (mean or max) in each layer, then the
    mean over all layers or the one chosen layer."""
    m = maps.float()
    if layer is not None:
        m = m[:, layer : layer + 1]
    per_layer = m.mean(dim=0) if heads == "mean" else m.amax(dim=0)
    return per_layer.mean(dim=0).numpy()


def describe_aggregation(layer: int | None, heads: str, n_heads: int, n_layers: int, grid: tuple[int, int]) -> str:
    over_heads = f"{heads} over the {n_heads} heads"
    over_layers = f"then mean over all {n_layers} layers" if layer is None else f"in layer {layer} of 0..{n_layers - 1}"
    return (
        f"{over_heads}, {over_layers}; each map of one head sums to 1 over the {grid[0]}x{grid[1]} patches "
        f"before aggregation; colours per panel from 0 to the panel's maximum"
    )


@dataclass(frozen=True)
class AttendFigure:
    image_id: str
    path: Path
    caption: str
    tokens: tuple[str, ...]
    n_panels: int
    grid: tuple[int, int]
    aggregation: str
    source: str  # "generated" (the decoding's own tokens) or "retokenized"
    heat: np.ndarray  # (n_panels, grid_h, grid_w): aggregated maps before upsampling
    panel_boxes: tuple[tuple[int, int, int, int], ...]  # (x0, y0, x1, y1) pixels of each panel's image
    size: tuple[int, int]  # (width, height) pixels
    score: float | None


def safe_name(image_id: str) -> str:
    """A file name for an image id (path separators and odd characters replaced)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", image_id).strip(".") or "image"
    return name[:120]


def model_view(captioner: Any, pixel_values: Any) -> np.ndarray | None:
    """The image as the model saw it (H, W, 3 in 0..1): pixel values with the normalisation undone."""
    processor = captioner.processor
    stats = getattr(processor, "image_processor", processor)
    mean, std = getattr(stats, "image_mean", None), getattr(stats, "image_std", None)
    if pixel_values is None or mean is None or std is None or getattr(pixel_values, "ndim", 0) != 3:
        return None
    x = pixel_values.detach().float().cpu().numpy()
    x = x * np.asarray(std, dtype=np.float32)[:, None, None] + np.asarray(mean, dtype=np.float32)[:, None, None]
    return np.clip(x.transpose(1, 2, 0), 0.0, 1.0)


def upsample(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(gh, gw) -> (H, W) bilinear (patch centres keep their values)."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(heat, dtype=np.float32))[None, None]
    return torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def _wrap(text: str, width: int, max_lines: int) -> str:
    lines = textwrap.wrap(text, width, break_long_words=True, break_on_hyphens=False) or [""]
    if len(lines) > max_lines:
        lines = lines[: max_lines - 1] + [lines[max_lines - 1][: width - 1] + "…"]
    return "\n".join(lines)


def render(
    *,
    photo: np.ndarray,
    view: np.ndarray,
    heat: np.ndarray,
    tokens: Sequence[str],
    header: Sequence[str],
    caption: str,
    metadata: dict[str, str],
) -> tuple[bytes, tuple[tuple[int, int, int, int], ...], tuple[int, int]]:
    """PNG bytes, the panels' image boxes in pixels and the size: photo + text, one panel per token."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = max(1, -(-len(tokens) // COLUMNS))
    width_in = COLUMNS * PANEL_IN
    height_in = HEADER_IN + rows * (PANEL_IN + 0.35)
    fig = Figure(figsize=(width_in, height_in), dpi=DPI)
    canvas = FigureCanvasAgg(fig)
    _draw_header(fig, photo, header, caption, len(tokens), height_in)
    axes = _draw_panels(fig, view, heat, tokens, height_in)

    canvas.draw()
    h, w = view.shape[:2]
    fig_h = int(round(height_in * DPI))
    boxes = []
    for ax in axes:
        (x0, y0), (x1, y1) = ax.transData.transform([(0, h), (w, 0)])  # display coords, origin bottom-left
        boxes.append((int(round(x0)), int(round(fig_h - y1)), int(round(x1)), int(round(fig_h - y0))))
    meta = {**metadata, "bench:panel_boxes": json.dumps(boxes), "Software": None}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # glyphs missing from DejaVu Sans draw as boxes
        canvas.print_png(buf, metadata=meta)
    return buf.getvalue(), tuple(boxes), (int(round(width_in * DPI)), fig_h)


def _draw_header(fig: Any, photo: np.ndarray, header: Sequence[str], caption: str, n: int, height_in: float) -> None:
    """The photo on the left, the title, the header lines and the caption beside it."""
    from bench.report.markdown import plain

    top = 1.0 - HEADER_IN / height_in
    ax_photo = fig.add_axes((0.01, top + 0.1 / height_in, 0.22, (HEADER_IN - 0.2) / height_in))
    ax_photo.imshow(photo, interpolation="antialiased")
    ax_photo.set_axis_off()
    title = _wrap(plain(header[0]), 105, 2)
    fig.text(0.25, 1.0 - 0.12 / height_in, title, va="top", ha="left", fontsize=10, fontweight="bold", parse_math=False)
    lines = [_wrap(plain(h), 125, 2) for h in header[1:]] + ["", _wrap("Caption: " + plain(caption), 110, 3)]
    body_top = 1.0 - (0.2 + 0.19 * (title.count("\n") + 1)) / height_in
    fig.text(0.25, body_top, "\n".join(lines), va="top", ha="left", fontsize=8.5, parse_math=False)
    if n == 0:
        fig.text(0.5, top / 2, "the caption has no tokens: nothing to show", ha="center", va="center", fontsize=10)


def _draw_panels(fig: Any, view: np.ndarray, heat: np.ndarray, tokens: Sequence[str], height_in: float) -> list[Any]:
    """One panel per token, COLUMNS a row: the model's view with the token's map over it."""
    from bench.report.markdown import plain

    width_in = COLUMNS * PANEL_IN
    row_in = PANEL_IN + 0.35
    h, w = view.shape[:2]
    axes = []
    for k in range(len(tokens)):
        r, c = divmod(k, COLUMNS)
        left = (c * PANEL_IN + 0.08) / width_in
        bottom = (height_in - HEADER_IN - (r + 1) * row_in + 0.05) / height_in
        ax = fig.add_axes((left, bottom, (PANEL_IN - 0.16) / width_in, (PANEL_IN - 0.16) / height_in))
        ax.imshow(view, extent=(0, w, h, 0), interpolation="antialiased")
        peak = float(heat[k].max()) or 1.0
        ax.imshow(upsample(heat[k], (h, w)), extent=(0, w, h, 0), cmap=CMAP, alpha=ALPHA, vmin=0.0, vmax=peak,
                  interpolation="nearest")
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
        ax.set_axis_off()
        ax.set_title(f"{k + 1}. {plain(tokens[k], 24)}", fontsize=9, pad=3, parse_math=False)
        axes.append(ax)
    return axes


def _photo(path: Path) -> np.ndarray:
    from bench.data import load_image

    image = load_image(path)
    image.thumbnail((640, 640))
    return np.asarray(image.convert("RGB"))


def _decoding(gen: GenerationConfig) -> str:
    if gen.strategy == "beam" and gen.num_beams > 1:
        return f"beam search ({gen.num_beams} beams)"
    return "greedy decoding"


def _source_note(source: str, gen: GenerationConfig) -> str:
    if source == "generated":
        return f"Tokens: those {_decoding(gen)} produced for this caption; attention from one teacher-forced pass over them (eager attention)"
    return (
        f"Tokens: the run's caption tokenized again ({_decoding(gen)} did not reproduce it here); "
        "attention from one teacher-forced pass over them (eager attention)"
    )


def figure_for(
    run: RunFolder,
    image_id: str,
    score: float | None,
    trace: Any,
    view: np.ndarray | None,
    gen: GenerationConfig,
    layer: int | None,
    heads: str,
    out_path: Path,
) -> AttendFigure:
    """Aggregate one trace and write its PNG."""
    n_heads, n_layers = (int(trace.maps[0].shape[0]), int(trace.maps[0].shape[1])) if trace.maps else (0, 0)
    chosen = check_options(layer, heads, n_layers) if trace.maps else None
    grid = tuple(trace.grid)
    heat = np.stack([aggregate(m, chosen, heads).reshape(grid) for m in trace.maps]) if trace.maps else np.zeros((0, *grid))
    aggregation = describe_aggregation(chosen, heads, n_heads, n_layers, grid) if trace.maps else "no tokens"
    photo = _photo(run.image_paths[image_id])
    view_note = "its processor's resize and crop"
    if view is None:  # no processor statistics: the photo squeezed to a square like most inputs
        from PIL import Image

        view = np.asarray(Image.fromarray(photo).resize((224, 224), Image.BILINEAR)) / 255.0
        view_note = "approximated: the photo resized to a square"
    score_text = f" - per-image {SCORE_KEY} {score:.4f}" if score is not None else ""
    source = getattr(trace, "source", "generated")
    short = f"{heads} over heads, " + ("mean over layers" if chosen is None else f"layer {chosen}")
    header = [
        f"{run.label} - image {image_id}{score_text} - attention per token ({short})",
        f"Where each caption token looked: {getattr(trace, 'positions', '') or 'attention over the image patches'}; "
        f"panels show the image as the model saw it ({view_note})",
        f"Aggregation: {aggregation}",
        _source_note(source, gen),
    ]
    masses = [m for m in getattr(trace, "image_mass", []) if m is not None]
    if masses and min(masses) < 0.999:
        header.append(f"Share of attention on the image positions before renormalising: mean {100 * float(np.mean(masses)):.1f}%")
    metadata = {
        "Title": f"bench attend {run.label} {image_id}",
        "bench:run": run.label,
        "bench:image_id": image_id,
        "bench:caption": trace.caption,
        "bench:panels": str(len(trace.tokens)),
        "bench:tokens": json.dumps(list(trace.tokens), ensure_ascii=False),
        "bench:token_ids": json.dumps([int(i) for i in getattr(trace, "token_ids", [])]),
        "bench:grid": json.dumps(list(grid)),
        "bench:aggregation": aggregation,
        "bench:source": source,
    }
    png, boxes, size = render(
        photo=photo, view=view, heat=heat, tokens=trace.tokens, header=header, caption=trace.caption, metadata=metadata
    )
    atomic_write_bytes(out_path, png)
    return AttendFigure(
        image_id=image_id, path=out_path, caption=trace.caption, tokens=tuple(trace.tokens), n_panels=len(trace.tokens),
        grid=grid, aggregation=aggregation, source=source, heat=heat, panel_boxes=boxes, size=size, score=score,
    )
