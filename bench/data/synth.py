"""A built-in synthetic captioning world: coloured shapes on plain backgrounds.

Everything is derived from (variant, seed, image index), so the same parameters give the same
bytes on every run and image i does not depend on n. Each scene has 1-3 objects of one shape,
colour and size, placed left/right/top/bottom/center (one object) or in a row/column (several),
on a coloured background; each image gets 5 references in 5 different wordings drawn from a pool
of templates and synonyms, as different annotators would write them.

The `source` and `target` variants share some shapes and colours (circle, square, red, blue) and
differ in the rest, so a captioner pretrained on `source` and LoRA-adapted to `target` has
something to learn. `write_synth` writes the Kaggle `image,caption` layout that bench reads.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from bench.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from bench.errors import BenchError

GENERATOR_VERSION = 1  # bump when rendering or captions change: cached folders are rebuilt
MANIFEST = "manifest.json"
SUPERSAMPLE = 2  # draw at 2x and downsample, for smooth edges

Colour = tuple[int, int, int]


@dataclass(frozen=True)
class Variant:
    shapes: tuple[str, ...]
    colours: dict[str, Colour]


VARIANTS: dict[str, Variant] = {
    "target": Variant(
        shapes=("circle", "square", "triangle", "star"),
        colours={"red": (215, 40, 40), "blue": (40, 80, 215), "green": (40, 165, 60), "yellow": (235, 205, 35), "purple": (135, 55, 175)},
    ),
    "source": Variant(
        shapes=("circle", "square", "diamond", "hexagon"),
        colours={"red": (215, 40, 40), "blue": (40, 80, 215), "orange": (245, 135, 25), "pink": (240, 125, 185), "cyan": (35, 200, 210)},
    ),
}
BACKGROUNDS: dict[str, Colour] = {"white": (245, 245, 245), "black": (22, 22, 22), "gray": (128, 128, 128), "brown": (115, 75, 45)}
SIZES = {"small": 0.085, "large": 0.16}  # object radius as a fraction of the image side
POSITIONS = ("left", "right", "top", "bottom", "center")  # one object
LAYOUTS = ("row", "column")  # several objects

# --- wording pools: (singular, plural) nouns and phrases per attribute --------------------------
SHAPE_WORDS: dict[str, tuple[tuple[str, str], ...]] = {
    "circle": (("circle", "circles"), ("ball", "balls"), ("dot", "dots"), ("disc", "discs"), ("round shape", "round shapes")),
    "square": (("square", "squares"), ("box", "boxes"), ("block", "blocks"), ("square shape", "square shapes")),
    "triangle": (("triangle", "triangles"), ("triangular shape", "triangular shapes"), ("three-sided shape", "three-sided shapes")),
    "star": (("star", "stars"), ("star shape", "star shapes"), ("five-pointed star", "five-pointed stars")),
    "diamond": (("diamond", "diamonds"), ("rhombus", "rhombuses"), ("diamond shape", "diamond shapes")),
    "hexagon": (("hexagon", "hexagons"), ("six-sided shape", "six-sided shapes"), ("hexagonal tile", "hexagonal tiles")),
}
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
COUNT_WORDS = {1: ("a", "one", "a single"), 2: ("two", "a pair of"), 3: ("three",)}
PLACE_WORDS = {
    "left": ("on the left", "on the left side", "to the left"),
    "right": ("on the right", "on the right side", "to the right"),
    "top": ("at the top", "near the top", "in the upper part"),
    "bottom": ("at the bottom", "near the bottom", "in the lower part"),
    "center": ("in the center", "in the middle", "in the centre"),
    "row": ("in a row", "side by side", "next to each other", "in a horizontal line"),
    "column": ("in a column", "stacked vertically", "one above the other", "in a vertical line"),
}
BACKGROUND_PHRASES = ("on a {bg} background", "against a {bg} background", "on {bg}", "over a plain {bg} backdrop", "on a {bg} surface")
TEMPLATES = (
    "{cnt} {size} {col} {shape} {place} {bgp}",
    "{cnt} {col} {shape} {place}, {bgp}",
    "there {be} {cnt} {size} {col} {shape} {place}",
    "a {bg} background with {cnt} {size} {col} {shape} {place}",
    "{cnt} {size} {shape} in {col} {bgp}",
    "a picture of {cnt} {col} {shape} {bgp}",
    "{cnt} {col} {shape} {place} on a plain {bg} canvas",
    "an image showing {cnt} {size} {col} {shape}",
)
REFS_PER_IMAGE = 5


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str
    size: str
    count: int
    place: str  # a POSITIONS entry for one object, a LAYOUTS entry for several


def _rng(variant: str, seed: int, index: int, what: str) -> random.Random:
    # String seeds are hashed with SHA-512 by `random`, independent of PYTHONHASHSEED.
    return random.Random(f"bench-synth:{variant}:{seed}:{index}:{what}")


def make_scene(variant: str, seed: int, index: int) -> Scene:
    rng = _rng(variant, seed, index, "scene")
    spec = VARIANTS[variant]
    count = rng.choice((1, 1, 2, 3))
    return Scene(
        shape=rng.choice(spec.shapes),
        colour=rng.choice(sorted(spec.colours)),
        background=rng.choice(sorted(BACKGROUNDS)),
        size=rng.choice(sorted(SIZES)),
        count=count,
        place=rng.choice(POSITIONS if count == 1 else LAYOUTS),
    )


# --- rendering -----------------------------------------------------------------------------------

def _centres(scene: Scene, side: float) -> list[tuple[float, float]]:
    mid, near, far = side / 2, side * 0.22, side * 0.78
    if scene.count == 1:
        return [{"left": (near, mid), "right": (far, mid), "top": (mid, near), "bottom": (mid, far), "center": (mid, mid)}[scene.place]]
    slots = [side * (k + 0.5) / scene.count for k in range(scene.count)]
    return [(s, mid) for s in slots] if scene.place == "row" else [(mid, s) for s in slots]


def _regular(cx: float, cy: float, r: float, n: int, start: float) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(start + 2 * math.pi * k / n), cy + r * math.sin(start + 2 * math.pi * k / n)) for k in range(n)]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill: Colour) -> None:
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        h = r * 0.88  # about the circle's area
        draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill)
    elif shape == "triangle":
        draw.polygon(_regular(cx, cy + r * 0.15, r * 1.1, 3, -math.pi / 2), fill=fill)
    elif shape == "star":
        outer = _regular(cx, cy, r * 1.1, 5, -math.pi / 2)
        inner = _regular(cx, cy, r * 0.45, 5, -math.pi / 2 + math.pi / 5)
        draw.polygon([p for pair in zip(outer, inner) for p in pair], fill=fill)
    elif shape == "diamond":
        draw.polygon(_regular(cx, cy, r * 1.1, 4, -math.pi / 2), fill=fill)
    elif shape == "hexagon":
        draw.polygon(_regular(cx, cy, r, 6, 0.0), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _jitter(rng: random.Random, colour: Colour, amount: int) -> Colour:
    return tuple(min(255, max(0, c + rng.randint(-amount, amount))) for c in colour)  # type: ignore[return-value]


def render_scene(scene: Scene, variant: str, seed: int, index: int, size: int = 64) -> Image.Image:
    rng = _rng(variant, seed, index, "render")
    side = size * SUPERSAMPLE
    image = Image.new("RGB", (side, side), _jitter(rng, BACKGROUNDS[scene.background], 10))
    draw = ImageDraw.Draw(image)
    fill = _jitter(rng, VARIANTS[variant].colours[scene.colour], 12)
    radius = SIZES[scene.size] * side * rng.uniform(0.9, 1.1)
    # Several large objects must not touch, or they could not be counted.
    radius = min(radius, side / (2 * scene.count) * 0.8)
    wobble = side * 0.03
    for cx, cy in _centres(scene, side):
        _draw_shape(draw, scene.shape, cx + rng.uniform(-wobble, wobble), cy + rng.uniform(-wobble, wobble), radius, fill)
    return image.reduce(SUPERSAMPLE)


# --- captions ------------------------------------------------------------------------------------

_ARTICLE = re.compile(r"\ba (?=[aeiou])")


def scene_captions(scene: Scene, variant: str, seed: int, index: int) -> list[str]:
    """REFS_PER_IMAGE captions of one scene, each from a different template."""
    rng = _rng(variant, seed, index, "captions")
    plural = scene.count > 1
    captions = []
    for template in rng.sample(TEMPLATES, REFS_PER_IMAGE):
        bg = scene.background
        text = template.format(
            cnt=rng.choice(COUNT_WORDS[scene.count]),
            size=rng.choice(SIZE_WORDS[scene.size]),
            col=scene.colour,
            shape=rng.choice(SHAPE_WORDS[scene.shape])[1 if plural else 0],
            place=rng.choice(PLACE_WORDS[scene.place]),
            bgp=rng.choice(BACKGROUND_PHRASES).format(bg=bg),
            bg=bg,
            be="are" if plural else "is",
        )
        captions.append(_ARTICLE.sub("an ", " ".join(text.split())))
    return captions


def vocabulary() -> list[str]:
    """Every word any synthetic caption (of any variant) can contain, sorted.

    Tiny tokenizers are trained on this so that adapting to the target variant never meets an
    unknown word.
    """
    texts: list[str] = list(TEMPLATES) + list(BACKGROUND_PHRASES) + ["an", "is", "are"]
    texts += [w for pair in SHAPE_WORDS.values() for sp in pair for w in sp]
    texts += [w for pool in (*SIZE_WORDS.values(), *COUNT_WORDS.values(), *PLACE_WORDS.values()) for w in pool]
    texts += list(BACKGROUNDS) + [c for v in VARIANTS.values() for c in v.colours]
    words: set[str] = set()
    for text in texts:
        words.update(re.sub(r"\{[a-z]+\}", " ", text).replace(",", " ").split())
    return sorted(words)


# --- writing -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SynthParams:
    variant: str
    n: int
    seed: int
    size: int
    version: int = GENERATOR_VERSION


def _validate(n: int, seed: int, variant: str, size: int) -> None:
    if variant not in VARIANTS:
        raise BenchError(f"synthetic variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise BenchError(f"synthetic dataset size n must be an integer >= 1, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise BenchError(f"synthetic seed must be an integer, got {seed!r}")
    if isinstance(size, bool) or not isinstance(size, int) or not 16 <= size <= 1024:
        raise BenchError(f"synthetic image size must be an integer in 16..1024, got {size!r}")


def image_name(variant: str, seed: int, index: int) -> str:
    return f"{variant}-s{seed}-{index:05d}.png"


def _read_manifest(path: Path) -> dict[str, object] | None:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _is_complete(out_dir: Path, params: SynthParams) -> bool:
    manifest = _read_manifest(out_dir / MANIFEST)
    if manifest is None or manifest.get("complete") is not True:
        return False
    if {k: manifest.get(k) for k in asdict(params)} != asdict(params):
        return False
    images = out_dir / "images"
    return (out_dir / "captions.txt").is_file() and all(
        (images / image_name(params.variant, params.seed, i)).is_file() for i in range(params.n)
    )


def _check_folder(out_dir: Path, params: SynthParams) -> None:
    """Refuse to overwrite a folder that holds something other than this synthetic dataset."""
    manifest = _read_manifest(out_dir / MANIFEST)
    if manifest is None:
        if (out_dir / "captions.txt").exists():
            raise BenchError(f"{out_dir}: holds a captions.txt that bench did not generate; choose another --out folder")
        return
    theirs = {k: manifest.get(k) for k in ("variant", "n", "seed", "size")}
    ours = {k: getattr(params, k) for k in theirs}
    if theirs != ours and manifest.get("complete") is True:
        raise BenchError(
            f"{out_dir / MANIFEST}: folder already holds synthetic data with {theirs}; "
            f"choose another folder for {ours} or delete it"
        )


def write_synth(out_dir: str | Path, n: int, seed: int, variant: str = "target", *, size: int = 64, progress: bool = False) -> Path:
    """Write n scenes to out_dir/images/*.png and out_dir/captions.txt; return the captions path.

    Idempotent: if out_dir already holds exactly this dataset (per its manifest.json), nothing is
    written. `progress` shows a rich progress bar on stderr.
    """
    _validate(n, seed, variant, size)
    out_dir = Path(out_dir)
    params = SynthParams(variant=variant, n=n, seed=seed, size=size)
    captions_path = out_dir / "captions.txt"
    if _is_complete(out_dir, params):
        return captions_path
    _check_folder(out_dir, params)
    # Written first with complete=false, so a crash leaves a folder we recognise and redo.
    atomic_write_json(out_dir / MANIFEST, {**asdict(params), "complete": False})
    rows: list[tuple[str, str]] = []
    for i in _progress_range(n, progress, f"synthetic {variant} images"):
        scene = make_scene(variant, seed, i)
        name = image_name(variant, seed, i)
        buf = io.BytesIO()
        render_scene(scene, variant, seed, i, size).save(buf, format="PNG", compress_level=1)
        atomic_write_bytes(out_dir / "images" / name, buf.getvalue())
        rows.extend((name, caption) for caption in scene_captions(scene, variant, seed, i))
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(("image", "caption"))
    writer.writerows(rows)
    atomic_write_text(captions_path, text.getvalue())
    atomic_write_json(out_dir / MANIFEST, {**asdict(params), "complete": True})
    return captions_path


def _progress_range(n: int, show: bool, label: str) -> Iterable[int]:
    if not show:
        return range(n)
    from rich.console import Console
    from rich.progress import track

    console = Console(stderr=True)
    if not console.is_terminal:  # logs and pipes get no bar (not even an empty line)
        return range(n)
    return track(range(n), description=label, console=console, transient=True)
