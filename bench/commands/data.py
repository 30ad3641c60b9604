"""`bench data ...`: generate the synthetic demo dataset, inspect a dataset and its split."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from bench.data.types import Sample

app = typer.Typer(help="Dataset utilities: generate the synthetic demo dataset, inspect splits.", no_args_is_help=True)


@app.command("synth")
def synth(
    out: Annotated[Path, typer.Option("--out", help="Folder to write images/*.png and captions.txt into.")],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of images.")] = 600,
    seed: Annotated[int, typer.Option("--seed", help="Seed: the same seed gives the same bytes.")] = 0,
    variant: Annotated[str, typer.Option("--variant", help="target or source (other colours and shapes).")] = "target",
    size: Annotated[int, typer.Option("--size", help="Image side in pixels.")] = 64,
) -> None:
    """Write the built-in synthetic captioning dataset (Kaggle `image,caption` layout)."""
    from bench.data.synth import write_synth

    path = write_synth(out, n, seed, variant, size=size, progress=True)
    console = Console()
    console.print(f"wrote {n} {variant} images with 5 references each: [bold]{path}[/]", highlight=False, soft_wrap=True)
    console.print(f"images: {path.parent / 'images'}", highlight=False, soft_wrap=True)


@app.command("info")
def info(
    dataset: Annotated[str, typer.Argument(help="A datasets/*.toml name or a path to one.")],
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Use only the first N validation images.")] = None,
    rows_shown: Annotated[int, typer.Option("--rows", min=0, help="How many images (id, file, references) to print.")] = 3,
) -> None:
    """Show a dataset: images, references, train/val sizes, the val fingerprint, missing images."""
    from bench.data import fingerprint, load_dataset, partition

    ds = load_dataset(dataset, progress=True)
    train, val = partition(ds, limit)
    missing = sum(1 for s in ds.samples if not s.path.is_file())
    spec = ds.split_spec
    if spec.val_size is not None:
        rule = f"seeded: val_size={spec.val_size}, seed={spec.seed}"
    elif spec.val_ids is not None:
        rule = f"id list: {spec.val_ids}"
    else:
        rule = f"Karpathy split {spec.karpathy_split!r}"
    table = Table(title=f"dataset {ds.name}", show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    rows = [
        ("description", ds.description or "-"),
        ("declared in", str(ds.source)),
        ("annotations", str(ds.annotations)),
        ("images dir", str(ds.images_dir)),
        ("images", str(len(ds.samples))),
        ("references", str(sum(len(s.refs) for s in ds.samples))),
        ("split", rule + (f", limit={limit}" if limit else "")),
        ("train", str(len(train))),
        ("val", str(len(val))),
        ("val fingerprint", fingerprint(val)),
    ]
    for key, value in rows:
        table.add_row(key, escape(value))
    table.add_row("missing images", f"[red]{missing}[/]" if missing else "0")
    console = Console()
    console.print(table)
    console.print(_first_rows(ds.samples, rows_shown))


def _first_rows(samples: Sequence[Sample], count: int) -> Table:
    """The first few images as bench sees them: id, image file, number of references, the first."""
    table = Table(title=f"first {min(count, len(samples))} of {len(samples)} images", title_justify="left")
    for column in ("image_id", "image file", "refs", "first reference"):
        table.add_column(column, overflow="fold")
    for s in samples[:count]:
        table.add_row(escape(s.image_id), escape(s.path.name), str(len(s.refs)), escape(s.refs[0]))
    return table
