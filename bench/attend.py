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
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import textwrap
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import paths
from bench.config import GenerationConfig, ModelConfig
from bench.errors import BenchError
from bench.io import atomic_write_bytes, exclusive_lock, read_json, read_records

SCORE_KEY = "CLIPScore"
HEADS = ("mean", "max")
DPI = 100
COLUMNS = 6
PANEL_IN = 2.0  # panel width; a panel row is PANEL_IN + room for the token label
HEADER_IN = 2.8
ALPHA = 0.5
CMAP = "jet"
EPOCH_DIR = re.compile(r"^epoch-(\d+)$")


# --- the run ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunFolder:
    """What `bench attend` reads from a run folder (config.json, split.json, predictions.jsonl)."""

    path: Path
    label: str  # "setting/backend" (or the folder, outside the registry)
    config: dict[str, Any]
    backend: str
    image_paths: dict[str, Path]  # split order
    captions: dict[str, str]


def resolve_run(run: str | None, setting: str | None, backend: str | None, root: Path | None = None) -> Path:
    """The run folder named by `--run NAME|PATH` or by `--setting NAME --backend B`."""
    root = root or paths.runs_dir()
    if run is not None and (setting is not None or backend is not None):
        raise BenchError("bench attend: give --run, or --setting with --backend, not both")
    if run is None:
        if setting is None or backend is None:
            raise BenchError("bench attend: give --run SETTING/BACKEND, or --setting NAME with --backend B")
        run = f"{setting}/{backend}"
    as_path = Path(run).expanduser()
    if (as_path / "config.json").is_file():
        return as_path.resolve()
    folder = root / run
    if not (folder / "config.json").is_file():
        known = sorted(str(p.parent.relative_to(root)) for p in root.glob("*/*/config.json")) if root.is_dir() else []
        hint = f"; runs: {', '.join(known)}" if known else f"; {root} holds no runs"
        raise BenchError(f"--run {run}: no run folder {folder} with a config.json{hint}")
    return folder


def read_run(folder: Path) -> RunFolder:
    """The run's config, its split's image paths and its captions, checked."""
    try:
        label = str(folder.relative_to(paths.runs_dir()))
    except ValueError:
        label = str(folder)
    config = read_json(folder / "config.json")
    if not isinstance(config, dict):
        raise BenchError(f"{folder / 'config.json'}: expected a JSON object")
    backend = config.get("backend")
    if config.get("kind") == "external" or backend == "external":
        raise BenchError(f"{folder / 'config.json'}: an external run has no model to trace; bench attend needs a run bench captioned")
    for key in ("backend", "model", "generation"):
        if key not in config:
            raise BenchError(f"{folder / 'config.json'}: key {key!r} is missing")
    split_path = folder / "split.json"
    split = read_json(split_path)
    samples = split.get("samples") if isinstance(split, dict) else None
    if not isinstance(samples, list):
        raise BenchError(f"{split_path}: key 'samples' must be a list")
    image_paths: dict[str, Path] = {}
    for k, s in enumerate(samples):
        if not isinstance(s, dict) or not isinstance(s.get("image_id"), (str, int)) or not isinstance(s.get("path"), str):
            raise BenchError(f"{split_path}: key 'samples[{k}]' needs a string 'image_id' and 'path'")
        image_path = Path(paths.expand(s["path"]))
        image_paths[str(s["image_id"])] = image_path if image_path.is_absolute() else paths.project_dir() / image_path
    pred_path = folder / "predictions.jsonl"
    if not pred_path.exists():
        raise BenchError(f"{pred_path}: file not found (the run has captioned nothing yet)")
    captions: dict[str, str] = {}
    for k, rec in enumerate(read_records(pred_path), start=1):
        if not isinstance(rec.get("image_id"), (str, int)) or not isinstance(rec.get("caption"), str):
            raise BenchError(f"{pred_path}: record {k} needs a string 'image_id' and 'caption'")
        captions[str(rec["image_id"])] = rec["caption"]
    return RunFolder(folder, label, config, str(backend), image_paths, captions)


def per_image_scores(folder: Path, key: str = SCORE_KEY) -> dict[str, float]:
    """image_id -> the run's per-image `key` score from metrics.json."""
    path = folder / "metrics.json"
    if not path.exists():
        raise BenchError(f"{path}: file not found; --top/--bottom pick images by the run's per-image {key} (score the run first)")
    scored = read_json(path)
    per_image = scored.get("per_image") if isinstance(scored, dict) else None
    if not isinstance(per_image, dict) or not per_image:
        raise BenchError(f"{path}: key 'per_image' is missing or empty; --top/--bottom need per-image {key}")
    scores: dict[str, float] = {}
    for image_id, values in per_image.items():
        value = values.get(key) if isinstance(values, dict) else None
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise BenchError(f"{path}: key 'per_image.{image_id}.{key}' is missing (was the run scored with clipscore?)")
        scores[str(image_id)] = float(value)
    return scores


