"""`bench score`: score a predictions file against references, exactly like pycocoevalcap and the
CLIPScore paper. stdout carries only the result (one JSON object with --json); everything else
(progress, notes) goes to stderr.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from bench.config import DEFAULT_CLIP_MODEL
from bench.errors import BenchError
from bench.scoring.metrics import default_families, families, image_families

DEFAULT_METRICS = ",".join(default_families())


def _examples(ids: list[str], n: int = 3) -> str:
    return ", ".join(repr(i) for i in ids[:n]) + (", ..." if len(ids) > n else "")


def _per_image_format(path: Path | None) -> str | None:
    if path is None:
        return None
    suffix = path.suffix.lower()
    if suffix not in (".json", ".csv"):
        raise BenchError(f"--per-image {path}: use a .json or .csv file name")
    return suffix[1:]


def match_ids(
    preds: dict[str, str], entries: list[Any], *, predictions_path: Path, refs_path: Path, intersect: bool
) -> tuple[dict[str, str], dict[str, list[str]], dict[str, Any], tuple[int, int]]:
    """Predictions and references keyed by the reference image id, in reference-file order.

    Returns (preds, refs, entries by id, (n unknown predictions, n images without prediction)).
    Without `intersect` any mismatch is an error with counts and example ids.
    """
    from bench.data import match_predictions

    matched = match_predictions(preds, entries, source=str(predictions_path))
    unknown = [k for k in preds if k not in matched]
    by_id = {entry.image_id: key for key, entry in matched.items()}
    missing = [e.image_id for e in entries if e.image_id not in by_id]
    if (unknown or missing) and not intersect:
        parts = []
        if unknown:
            parts.append(f"{len(unknown)} of {len(preds)} predictions name images not in {refs_path} ({_examples(unknown)})")
        if missing:
            parts.append(f"{len(missing)} of {len(entries)} reference images have no prediction ({_examples(missing)})")
        raise BenchError(f"{predictions_path}: " + "; ".join(parts) + f"; --intersect scores the {len(matched)} images in both")
    if not matched:
        raise BenchError(f"{predictions_path}: no prediction matches an image of {refs_path}; nothing to score")
    kept = [e for e in entries if e.image_id in by_id]
    return (
        {e.image_id: preds[by_id[e.image_id]] for e in kept},
        {e.image_id: list(e.refs) for e in kept},
        {e.image_id: e for e in kept},
        (len(unknown), len(missing)),
    )


def image_paths(images_dir: Path, entries: dict[str, Any]) -> dict[str, Path]:
    """The image file of every scored id inside images_dir; a missing file is an error."""
    from bench.data.dataset import image_path

    if not images_dir.is_dir():
        raise BenchError(f"--images {images_dir}: folder not found")
    paths = {i: image_path(images_dir, e, context=f"image {i!r}") for i, e in entries.items()}
    missing = [i for i, p in paths.items() if not p.is_file()]
    if missing:
        raise BenchError(
            f"--images {images_dir}: {len(missing)} of {len(paths)} scored images have no file "
            f"(e.g. {paths[missing[0]].name} for {missing[0]!r})"
        )
    return paths


def write_per_image(path: Path, fmt: str, per_image: dict[str, dict[str, float]]) -> None:
    from bench.io import atomic_write_json, atomic_write_text

    if fmt == "json":
        atomic_write_json(path, per_image)
        return
    import pandas as pd

    frame = pd.DataFrame.from_dict(per_image, orient="index")
    frame.index.name = "image_id"
    atomic_write_text(path, frame.to_csv(float_format="%.10g"))


def print_table(result: Any, title: str) -> None:
    from rich.markup import escape
    from rich.table import Table

    console = Console(soft_wrap=True)
    table = Table()
    table.add_column("metric")
    table.add_column("score", justify="right")
    for key, value in result.corpus.items():
        table.add_row(key, f"{value:.4f}")
    console.print(f"[bold]{escape(title)}[/]: {result.n_images} images")
    console.print(table)
    notes = ["pycocoevalcap's scale (BLEU, METEOR, ROUGE-L in 0-1; not x100)"]
    if result.clip_model is not None:
        notes.append("CLIPScore on the paper's 0-2.5 scale (w = 2.5)")
        notes.append(f"CLIP {result.clip_model}, {result.n_clip_truncated} texts cut to CLIP's 77 tokens")
    console.print("; ".join(notes), highlight=False, markup=False)


def _record_as_run(
    name: str,
    dataset: str,
    preds: dict[str, str],
    refs: dict[str, list[str]],
    result: Any,
    *,
    images: dict[str, Path] | None,
    source: str,
    score_s: float,
    err: Console,
) -> None:
    """`--as-run`: register the scored captions as runs/NAME/external (bench compare reads it)."""
    from bench.data import fingerprint
    from bench.data.types import RefEntry
    from bench.run import record_external_run

    # The same fingerprint a dataset split of these images and references gets.
    fp = fingerprint(RefEntry(i, None, tuple(r)) for i, r in refs.items())
    run_dir = record_external_run(
        name, preds, refs, result.to_json(per_image=True), dataset=dataset, fingerprint=fp,
        images={i: str(p) for i, p in images.items()} if images else None, source=source, score_s=score_s,
    )
    err.print(f"recorded run {name}/external ({dataset}, fingerprint {fp}) in {run_dir}", highlight=False)


# The command's arguments, named once here so that `score` itself reads top to bottom.
PredictionsArg = Annotated[
    Path,
    typer.Argument(
        help="Captions to score: JSON {image_id: caption}, COCO results [{image_id, caption}], "
        "JSONL of those (a run's predictions.jsonl), or the magic-flickr30k layout.",
        show_default=False,
    ),
]
RefsOption = Annotated[
    Path,
    typer.Option(
        "--refs",
        help="References: COCO captions JSON, Karpathy JSON, Flickr/Kaggle captions.txt, "
        "{image_id: list of refs} JSON, JSONL, or the magic-flickr30k layout.",
        show_default=False,
    ),
]
ImagesOption = Annotated[
    Path | None,
    typer.Option("--images", help="Folder with the images; needed for CLIPScore/RefCLIPScore (skipped without it)."),
]
ClipModelOption = Annotated[
    str,
    typer.Option(
        "--clip-model",
        help="CLIP for CLIPScore: hub id or local directory (a local directory never touches the network).",
    ),
]
MetricsOption = Annotated[
    str, typer.Option("--metrics", help=f"Comma-separated subset of {','.join(families())}.")
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print exactly one JSON object on stdout (progress goes to stderr).")
]
PerImageOption = Annotated[
    Path | None, typer.Option("--per-image", help="Also write per-image scores to FILE (.json or .csv).")
]
IntersectOption = Annotated[
    bool,
    typer.Option(
        "--intersect",
        help="Score only images that have both a prediction and references, and report both counts "
        "(default: any mismatch is an error).",
    ),
]
BatchSizeOption = Annotated[int, typer.Option("--batch-size", min=1, help="CLIP encoding batch size.")]
DeviceOption = Annotated[str, typer.Option("--device", help="Device for CLIP: auto, cpu or cuda.")]
AsRunOption = Annotated[
    str | None,
    typer.Option(
        "--as-run",
        help="Also record these captions as the run NAME/external in the run registry, for `bench compare`.",
    ),
]
DatasetOption = Annotated[
    str | None,
    typer.Option(
        "--dataset",
        help="Dataset name of the --as-run run (default: the folder holding --refs); runs are compared "
        "when dataset and reference fingerprint match.",
    ),
]


def _matched_inputs(
    predictions: Path, refs: Path, intersect: bool, err: Console
) -> tuple[dict[str, str], dict[str, list[str]], dict[str, Any]]:
    """Predictions, references and reference entries of the images scored, with notes on stderr."""
    from bench.data import read_references
    from bench.scoring import read_predictions

    preds = read_predictions(predictions)
    entries = read_references(refs)
    preds_by_id, refs_by_id, entry_by_id, (n_unknown, n_missing) = match_ids(
        preds, entries, predictions_path=predictions, refs_path=refs, intersect=intersect
    )
    if intersect and (n_unknown or n_missing):
        err.print(
            f"--intersect: scoring the {len(preds_by_id)} images in both; left out {n_unknown} predictions "
            f"without references and {n_missing} reference images without a prediction",
            highlight=False,
        )

    empty = [i for i, caption in preds_by_id.items() if not caption.strip()]
    if empty:  # legitimate model output (it scores 0), but worth a line: it may be a broken export
        err.print(
            f"note: {predictions}: {len(empty)} of {len(preds_by_id)} predictions are empty "
            f"({_examples(empty)}); scored as empty captions",
            highlight=False,
        )
    return preds_by_id, refs_by_id, entry_by_id


def _clip_images(
    metric_names: Any, images: Path | None, entry_by_id: dict[str, Any], err: Console
) -> dict[str, Path] | None:
    """The image files CLIPScore needs, or None when it is not asked for or --images is missing."""
    if not any(m in image_families() for m in metric_names):
        return None
    if images is None:
        err.print("CLIPScore/RefCLIPScore skipped: pass --images DIR to compute them", highlight=False)
        return None
    return image_paths(images, entry_by_id)


def score(
    predictions: PredictionsArg,
    refs: RefsOption,
    images: ImagesOption = None,
    clip_model: ClipModelOption = DEFAULT_CLIP_MODEL,
    metrics: MetricsOption = DEFAULT_METRICS,
    as_json: JsonOption = False,
    per_image: PerImageOption = None,
    intersect: IntersectOption = False,
    batch_size: BatchSizeOption = 64,
    device: DeviceOption = "auto",
    as_run: AsRunOption = None,
    dataset: DatasetOption = None,
) -> None:
    """Score PREDICTIONS against --refs with BLEU-1..4, METEOR, ROUGE-L, CIDEr (as pycocoevalcap)
    and CLIPScore / RefCLIPScore (as Hessel et al. 2021)."""
    from bench.scoring import parse_metrics
    from bench.scoring.scorer import Scorer

    err = Console(stderr=True, soft_wrap=True)  # one message, one line
    metric_names = parse_metrics(metrics)
    per_image_fmt = _per_image_format(per_image)
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise BenchError(f"--device must be auto, cpu or cuda, got {device!r}")

    preds_by_id, refs_by_id, entry_by_id = _matched_inputs(predictions, refs, intersect, err)
    image_map = _clip_images(metric_names, images, entry_by_id, err)

    if as_run is not None:
        from bench.run import check_run_name

        check_run_name(as_run)  # fail before minutes of scoring, not after
    started = time.perf_counter()
    with Scorer(metrics=metric_names, clip_model=clip_model, device=device, clip_batch_size=batch_size) as scorer:
        result = scorer.score(preds_by_id, refs_by_id, image_map, progress=sys.stderr.isatty())
    if as_run is not None:
        _record_as_run(as_run, dataset or refs.resolve().parent.name, preds_by_id, refs_by_id, result,
                       images=image_map if image_map is not None else (image_paths(images, entry_by_id) if images else None),
                       source=str(predictions), score_s=time.perf_counter() - started, err=err)

    if per_image is not None and per_image_fmt is not None:
        write_per_image(per_image, per_image_fmt, result.per_image)
    if as_json:
        sys.stdout.write(json.dumps(result.to_json()) + "\n")
        sys.stdout.flush()
    else:
        print_table(result, f"{predictions.name} vs {refs.name}")
