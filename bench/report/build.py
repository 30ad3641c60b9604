"""`bench compare`'s report, written end to end: a markdown report comparing finished runs,
with CSV/JSON beside it.

    build_report(runs_root, out, dataset=..., runs_glob=..., baseline=..., csv=..., json_out=...)

reads every finished run (results.json present) under runs_root, groups them into sections
(dataset + split fingerprint + image set; never mixed), bootstraps every metric of every run on
the same resamples of images, and writes out (markdown), the figures in `<out stem>-figures/`
next to it, the HTML report with its per-image explorer (`<out stem>.html`, bench.report.html,
built from the same payload as the JSON), and optionally a CSV (one row per run) and a JSON
(everything, full caption text).
The markdown is byte-identical for the same runs except its one "Generated at" line; CSV, JSON
and PNGs are byte-identical.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.errors import BenchError
from bench.io import atomic_write_text
from bench.paths import cache_dir
from bench.report import adjusted, judged
from bench.report import figures as figs
from bench.report.compute_cache import FOLDER as COMPUTE_CACHE
from bench.report.compute_cache import ComputeCache
from bench.report.diagnostics import Cost
from bench.report.html import write_html
from bench.report.run_cache import LoadedRun, load_runs, with_data
from bench.report.markdown import cell, link, table
from bench.report.section import RunSummary, Section, analyse_section, group_runs
from bench.report.tables import Table, section_tables
from bench.scoring.metrics import metric_keys

GALLERY_K = 2  # top-k and bottom-k images
GRID_IMAGES = 4
GENERATED_PREFIX = "Generated at "
_NO_COST = Cost(None, None, None, None, None, None, None, None)


@dataclass(frozen=True)
class SectionSummary:
    title: str
    baseline: str
    leaderboard: pd.DataFrame  # plain text cells, for the terminal
    n_runs: int
    trust: tuple[str, ...] = ()  # wins after Holm, detectable differences (adjusted.summary_lines)


@dataclass(frozen=True)
class ReportResult:
    markdown: Path
    html: Path
    csv: Path | None
    json: Path | None
    figures: tuple[Path, ...]
    sections: tuple[SectionSummary, ...]
    notes: tuple[str, ...]
    runs_cached: int = 0  # runs read from .cache/compare rather than from their folders
    runs_total: int = 0


def _rel(target: Path, start: Path) -> str:
    return Path(os.path.relpath(target.resolve(), start.resolve())).as_posix()


def _section_title(section: Section, several: bool) -> str:
    runs = len(section.runs)
    title = f"{section.dataset}: {section.n_images:,} images, {runs} run{'s' if runs != 1 else ''}"
    return f"{title}, split {section.fingerprint}" if several else title


Pick = tuple[str, int, float]  # (label, image index in the section, mean score)


def _picks(section: Section) -> tuple[list[Pick], str]:
    """Top-k and bottom-k images by the mean per-image CLIPScore of the runs (else CIDEr)."""
    score_name = "CLIPScore" if any("CLIPScore" in r.per_image for r in section.runs) else "CIDEr"
    per_run = [r.per_image[score_name] for r in section.runs if score_name in r.per_image]
    mean = np.mean(np.vstack(per_run), axis=0)
    order = sorted(range(section.n_images), key=lambda k: (-mean[k], section.image_ids[k]))
    k = min(GALLERY_K, section.n_images // 2) or 1
    top = [(f"top-{j + 1}", order[j], float(mean[order[j]])) for j in range(k)]
    bottom = [(f"bottom-{j + 1}", order[-1 - j], float(mean[order[-1 - j]])) for j in range(k)][::-1]
    picks = top + [p for p in bottom if p[1] not in {t[1] for t in top}]
    return picks, score_name


def _grid_indices(section: Section) -> list[int]:
    n = min(GRID_IMAGES, section.n_images)
    return sorted({int(round(x)) for x in np.linspace(0, section.n_images - 1, n)})


def _caption(run: RunSummary, image_id: str) -> str:
    return run.data.captions[run.data.image_ids.index(image_id)]


def _examples(section: Section, picks: list[Pick], grid: list[int], score_name: str) -> list[dict[str, Any]]:
    """Full, unescaped text of the images shown in the gallery and grid (for the JSON)."""
    out = []
    roles = [(label, idx) for label, idx, _ in picks] + [("grid", idx) for idx in grid]
    for role, idx in roles:
        image_id = section.image_ids[idx]
        out.append({
            "role": role,
            "image_id": image_id,
            "refs": list(section.refs[idx]),
            "captions": {r.name: _caption(r, image_id) for r in section.runs},
            score_name: {r.name: float(r.per_image[score_name][idx]) for r in section.runs if score_name in r.per_image},
        })
    return out


def _md_table(t: Table) -> str:
    return table(t.frame, t.align)


def _gallery_md(section: Section, picks: list[Pick], score_name: str) -> str:
    parts = []
    for label, idx, score in picks:
        image_id = section.image_ids[idx]
        parts.append(f"**{cell(label)}**: image {cell(image_id)}, mean {score_name} {score:.4f}\n")
        rows = []
        for r in section.runs:
            s = r.per_image.get(score_name)
            rows.append([cell(r.name, 60), cell(_caption(r, image_id), 120), f"{s[idx]:.4f}" if s is not None else "—"])
        rows += [[f"reference {k + 1}", cell(ref, 120), "—"] for k, ref in enumerate(section.refs[idx])]
        parts.append(table(pd.DataFrame(rows, columns=["Run", "Caption", score_name], dtype=object), "llr"))
    return "\n".join(parts)


def _grid_md(section: Section, grid: list[int]) -> str:
    ids = [section.image_ids[i] for i in grid]
    cols = ["Run"] + [f"image {i}" for i in ids]  # headers are escaped by table()
    rows = [[cell(r.name, 60)] + [cell(_caption(r, i), 70) for i in ids] for r in section.runs]
    return table(pd.DataFrame(rows, columns=cols, dtype=object), "l" * len(cols))


def _cost_figure_md(section: Section, path: Path, out: Path, written: list[figs.Written]) -> list[str]:
    """The quality-vs-cost figure, where some run has a $ per 1,000 captions (bench.cost)."""
    priced = figs.quality_vs_cost(section, path)
    if priced is None:
        return []
    written.append(priced)
    return [f"![quality vs $ per 1,000 captions]({link(_rel(priced.path, out.parent))})\n"]


def _section_md(section: Section, index: int, several: bool, out: Path, fig_dir: Path,
                written: list[figs.Written]) -> tuple[str, Table]:
    md: list[str] = [f"## {cell(_section_title(section, several), None)}\n"]
    for note in section.notes:
        md.append(f"Note: {cell(note, None)}\n")
    md.append(f"Baseline for p-values: {cell(section.baseline, None)}.\n")
    tables = section_tables(section)
    for t in tables:
        md.append(f"### {cell(t.title, None)}\n")
        if t.title == "Cost" and not any(r.cost != _NO_COST for r in section.runs):
            md.append("No cost data: these runs record no training, speed or memory figures (external "
                      "systems never do).\n")
            continue
        md.append(_md_table(t))
        if t is tables[0]:
            md.append(adjusted.markdown(section))  # under the leaderboard it qualifies
    prefix = f"s{index + 1}"

    md.append("### Figures\n")
    bars = figs.metric_bars(section, fig_dir / f"{prefix}-metrics.png")
    written.append(bars)
    md.append(f"![metrics with 95% CIs]({link(_rel(bars.path, out.parent))})\n")
    md.extend(_cost_figure_md(section, fig_dir / f"{prefix}-cost.png", out, written))
    lora = [r for r in section.runs if r.data.kind == "lora"]
    loss = figs.loss_curves(lora, fig_dir / f"{prefix}-loss.png")
    if loss is not None:
        written.append(loss)
        md.append(f"![LoRA training loss]({link(_rel(loss.path, out.parent))})\n")
    elif lora:
        md.append("No LoRA run has a train/loss.csv, so there is no loss figure.\n")

    picks, score_name = _picks(section)
    grid = _grid_indices(section)
    have_images = figs.images_available(
        [section.runs[0].data.image_paths[section.runs[0].data.image_ids.index(section.image_ids[i])]
         for i in [p[1] for p in picks] + grid]
    )
    md.append(f"### Gallery: top and bottom images by {score_name}\n")
    if score_name != "CLIPScore":
        md.append("These runs have no per-image CLIPScore, so images are ranked by per-image CIDEr.\n")
    if have_images:
        g = figs.gallery(section, picks, score_name, fig_dir / f"{prefix}-gallery.png")
        written.append(g)
        md.append(f"![gallery]({link(_rel(g.path, out.parent))})\n")
    else:
        md.append("Images are not available for this split (split.json paths missing or unreadable), so the "
                  "gallery and the grid are tables only.\n")
    md.append(_gallery_md(section, picks, score_name))
    attend = [(r, p) for r in section.runs for p in r.data.attend_pngs]
    if attend:
        links = ", ".join(f"[{cell(r.name, 60)}: {cell(p.name, 60)}]({link(_rel(p, out.parent))})" for r, p in attend)
        md.append(f"Attention maps (bench attend): {links}\n")

    md.append("### Side by side: the same images captioned by every run\n")
    if have_images:
        s = figs.side_by_side(section, grid, fig_dir / f"{prefix}-grid.png")
        written.append(s)
        md.append(f"![side by side]({link(_rel(s.path, out.parent))})\n")
    md.append(_grid_md(section, grid))
    return "\n".join(md), tables[0]


def _run_record(r: RunSummary) -> dict[str, Any]:
    d = r.data
    return {
        "run": r.name,
        "kind": d.kind,
        "setting": d.setting,
        "backend": d.backend,
        "prompt": d.prompt,
        "prompt_text": d.prompt_text,
        "model": d.model,
        "folder": f"{d.folder.parent.name}/{d.folder.name}",
        "metrics": {
            m: {
                "value": r.values[m],
                "lo": r.ci[m][0] if m in r.ci else None,
                "hi": r.ci[m][1] if m in r.ci else None,
                "p_vs_baseline": r.p.get(m),
                "p_holm": r.p_holm.get(m),
                "recomputed": r.recomputed.get(m),
            }
            for m in metric_keys()
            if m in r.values
        },
        "degeneration": asdict(r.degeneration),
        "cost": asdict(r.cost),
    }


def _csv_rows(section: Section) -> list[dict[str, Any]]:
    rows = []
    for r in section.runs:
        row: dict[str, Any] = {
            "dataset": section.dataset, "fingerprint": section.fingerprint, "n_images": section.n_images,
            "run": r.name, "kind": r.data.kind, "setting": r.data.setting, "backend": r.data.backend,
            "prompt": r.data.prompt, "prompt_text": r.data.prompt_text, "model": r.data.model,
            "baseline": section.baseline,
        }
        for m in metric_keys():
            row[m] = r.values.get(m)
            row[f"{m} lo"], row[f"{m} hi"] = r.ci.get(m, (None, None))
            row[f"{m} p"] = r.p.get(m)
            row[f"{m} Holm p"] = r.p_holm.get(m)
        row.update({f"degeneration {k}": v for k, v in asdict(r.degeneration).items()})
        row.update({f"cost {k}": v for k, v in asdict(r.cost).items()})
        rows.append(row)
    return rows


def _method_md(n_boot: int, seed: int) -> str:
    return (
        "How to read this report: each metric reads `value [lo, hi]`, the value as recorded by bench score "
        f"and a 95% percentile bootstrap interval over images: {n_boot:,} resamples (seed {seed}) each draw N "
        "images with replacement and recompute the corpus metric on them as its reference implementation "
        "would: CIDEr with its document frequencies recomputed on every resample, BLEU from the summed "
        "clipped counts and lengths, METEOR from the summed per-image statistics of the METEOR 1.5 jar "
        "(aggregated as the jar aggregates them; its corpus score is not a mean of image scores), and "
        "ROUGE-L, CLIPScore and RefCLIPScore, whose corpus values are means of per-image scores, as the "
        "mean over the resampled images. "
        "p: two-sided paired bootstrap p-value against the section's baseline on the same resamples, "
        f"(1 + #{{|d_b - d| >= |d|}}) / (B + 1). {adjusted.METHOD} Bold: the best value of a column. Runs are only compared "
        "within a section (same dataset, split fingerprint and images). Degeneration is measured on "
        "PTB-tokenized captions: a caption repeats if a word 3-gram occurs twice or a word 3+ times in "
        "a row; distinct-n is distinct n-grams over all n-grams of the run.\n"
    )


def build_report(
    runs_root: Path,
    out: Path,
    *,
    dataset: str | None = None,
    runs_glob: str | None = None,
    baseline: str | None = None,
    csv: Path | None = None,
    json_out: Path | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    progress: Callable[[str, int, int, str], None] | None = None,
    now: _dt.datetime | None = None,
    judge: Any | None = None,
    cache: bool = False,
) -> ReportResult:
    """Write the comparison report of the finished runs under runs_root (see module doc).

    `progress(label, done, total, run)` is called while reading and tokenizing the runs and while
    bootstrapping `run` (one label per section). With `cache`, what was read and computed per
    run and per section is kept in (and read from) .cache/compare/ (bench.report.run_cache,
    bench.report.compute_cache).
    `judge` (a bench.judge.JudgeSpec) adds the judge metric; off by default.
    """
    cache_folder = cache_dir() / COMPUTE_CACHE if cache else None
    runs = _selected_runs(Path(runs_root), dataset, runs_glob, baseline, n_boot, cache_folder, progress)
    judged_data, judge_notes = judged.with_judge_scores([r.data for r in runs], judge)
    runs = [with_data(r, d) for r, d in zip(runs, judged_data)]
    groups, mismatch = group_runs(runs)
    sections: list[Section] = []
    store = ComputeCache(cache_folder)
    for group in groups:
        label = f"bootstrap {group[0].data.dataset} ({len(group)} runs)"
        cb = None if progress is None else (lambda done, total, run, label=label: progress(label, done, total, run))
        sections.append(analyse_section(group, baseline=baseline, n_boot=n_boot, seed=seed, progress=cb, cache=store))
        sections[-1].notes[:0] = judged.section_notes(judge_notes, [r.data for r in group])

    out = Path(out)
    now = now or _dt.datetime.now(_dt.timezone.utc)
    written, summaries, datasets = _write_markdown(out, sections, mismatch, n_boot, seed, now)
    notes = tuple(n for ds in datasets for n in mismatch.get(ds, [])) + tuple(n for s in sections for n in s.notes)
    payload = _json_payload(sections, notes, n_boot, seed)
    payload.update(judged.payload(judge))
    titles = [_section_title(s, sum(t.dataset == s.dataset for t in sections) > 1) for s in sections]
    # The page's thumbnails report on the same bars as the bootstrap, with no run to name.
    html_progress = None if progress is None else (lambda label, done, total: progress(label, done, total, ""))
    page = write_html(out.with_suffix(".html"), sections, titles, payload, [w.path for w in written],
                      _stamp(now), html_progress)
    if csv is not None:
        buf = io.StringIO()
        pd.DataFrame([row for s in sections for row in _csv_rows(s)]).to_csv(buf, index=False, lineterminator="\n")
        atomic_write_text(csv, buf.getvalue())
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    return ReportResult(out, page, csv, json_out, tuple(w.path for w in written), tuple(summaries), notes,
                        sum(r.cached for r in runs), len(runs))


def _selected_runs(
    runs_root: Path, dataset: str | None, runs_glob: str | None, baseline: str | None, n_boot: int,
    cache: Path | None, progress: Callable[[str, int, int, str], None] | None,
) -> list[LoadedRun]:
    """The finished runs the report covers; bad options are one-line errors before any work."""
    if n_boot < 1:
        raise BenchError(f"--resamples must be >= 1, got {n_boot}")
    runs = load_runs(runs_root, dataset=dataset, runs_glob=runs_glob, cache=cache, progress=progress)
    if not runs:
        filters = "".join([f" on dataset {dataset!r}" if dataset else "", f" matching {runs_glob!r}" if runs_glob else ""])
        raise BenchError(f"{runs_root}: no finished runs{filters} (a run is finished when its results.json exists)")
    if baseline is not None and baseline not in {r.name for r in runs}:
        raise BenchError(f"--baseline: no finished run named {baseline!r}; runs: {', '.join(r.name for r in runs)}")
    return runs


def _write_markdown(
    out: Path,
    sections: list[Section],
    mismatch: dict[str, list[str]],
    n_boot: int,
    seed: int,
    now: _dt.datetime | None,
) -> tuple[list[figs.Written], list[SectionSummary], list[str]]:
    """The markdown report and its figures; returns the figures, the section summaries and the datasets."""
    fig_dir = out.parent / f"{out.stem}-figures"
    written: list[figs.Written] = []
    body: list[str] = []
    summaries: list[SectionSummary] = []
    datasets = sorted({s.dataset for s in sections})
    for ds in datasets:
        in_ds = [s for s in sections if s.dataset == ds]
        for note in mismatch.get(ds, []):
            body.append(f"Note: {cell(note, None)}\n")
        for s in in_ds:
            k = sections.index(s)
            text, board = _section_md(s, k, len(in_ds) > 1, out, fig_dir, written)
            body.append(text)
            summaries.append(SectionSummary(_section_title(s, len(in_ds) > 1), s.baseline, board.plain, len(s.runs),
                                            adjusted.summary_lines(s)))

    head = [
        f"# Captioning comparison: {cell(', '.join(datasets), None)}\n",
        f"{GENERATED_PREFIX}{_stamp(now)}.\n",
        _method_md(n_boot, seed),
    ]
    markdown = "\n".join(head + body)
    # Figures from an earlier build of this report that this build did not rewrite are stale.
    if fig_dir.is_dir():
        keep = {w.path.name for w in written}
        for old in fig_dir.glob("s*-*.png"):
            if old.name not in keep:
                old.unlink()
    atomic_write_text(out, markdown)
    return written, summaries, datasets


def _stamp(now: _dt.datetime | None) -> str:
    return (now or _dt.datetime.now(_dt.timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _json_payload(sections: list[Section], notes: tuple[str, ...], n_boot: int, seed: int) -> dict[str, Any]:
    """Everything of the report as JSON (`--json`), full caption text included."""
    return {
        "bootstrap": {"resamples": n_boot, "seed": seed, "level": 0.95, "unit": "image"},
        "notes": list(notes),
        "sections": [
            {
                "dataset": s.dataset,
                "fingerprint": s.fingerprint,
                "n_images": s.n_images,
                "baseline": s.baseline,
                "notes": s.notes,
                "comparisons": adjusted.payload(s),
                "runs": [_run_record(r) for r in s.runs],
                "examples": _examples(s, *_picks_and_grid(s)),
            }
            for s in sections
        ],
    }


def _picks_and_grid(section: Section) -> tuple[list[Pick], list[int], str]:
    picks, score_name = _picks(section)
    return picks, _grid_indices(section), score_name