def select_images(
    run: RunFolder, images: str | None, top: int | None, bottom: int | None
) -> list[tuple[str, float | None]]:
    """(image_id, per-image score or None) for `--images`, `--top K` or `--bottom K`."""
    chosen = [name for name, value in (("--images", images), ("--top", top), ("--bottom", bottom)) if value is not None]
    if len(chosen) != 1:
        raise BenchError("bench attend: give exactly one of --images ID[,ID...], --top K or --bottom K")
    if images is not None:
        ids = list(dict.fromkeys(i.strip() for i in images.split(",") if i.strip()))
        if not ids:
            raise BenchError("--images: no image id given")
        for image_id in ids:
            if image_id not in run.image_paths:
                raise BenchError(f"--images: image id {image_id!r} is not in {run.path / 'split.json'}")
        scores = _scores_if_any(run.path)
        picked = [(i, scores.get(i)) for i in ids]
    else:
        k = top if top is not None else bottom
        assert k is not None
        if k < 1:
            raise BenchError(f"{chosen[0]} must be >= 1, got {k}")
        scores = per_image_scores(run.path)
        ranked = [(i, s) for i, s in scores.items() if i in run.image_paths]
        # Ties broken by image id, so the choice never depends on dict order.
        ranked.sort(key=lambda p: (-p[1], p[0]) if top is not None else (p[1], p[0]))
        picked = [(i, s) for i, s in ranked[:k]]
    for image_id, _ in picked:
        if image_id not in run.captions:
            raise BenchError(f"{run.path / 'predictions.jsonl'}: no caption for image id {image_id!r} (finish the run with bench run)")
    return picked


def _scores_if_any(folder: Path) -> dict[str, float]:
    try:
        return per_image_scores(folder)
    except BenchError:
        return {}


# --- aggregation ------------------------------------------------------------------------------------

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


# --- loading the run's model ------------------------------------------------------------------------

def final_adapter(run: RunFolder) -> Path:
    """train/adapter/epoch-N of the run's last epoch (the weights its captions came from)."""
    root = run.path / "train" / "adapter"
    done = sorted(
        int(m.group(1))
        for p in (root.iterdir() if root.is_dir() else [])
        if (m := EPOCH_DIR.match(p.name)) and (p / "train_state.json").is_file()
    )
    epochs = run.config.get("train", {}).get("epochs") if isinstance(run.config.get("train"), dict) else None
    if not done:
        raise BenchError(f"{root}: no finished epoch; the run's LoRA training is not done (finish it with bench run)")
    if isinstance(epochs, int) and done[-1] != epochs:
        raise BenchError(f"{root}: last finished epoch is {done[-1]}, the run trains {epochs} (finish it with bench run)")
    return root / f"epoch-{done[-1]}"


def generation_config(run: RunFolder) -> GenerationConfig:
    raw = run.config.get("generation")
    if not isinstance(raw, dict):
        raise BenchError(f"{run.path / 'config.json'}: key 'generation' must be an object")
    names = {f.name for f in dataclasses.fields(GenerationConfig)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise BenchError(f"{run.path / 'config.json'}: key 'generation.{unknown[0]}' is unknown to this bench")
    return GenerationConfig(**raw)


def model_config(run: RunFolder) -> ModelConfig:
    raw = run.config.get("model")
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), str):
        raise BenchError(f"{run.path / 'config.json'}: key 'model.model' must be a string")
    return ModelConfig(
        model=raw["model"], quantization=raw.get("quantization", "none"), options=dict(raw.get("options") or {})
    )


def run_prompt(run: RunFolder) -> Any:
    """The PromptTemplate a zero-shot run used: its prompts/ file, with the run's recorded text."""
    from bench.prompts import PromptTemplate, load_prompt

    name, text = run.config.get("prompt"), run.config.get("prompt_text")
    if not name and not text:
        return None
    try:
        template = load_prompt(name) if name else None
    except BenchError:
        template = None
    if template is not None and (text is None or template.template == text):
        return template
    if not isinstance(text, str):
        raise BenchError(f"{run.path / 'config.json'}: key 'prompt_text' is missing and prompt {name!r} cannot be loaded")
    # The prompt file changed or is gone: the run's recorded text wins (post-processing as before).
    sentences = template.sentences if template is not None else 1
    return PromptTemplate(str(name or "run"), text, "", "", sentences, run.path / "config.json")


def load_captioner(run: RunFolder, device: Any) -> Any:
    """The backend loaded as the run used it, with the final LoRA adapter of a LoRA run."""
    import torch

    from bench.backends import get_backend

    cls = get_backend(run.backend)
    torch.manual_seed(int(run.config.get("seed", 0)))  # as bench run does before loading
    captioner = cls.load(model_config(run), device, prompt=run_prompt(run))
    if run.config.get("kind") == "lora":
        captioner.load_adapter(final_adapter(run))
    captioner.torch_module().eval()
    return captioner


# --- the figure -------------------------------------------------------------------------------------

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
    processor = getattr(captioner, "processor", None)
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

    from bench.report.markdown import plain

    n = len(tokens)
    rows = max(1, -(-n // COLUMNS))
    width_in = COLUMNS * PANEL_IN
    row_in = PANEL_IN + 0.35
    height_in = HEADER_IN + rows * row_in
    fig = Figure(figsize=(width_in, height_in), dpi=DPI)
    canvas = FigureCanvasAgg(fig)
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

    h, w = view.shape[:2]
    axes = []
    for k in range(n):
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

    canvas.draw()
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


# --- the command ------------------------------------------------------------------------------------

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
    from bench.runs import resolve_device

    layer_index = parse_layer(layer)
    if heads not in HEADS:
        raise BenchError(f"--heads {heads}: must be one of {', '.join(HEADS)}")
    if not (Path(folder) / "config.json").is_file():
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
                raise BenchError(f"{run.path / 'split.json'}: image file {run.image_paths[image_id]} of image id {image_id!r} not found")
        gen = generation_config(run)
        out_dir = Path(out) if out is not None else run.path / "attend"
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
