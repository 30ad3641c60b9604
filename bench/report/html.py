"""`reports/<name>.html`: the report's tables and figures plus a per-image explorer, in one file.

    write_html(path, sections, payload, figures, generated)

The page embeds `payload`, the very dict `--json` writes (one owner of the numbers), the
section tables as the markdown has them (plain text cells) and, per section, every image with
its thumbnail, references and each run's caption, per-image metrics and caption flags. Scripts
and styles are inline (package data in `bench/report/static/`); a Content-Security-Policy
allows only that script (by hash) and local images, so the page makes no network request and
an inline handler smuggled in through data could not run. The data is JSON in a
`<script type="application/json">` with `<`, `>` and `&` escaped, so a caption holding
`</script>` cannot end it; the script renders every string with textContent.

Thumbnails are written once into `<figures>/thumbs/` (bench.report.thumbs), so the page stays
small; the full image is linked by its path relative to the page.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from bench.attend.figure import safe_name
from bench.io import atomic_write_text
from bench.report.section import RunSummary, Section
from bench.report.tables import Table, section_tables
from bench.report.thumbs import thumbnail
from bench.scoring.metrics import headline_keys

# Caption flags: bit masks the page filters on.
FLAG_BITS = {"truncated": 1, "repetitive": 2, "empty": 4, "failed": 8}
_DIGITS = 6  # per-image scores are rounded: the page stays ~1/3 smaller, the order unchanged
_MARKER = re.compile(r"@@(CSP|TITLE|CSS|DATA|JS)@@")


def _static(name: str) -> str:
    return resources.files("bench.report").joinpath("static", name).read_text(encoding="utf-8")


def _rel(target: Path, start: Path) -> str:
    return Path(os.path.relpath(target.resolve(), start.resolve())).as_posix()


def embed_json(data: Any) -> str:
    """JSON safe inside a <script> element: no `</script>`, `<!--` or `&` can appear in it."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _scores(values: Sequence[float]) -> list[float | None]:
    """Per-image scores for the page: rounded, None where not finite (JSON has no NaN)."""
    return [round(v, _DIGITS) if math.isfinite(v) else None for v in np.asarray(values, dtype=np.float64).tolist()]


def caption_flags(run: RunSummary, k: int, image_id: str) -> int:
    """The flag bits of one caption: from its tokens (repetitive, empty, as the degeneration
    table counts them) and from its predictions record (truncated, failed)."""
    empty = not run.tokens[k].strip()
    bits = FLAG_BITS["empty"] if empty else (FLAG_BITS["repetitive"] if run.repetitive[k] else 0)
    for name in run.data.caption_flags.get(image_id, ()):
        bits |= FLAG_BITS.get(name, 0)
    return bits


def _run_data(run: RunSummary, section: Section, page_dir: Path) -> dict[str, Any]:
    pos = {image_id: k for k, image_id in enumerate(run.data.image_ids)}
    maps = {p.stem: p for p in run.data.attend_pngs}
    attend = {}
    for k, image_id in enumerate(section.image_ids):
        png = maps.get(safe_name(image_id))
        if png is not None:
            attend[str(k)] = _rel(png, page_dir)
    return {
        "name": run.name,
        "kind": run.data.kind,
        "prompt": run.data.prompt_text or run.data.prompt or "",
        "captions": [run.data.captions[pos[i]] for i in section.image_ids],
        # the report's metric columns (the metric table's order) that the run has per image
        "scores": {m: _scores(run.per_image[m]) for m in headline_keys() if m in run.per_image},
        "flags": [caption_flags(run, k, i) for k, i in enumerate(section.image_ids)],
        "attend": attend,
    }


def _image_paths(section: Section) -> list[Path | None]:
    first = section.runs[0].data
    pos = {image_id: k for k, image_id in enumerate(first.image_ids)}
    return [first.image_paths[pos[i]] for i in section.image_ids]


def explorer_data(
    section: Section, page_dir: Path, thumb_dir: Path, progress: Callable[[int, int], None] | None = None
) -> dict[str, Any]:
    """Every image of a section with its thumbnail, full image, references and each run's data."""
    paths = _image_paths(section)
    thumbs: list[str | None] = []
    for k, p in enumerate(paths):
        t = thumbnail(p, thumb_dir)
        thumbs.append(None if t is None else _rel(t, page_dir))
        if progress is not None and ((k + 1) % 50 == 0 or k + 1 == len(paths)):
            progress(k + 1, len(paths))
    images = [None if p is None or not p.is_file() else _rel(p, page_dir) for p in paths]
    return {
        "ids": list(section.image_ids),
        "refs": [list(r) for r in section.refs],
        "thumbs": thumbs,
        "images": images,
        "runs": [_run_data(r, section, page_dir) for r in section.runs],
    }


def _table_data(t: Table) -> dict[str, Any]:
    return {
        "title": t.title,
        "columns": [str(c) for c in t.plain.columns],
        "rows": [[str(v) for v in row] for row in t.plain.itertuples(index=False)],
        "align": list(t.align),
    }


def _figure_title(path: Path) -> str:
    return path.stem.split("-", 1)[-1].replace("-", " ")


def page_data(
    sections: Sequence[Section],
    titles: Sequence[str],
    payload: dict[str, Any],
    figures: Sequence[Path],
    generated: str,
    page: Path,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """What the page embeds: the JSON report's payload and, per section, tables, figures, images."""
    thumb_dir = page.parent / f"{page.stem}-figures" / "thumbs"
    out = []
    for k, (s, title) in enumerate(zip(sections, titles)):
        cb = None if progress is None else (lambda done, total, title=title: progress(f"thumbnails {title}", done, total))
        mine = [f for f in figures if f.name.startswith(f"s{k + 1}-")]
        out.append({
            "title": title,
            "tables": [_table_data(t) for t in section_tables(s)],
            "figures": [{"title": _figure_title(f), "src": _rel(f, page.parent)} for f in mine],
            "explorer": explorer_data(s, page.parent, thumb_dir, cb),
        })
    return {"generated": generated, "report": payload, "sections": out}


def render_page(title: str, data: dict[str, Any]) -> str:
    """The whole HTML document: template, inline CSS and JS, embedded data, CSP."""
    js = _static("explorer.js")
    digest = base64.b64encode(hashlib.sha256(js.encode("utf-8")).digest()).decode("ascii")
    # Only the page's own script runs; images only from files beside it; nothing may be fetched.
    csp = f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; img-src file: data:"
    parts = {"CSP": csp, "TITLE": html.escape(title), "CSS": _static("explorer.css"), "DATA": embed_json(data), "JS": js}
    return _MARKER.sub(lambda m: parts[m.group(1)], _static("explorer.html"))


def write_html(
    path: Path,
    sections: Sequence[Section],
    titles: Sequence[str],
    payload: dict[str, Any],
    figures: Sequence[Path],
    generated: str,
    progress: Callable[[str, int, int], None] | None = None,
) -> Path:
    """Write the HTML report (see module doc) and return its path."""
    path = Path(path)
    datasets = sorted({s.dataset for s in sections})
    data = page_data(sections, titles, payload, figures, generated, path, progress)
    atomic_write_text(path, render_page(f"Captioning comparison: {', '.join(datasets)}", data))
    return path
