"""Report figures with matplotlib's Agg canvas (headless, no pyplot state).

Deterministic bytes: fixed size and dpi, no bbox_inches="tight", and PNG metadata without the
"Software" version string. Text drawn from captions is never parsed as mathtext and is folded
to one line, truncated and wrapped first.

Sizes in pixels (DPI 100): bars `bars_size(n_runs, n_metrics)` (1200 wide); loss curves 1000 x 600;
gallery 1200 x 320 per image row; side-by-side grid 300 per image x 760.
"""

from __future__ import annotations

import io
import textwrap
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from bench.errors import BenchError
from bench.io import atomic_write_bytes
from bench.report.markdown import plain
from bench.report.section import RunSummary, Section

DPI = 100
BARS_WIDTH_IN = 12.0
LOSS_SIZE_IN = (10.0, 6.0)
GALLERY_WIDTH_IN, GALLERY_ROW_IN = 12.0, 3.2
GRID_COL_IN, GRID_HEIGHT_IN = 3.0, 7.6
_PALETTE = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C", "#CCB974", "#64B5CD")


@dataclass(frozen=True)
class Written:
    path: Path
    size: tuple[int, int]  # (width, height) in pixels


def bars_size(n_runs: int, n_metrics: int) -> tuple[int, int]:
    """Pixel size of the metric-bars figure: 3 panels a row, height grows with the runs."""
    rows = max(1, -(-n_metrics // 3))
    per_row = min(12.0, max(3.0, 1.0 + 0.32 * n_runs))
    return int(BARS_WIDTH_IN * DPI), int(round(rows * per_row * DPI))


def _new(width_in: float, height_in: float) -> Figure:
    fig = Figure(figsize=(width_in, height_in), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Written:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # glyphs missing from DejaVu Sans (emoji, CJK) draw as boxes
        fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    atomic_write_bytes(path, buf.getvalue())
    w, h = fig.get_size_inches()
    return Written(path, (int(round(w * DPI)), int(round(h * DPI))))


def _no_math(*texts) -> None:
    for t in texts:
        t.set_parse_math(False)


def _label(text: str, max_len: int = 40) -> str:
    # A legend hides labels starting with "_"; a leading space keeps them.
    text = plain(text, max_len)
    return " " + text if text.startswith("_") else text


def metric_bars(section: Section, path: Path) -> Written:
    """One panel per headline metric: a bar per run with its 95% CI whisker."""
    runs = section.runs
    metrics = section.metrics_present()
    width, height = bars_size(len(runs), len(metrics))
    fig = _new(width / DPI, height / DPI)
    rows = max(1, -(-len(metrics) // 3))
    axes = fig.subplots(rows, 3, squeeze=False).ravel()
    y = np.arange(len(runs))[::-1]
    names = [_label(r.name, 30) for r in runs]
    colors = ["#C44E52" if r.name == section.baseline else "#4C72B0" for r in runs]
    for k, (ax, metric) in enumerate(zip(axes, metrics)):
        values = np.array([r.values.get(metric, np.nan) for r in runs], dtype=float)
        lo = np.array([r.ci.get(metric, (v, v))[0] for r, v in zip(runs, values)])
        hi = np.array([r.ci.get(metric, (v, v))[1] for r, v in zip(runs, values)])
        err = np.nan_to_num(np.vstack([np.clip(values - lo, 0, None), np.clip(hi - values, 0, None)]))
        ax.barh(y, np.nan_to_num(values), xerr=err, color=colors, capsize=3, height=0.7)
        ax.set_title(metric, fontsize=10)
        ax.set_yticks(y)
        # Run names only on the first panel of a row: the rows are the same runs.
        ax.set_yticklabels(names if k % 3 == 0 else [""] * len(runs), fontsize=max(5, 9 - len(runs) // 6))
        _no_math(*ax.get_yticklabels())
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="x", alpha=0.3)
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    title = fig.suptitle(f"{plain(section.dataset, 60)}: metrics with 95% bootstrap CIs (red: baseline)", fontsize=11)
    _no_math(title)
    top = 1 - 0.45 / (height / DPI)
    fig.subplots_adjust(left=0.2, right=0.98, top=top, bottom=0.3 / (height / DPI), wspace=0.15, hspace=0.35)
    return _save(fig, path)


COST_PANEL_IN = (4.0, 3.4)


def quality_vs_cost(section: Section, path: Path) -> Written | None:
    """One panel per headline metric: the metric against $ per 1,000 captions, one point per
    run with a price (bench.cost), the Pareto front (no run cheaper and better) joined in red.
    None when no run of the section has a $ figure."""
    from bench.cost import pareto_front
    from bench.scoring.metrics import spec

    priced = [r for r in section.runs if r.cost.usd_per_1000 is not None]
    metrics = [m for m in section.metrics_present() if any(m in r.values for r in priced)]
    if not priced or not metrics:
        return None
    cols = min(3, len(metrics))
    rows = -(-len(metrics) // cols)
    fig = _new(COST_PANEL_IN[0] * cols, COST_PANEL_IN[1] * rows + 0.5)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, metric in zip(axes, metrics):
        runs = [r for r in priced if metric in r.values]
        x = [float(r.cost.usd_per_1000 or 0.0) for r in runs]
        y = [float(r.values[metric]) for r in runs]
        sign = 1.0 if spec(metric).higher_is_better else -1.0  # the metric table says which way is better
        front = pareto_front(x, [sign * v for v in y])
        ax.scatter(x, y, color=["#C44E52" if f else "#4C72B0" for f in front], zorder=3, s=24)
        order = sorted((xi, yi) for xi, yi, f in zip(x, y, front) if f)
        ax.plot([p[0] for p in order], [p[1] for p in order], color="#C44E52", lw=1, zorder=2)
        for r, xi, yi in zip(runs, x, y):
            _no_math(ax.annotate(_label(r.name, 28), (xi, yi), fontsize=6, xytext=(3, 3), textcoords="offset points"))
        positive = [v for v in x if v > 0]
        if positive and len(positive) == len(x) and max(positive) / min(positive) > 20:
            ax.set_xscale("log")  # hosted and local runs can differ by orders of magnitude
        ax.margins(x=0.3, y=0.2)  # room for the run labels
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel("$ per 1,000 captions", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    title = fig.suptitle(f"{plain(section.dataset, 60)}: quality vs cost (red: Pareto front)", fontsize=11)
    _no_math(title)
    fig.subplots_adjust(left=0.08, right=0.98, top=1 - 0.5 / fig.get_size_inches()[1], bottom=0.12, wspace=0.3, hspace=0.5)
    return _save(fig, path)


def read_loss(path: Path) -> pd.DataFrame:
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise BenchError(f"{path}: cannot read ({exc})") from exc
    for col in ("step", "loss"):
        if col not in df.columns:
            raise BenchError(f"{path}: missing column '{col}'")
    df = df[["step", "loss"]].apply(pd.to_numeric, errors="coerce").dropna()
    return df.sort_values("step", kind="stable")


def loss_curves(runs: Sequence[RunSummary], path: Path) -> Written | None:
    """Training loss of every run that has train/loss.csv, in one figure."""
    curves = [(r, read_loss(r.data.loss_csv)) for r in runs if r.data.loss_csv is not None]
    curves = [(r, df) for r, df in curves if len(df)]
    if not curves:
        return None
    fig = _new(*LOSS_SIZE_IN)
    ax = fig.add_subplot()
    for k, (r, df) in enumerate(curves):
        ax.plot(df["step"], df["loss"], label=_label(r.name), color=_PALETTE[k % len(_PALETTE)],
                linestyle=("-", "--", ":", "-.")[k // len(_PALETTE) % 4], linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("LoRA training loss")
    ax.grid(alpha=0.3)
    legend = ax.legend(fontsize=8, loc="upper right")
    _no_math(*legend.get_texts())
    fig.subplots_adjust(left=0.08, right=0.98, top=0.93, bottom=0.09)
    return _save(fig, path)


def _thumbnail(path: Path | None) -> np.ndarray | None:
    if path is None or not path.is_file():
        return None
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((320, 320))  # about the panel's pixel size: no costly resampling at draw time
            return np.asarray(im)
    except OSError:
        return None


def images_available(paths: Sequence[Path | None]) -> bool:
    return all(p is not None and p.is_file() for p in paths)


def _fit_text(lines: Sequence[tuple[str, bool]], width_in: float, height_in: float) -> tuple[str, float]:
    """Wrap (text, is_header) lines into a block that fits a box; returns text and font size."""
    for size in (9.0, 8.0, 7.0, 6.0, 5.0, 4.5):
        chars = max(20, int(width_in * 72 / (0.55 * size)))
        wrapped: list[str] = []
        for text, _ in lines:
            wrapped.extend(textwrap.wrap(text, chars, break_long_words=True, break_on_hyphens=False) or [""])
        if len(wrapped) * size * 1.3 <= height_in * 72:
            return "\n".join(wrapped), size
    keep = int(height_in * 72 / (4.5 * 1.3))
    return "\n".join(wrapped[: max(keep - 1, 1)] + ["…"]), 4.5


def gallery(section: Section, picks: Sequence[tuple[str, int, float]], score_name: str, path: Path) -> Written:
    """One row per picked image (label, image index, score): the photo, then every run's caption
    with its per-image score, then the references."""
    paths = section.runs[0].data.image_paths
    order = {i: k for k, i in enumerate(section.runs[0].data.image_ids)}
    fig = _new(GALLERY_WIDTH_IN, GALLERY_ROW_IN * len(picks))
    grid = fig.add_gridspec(len(picks), 2, width_ratios=(1, 2.6), left=0.01, right=0.99, top=0.99, bottom=0.01,
                            hspace=0.08, wspace=0.03)
    for row, (label, idx, score) in enumerate(picks):
        image_id = section.image_ids[idx]
        ax_img, ax_txt = fig.add_subplot(grid[row, 0]), fig.add_subplot(grid[row, 1])
        thumb = _thumbnail(paths[order[image_id]])
        if thumb is not None:
            ax_img.imshow(thumb, interpolation="nearest")
        ax_img.set_axis_off()
        ax_txt.set_axis_off()
        lines = [(f"{label} - image {plain(image_id, 40)} - mean {score_name} {score:.4f}", True)]
        for r in section.runs:
            s = r.per_image.get(score_name)
            tail = f" ({s[idx]:.3f})" if s is not None else ""
            lines.append((f"{plain(r.name, 40)}: {plain(r.data.captions[order[image_id]], 160)}{tail}", False))
        lines.extend((f"ref: {plain(ref, 160)}", False) for ref in section.refs[idx])
        text, size = _fit_text(lines, GALLERY_WIDTH_IN * 2.6 / 3.6 - 0.2, GALLERY_ROW_IN - 0.15)
        t = ax_txt.text(0.0, 1.0, text, va="top", ha="left", fontsize=size, transform=ax_txt.transAxes,
                        family="DejaVu Sans")
        _no_math(t)
    return _save(fig, path)


def side_by_side(section: Section, indices: Sequence[int], path: Path) -> Written:
    """The same images captioned by every run: one column per image, captions underneath."""
    paths = section.runs[0].data.image_paths
    order = {i: k for k, i in enumerate(section.runs[0].data.image_ids)}
    fig = _new(GRID_COL_IN * len(indices), GRID_HEIGHT_IN)
    grid = fig.add_gridspec(2, len(indices), height_ratios=(1, 1.55), left=0.01, right=0.99, top=0.97,
                            bottom=0.01, hspace=0.04, wspace=0.05)
    for col, idx in enumerate(indices):
        image_id = section.image_ids[idx]
        ax_img, ax_txt = fig.add_subplot(grid[0, col]), fig.add_subplot(grid[1, col])
        thumb = _thumbnail(paths[order[image_id]])
        if thumb is not None:
            ax_img.imshow(thumb, interpolation="nearest")
        ax_img.set_axis_off()
        title = ax_img.set_title(plain(image_id, 36), fontsize=8)
        _no_math(title)
        ax_txt.set_axis_off()
        lines = [(f"{plain(r.name, 30)}: {plain(r.data.captions[order[image_id]], 120)}", False) for r in section.runs]
        text, size = _fit_text(lines, GRID_COL_IN - 0.15, GRID_HEIGHT_IN * 1.55 / 2.55 - 0.15)
        t = ax_txt.text(0.0, 1.0, text, va="top", ha="left", fontsize=size, transform=ax_txt.transAxes)
        _no_math(t)
    return _save(fig, path)
