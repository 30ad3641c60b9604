"""The meta-evaluation report: markdown, JSON and one figure, the only writer of these files.

    paths = write_meta_report(result, out)   # out.md, out.json, <out stem>-figures/meta.png

Markdown: one table (metric rows x aspect columns, "value [lo, hi]", the best of a column bold)
and one line per aspect naming the metric that agrees best with people. Byte-identical for the
same result (no timestamp); the PNG has no version metadata.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bench.io import atomic_write_bytes, atomic_write_text
from bench.meta.protocol import MetaResult
from bench.report.markdown import cell, link, table

_LABEL = {"tau-c": "Kendall tau-c x 100", "tau-b": "Kendall tau-b x 100", "accuracy": "pairwise accuracy (%)"}


def statistic_label(statistic: str) -> str:
    return _LABEL[statistic]


def fmt(value: float, lo: float, hi: float, digits: int = 3) -> str:
    return f"{value:.{digits}f} [{lo:.1f}, {hi:.1f}]"


def _digits(result: MetaResult) -> int:
    # tau to the third decimal, as the published tables; an accuracy over 1,000 pairs has one.
    return 1 if result.statistic == "accuracy" else 3


def frame(result: MetaResult, bold: bool = True) -> pd.DataFrame:
    """Metric rows x aspect columns of "value [lo, hi]" cells (plain text when bold is False)."""
    rows = []
    for m in result.metrics:
        row = {"Metric": cell(m, 40) if bold else m}
        for a in result.aspects:
            r = result.row(m, a)
            text = fmt(r.value, r.lo, r.hi, _digits(result))
            if bold and result.best(a).metric == m:
                head, _, tail = text.partition(" [")
                text = f"**{head}** [{tail}"
            row[a] = text
        rows.append(row)
    return pd.DataFrame(rows, dtype=object)


def best_lines(result: MetaResult) -> list[str]:
    """Per aspect: the metric that agrees best with people, and whether its lead over the
    runner-up is settled (the paired bootstrap interval of the difference excludes 0)."""
    label = statistic_label(result.statistic)
    lines = []
    for a in result.aspects:
        b = result.best(a)
        line = f"On {result.benchmark} ({a}), {b.metric} agrees best with people: {label} {fmt(b.value, b.lo, b.hi, _digits(result))}"
        margin = result.margins.get(a)
        if margin is not None:
            verdict = "settled" if margin.settled else "not settled: the interval includes 0"
            line += (f"; ahead of {margin.runner_up} by {margin.diff:.{_digits(result)}f} "
                     f"[{margin.lo:.1f}, {margin.hi:.1f}] (paired bootstrap), {verdict}")
        lines.append(line + ".")
    return lines


def markdown(result: MetaResult, figure: Path | None, out: Path) -> str:
    label = statistic_label(result.statistic)
    unit = "pairs" if result.statistic == "accuracy" else "rated captions"
    n = result.rows[0].n if result.statistic != "accuracy" else sum(result.row(result.metrics[0], a).n for a in result.aspects)
    lines = [
        f"# Meta-evaluation: {cell(result.benchmark, None)}\n",
        f"{label} between each metric's per-caption score and the human judgments: {n:,} {unit}, "
        f"{result.n_images:,} resampled units. Protocol: {cell(result.protocol, None)}. Text metrics by "
        "bench's own scorer (pycocoevalcap) on the whole set in one call, so CIDEr's document "
        f"frequencies come from every row's references. Intervals: 95% percentile bootstrap, "
        f"{result.n_boot:,} resamples (seed {result.seed}) of whole images (all ratings of an image "
        "together; for Pascal-50S, pairs). Bold: the best metric of a column.\n",
        table(frame(result), "l" + "r" * len(result.aspects)),
    ]
    if result.statistic == "accuracy":
        ties = ", ".join(
            f"{m} {sum(result.row(m, a).ties for a in result.aspects)}" for m in result.metrics
        )
        lines.append(f"Pairs a metric scores equal count for the first caption (as in the published code): {cell(ties, None)}.\n")
    lines += [f"{cell(s, None)}\n" for s in best_lines(result)]
    lines += [f"Note: {cell(n_, None)}\n" for n_ in result.notes]
    if figure is not None:
        rel = Path(figure).resolve().relative_to(out.parent.resolve()).as_posix()
        lines.append(f"![{cell(label, None)} with 95% intervals]({link(rel)})\n")
    return "\n".join(lines)


def payload(result: MetaResult) -> dict:
    body = asdict(result)
    body["best"] = {a: result.best(a).metric for a in result.aspects}
    for a, margin in result.margins.items():
        body["margins"][a]["settled"] = margin.settled
    return body


def figure(result: MetaResult, path: Path) -> Path:
    """Grouped bars (one group per aspect, one bar per metric) with 95% interval whiskers."""
    fig = Figure(figsize=(max(6.0, 1.6 + 1.4 * len(result.aspects) * max(1, len(result.metrics)) / 3), 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(result.metrics))
    x = np.arange(len(result.aspects))
    for k, m in enumerate(result.metrics):
        rows = [result.row(m, a) for a in result.aspects]
        values = np.array([r.value for r in rows])
        err = np.array([[r.value - r.lo for r in rows], [r.hi - r.value for r in rows]])
        ax.bar(x + (k - (len(result.metrics) - 1) / 2) * width, values, width, yerr=err, capsize=3, label=m)
    ax.set_xticks(x, list(result.aspects))
    ax.set_ylabel(statistic_label(result.statistic))
    ax.set_title(f"{result.benchmark}: agreement with people (95% bootstrap intervals)")
    ax.legend(fontsize=8, ncol=min(len(result.metrics), 6))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    atomic_write_bytes(path, buf.getvalue())
    return path


def write_meta_report(result: MetaResult, out: Path) -> tuple[Path, Path, Path]:
    """Write out (markdown), out with .json, and the figure; returns the three paths."""
    out = Path(out)
    fig_path = figure(result, out.parent / f"{out.stem}-figures" / "meta.png")
    json_path = out.with_suffix(".json")
    atomic_write_text(json_path, json.dumps(payload(result), indent=2) + "\n")
    atomic_write_text(out, markdown(result, fig_path, out))
    return out, json_path, fig_path
