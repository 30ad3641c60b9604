"""The comparison tables of one section as pandas DataFrames of safe markdown cells.

Every table is sorted by CIDEr (best first); in each metric column the best value is bold;
metric cells read "value [lo, hi]" (95% bootstrap CI); p columns are the paired bootstrap
p-values against the section's baseline, except in a "Zero-shot vs LoRA" table (zero-shot rows
first, each LoRA row against the zero-shot row of its own prompt).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd

from bench.report.markdown import cell
from bench.report.section import RunSummary, Section
from bench.scoring.metrics import p_value_keys
from bench.significance import ALPHA

DASH = "—"


@dataclass(frozen=True)
class Table:
    title: str
    frame: pd.DataFrame  # safe markdown strings
    align: tuple[str, ...]
    plain: pd.DataFrame  # the same table, unescaped and without bold (for the terminal)


def fmt_metric(value: float | None, ci: tuple[float, float] | None, digits: int = 4) -> str:
    if value is None:
        return DASH
    text = f"{value:.{digits}f}"
    return text if ci is None else f"{text} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def fmt_p(p: float | None) -> str:
    if p is None:
        return DASH
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return DASH
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m {sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def _num(value: float | None, spec: str, suffix: str = "") -> str:
    return DASH if value is None else f"{value:{spec}}{suffix}"


def _pct(share: float | None) -> float | None:
    return None if share is None else 100 * share


def _bold_best(values: Sequence[float | None], higher: bool) -> list[bool]:
    present = [v for v in values if v is not None]
    if len(present) < 2:
        return [False] * len(values)
    if min(present) == max(present):
        return [False] * len(values)  # nothing stands out
    best = max(present) if higher else min(present)
    return [v is not None and v == best for v in values]


def _bold(text: str) -> str:
    """Bold the leading number of a cell ("0.4 [0.3, 0.5]" -> "**0.4** [0.3, 0.5]")."""
    head, sep, tail = text.partition(" [")
    return f"**{head}**{sep}{tail}" if text != DASH else text


@dataclass(frozen=True)
class _Col:
    name: str
    text: Callable[[RunSummary], str]  # unescaped display text
    value: Callable[[RunSummary], float | None] | None = None  # for "best" bolding
    higher: bool = True
    align: str = "r"
    escape: int | None = None  # max length for free text (None: numeric, not escaped)


def _build(title: str, rows: Sequence[RunSummary], cols: Sequence[_Col]) -> Table:
    md: dict[str, list[str]] = {}
    pl: dict[str, list[str]] = {}
    for col in cols:
        texts = [col.text(r) for r in rows]
        pl[col.name] = texts
        safe = [cell(t, col.escape) if col.escape is not None else t for t in texts]
        if col.value is not None:
            flags = _bold_best([col.value(r) for r in rows], col.higher)
            safe = [_bold(t) if f else t for t, f in zip(safe, flags)]
        md[col.name] = safe
    return Table(title, pd.DataFrame(md, dtype=object), tuple(c.align for c in cols), pd.DataFrame(pl, dtype=object))


def _metric_cols(section: Section) -> list[_Col]:
    cols = [
        _Col(m, lambda r, m=m: fmt_metric(r.values.get(m), r.ci.get(m)), lambda r, m=m: r.values.get(m))
        for m in section.metrics_present()
    ]
    for m in section.metrics_present(p_value_keys()):
        cols.append(_Col(f"p {m}", lambda r, m=m: "baseline" if r.name == section.baseline else fmt_p(r.p.get(m))))
        cols.append(_Col(f"Holm p {m}", lambda r, m=m: "baseline" if r.name == section.baseline else holm_text(section, r, m)))
    return cols


def holm_text(section: Section, r: RunSummary, metric: str) -> str:
    """The Holm-adjusted p, and on a raw win (above the baseline, p < 0.05) whether it holds."""
    adjusted, p = r.p_holm.get(metric), r.p.get(metric)
    if adjusted is None or p is None:
        return DASH
    diff = r.values.get(metric, 0.0) - section.run(section.baseline).values.get(metric, 0.0)
    if diff > 0 and p < ALPHA:
        return f"{fmt_p(adjusted)} ({'holds' if adjusted < ALPHA else 'lost'})"
    return fmt_p(adjusted)


def _text(name: str, get: Callable[[RunSummary], object], max_len: int = 48) -> _Col:
    return _Col(name, lambda r: DASH if get(r) in (None, "") else str(get(r)), align="l", escape=max_len)


def _cfg(r: RunSummary, *keys: str) -> object:
    node: object = r.data.config
    for k in keys:
        if not isinstance(node, dict):
            return None
        node = node.get(k)
    if isinstance(node, (list, tuple)):
        return ",".join(map(str, node))
    return node


def leaderboard(section: Section) -> Table:
    cols = [
        _Col("#", lambda r: str(section.runs.index(r) + 1)),
        _text("Run", lambda r: r.name, 60),
        _text("Kind", lambda r: r.data.kind, 12),
        *_metric_cols(section),
    ]
    return _build("Leaderboard (all runs)", section.runs, cols)


def zero_shot_table(section: Section) -> Table | None:
    rows = [r for r in section.runs if r.data.kind == "zero-shot"]
    if not rows:
        return None
    cols = [
        _text("Model", lambda r: _model_name(r.data.model), 40),
        _text("Prompt", lambda r: r.data.prompt or r.data.setting),
        _text("Backend", lambda r: r.data.backend, 24),
        _text("Image", lambda r: r.data.image_mode or "", 8),
        _text("Prompt text", lambda r: r.data.prompt_text, 60),
        *_metric_cols(section),
    ]
    return _build("Zero-shot: one row per model x prompt", rows, cols)


def _model_name(model: str) -> str:
    """A hub id as is; a local folder by its name (the full path is in the run's config.json)."""
    return model.rstrip("/").rsplit("/", 1)[-1] if model.startswith(("/", ".", "~")) else model


def lora_table(section: Section) -> Table | None:
    rows = [r for r in section.runs if r.data.kind == "lora"]
    if not rows:
        return None
    cols = [
        _text("Setting", lambda r: r.data.setting),
        _text("Backend", lambda r: r.data.backend, 24),
        _text("r", lambda r: _cfg(r, "lora", "r"), 8),
        _text("alpha", lambda r: _cfg(r, "lora", "alpha"), 8),
        _text("targets", lambda r: _cfg(r, "lora", "targets"), 24),
        _text("epochs", lambda r: _cfg(r, "train", "epochs"), 8),
        _text("lr", lambda r: _cfg(r, "train", "lr"), 10),
        *_metric_cols(section),
    ]
    return _build("LoRA: one row per (setting, backend)", rows, cols)


def external_table(section: Section) -> Table | None:
    rows = [r for r in section.runs if r.data.kind == "external"]
    if not rows:
        return None
    cols = [_text("System", lambda r: r.data.setting, 60), *_metric_cols(section)]
    return _build("External systems", rows, cols)


def cost_table(section: Section) -> Table:
    cols = [
        _text("Run", lambda r: r.name, 60),
        _Col("Trainable params", lambda r: _num(r.cost.trainable, ","), lambda r: r.cost.trainable, higher=False),
        _Col("Trainable %", lambda r: _num(r.cost.trainable_pct, ".3f", "%"), lambda r: r.cost.trainable_pct, higher=False),
        _Col("Train time", lambda r: fmt_duration(r.cost.train_s), lambda r: r.cost.train_s, higher=False),
        _Col("Captioning images/s", lambda r: _num(r.cost.images_per_s, ".2f"), lambda r: r.cost.images_per_s),
        _Col("Peak RSS MB", lambda r: _num(r.cost.peak_rss_mb, ",.0f"), lambda r: r.cost.peak_rss_mb, higher=False),
        _Col("Peak CUDA MB", lambda r: _num(r.cost.peak_cuda_mb, ",.0f"), lambda r: r.cost.peak_cuda_mb, higher=False),
        _Col("Tokens/image", lambda r: _num(r.cost.tokens_per_image, ",.1f"), lambda r: r.cost.tokens_per_image, higher=False),
        _Col("$ per 1,000 captions", lambda r: _num(r.cost.usd_per_1000, ",.4f"), lambda r: r.cost.usd_per_1000, higher=False),
    ]
    return _build("Cost", section.runs, cols)


def degeneration_table(section: Section) -> Table:
    d = lambda r: r.degeneration  # noqa: E731
    cols = [
        _text("Run", lambda r: r.name, 60),
        _Col("Mean length (words)", lambda r: f"{d(r).mean_length:.2f}"),
        _Col("Repeated n-gram", lambda r: f"{100 * d(r).repeated_share:.1f}%", lambda r: d(r).repeated_share, higher=False),
        _Col("distinct-1", lambda r: f"{d(r).distinct_1:.4f}", lambda r: d(r).distinct_1),
        _Col("distinct-2", lambda r: f"{d(r).distinct_2:.4f}", lambda r: d(r).distinct_2),
        _Col("Vocabulary", lambda r: f"{d(r).vocab_size:,}", lambda r: float(d(r).vocab_size)),
        _Col("Empty", lambda r: f"{100 * d(r).empty_share:.1f}%", lambda r: d(r).empty_share, higher=False),
        _Col("Cut at max_new_tokens", lambda r: _num(_pct(d(r).truncated_share), ".1f", "%"),
             lambda r: d(r).truncated_share, higher=False),
    ]
    return _build("Degeneration", section.runs, cols)


def section_tables(section: Section) -> list[Table]:
    """Leaderboard first, then the per-kind tables that have rows, the zero-shot vs LoRA table of
    each tuned VLM, cost and degeneration."""
    tables = [leaderboard(section), zero_shot_table(section), lora_table(section), external_table(section)]
    return [t for t in tables if t is not None] + same_model_tables(section) + [cost_table(section), degeneration_table(section)]


# --- the same VLM zero-shot and LoRA-tuned ---------------------------------------------------------
# For each (backend, model) with a LoRA run that captions with a prompt (a prompt setting with its
# own [lora] table): that model's zero-shot rows and its LoRA rows in one table. A LoRA row's
# p-values are paired bootstrap p-values against the zero-shot row of the SAME prompt text, so the
# adapter is the only difference; cost columns as in the cost table.

def zero_shot_partner(run: RunSummary, zero_shot: Sequence[RunSummary]) -> RunSummary | None:
    """The zero-shot run of the same model captioning with the same prompt text, if any."""
    same = [z for z in zero_shot if z.data.prompt_text == run.data.prompt_text]
    return min(same, key=lambda z: z.name) if same else None


def _model_groups(section: Section) -> list[tuple[str, str, list[RunSummary], list[RunSummary]]]:
    """(backend, model, zero-shot rows, LoRA rows) for every model tuned with a prompt."""
    groups: dict[tuple[str, str], tuple[list[RunSummary], list[RunSummary]]] = {}
    for r in section.runs:  # already sorted by CIDEr
        if r.data.kind not in ("zero-shot", "lora"):
            continue
        zero, tuned = groups.setdefault((r.data.backend, r.data.model), ([], []))
        if r.data.kind == "zero-shot":
            zero.append(r)
        elif r.data.prompt_text:  # a LoRA captioner has no prompt: not a tuned VLM
            tuned.append(r)
    return [(b, m, z, t) for (b, m), (z, t) in sorted(groups.items()) if t]


def _p_text(section: Section, r: RunSummary, partner: RunSummary | None, metric: str) -> str:
    if r.data.kind == "zero-shot":
        return "reference"
    if partner is None or section.boot is None:
        return DASH
    return fmt_p(section.boot.p_value(r.name, partner.name, metric))


def same_model_table(section: Section, backend: str, model: str, zero: list[RunSummary], tuned: list[RunSummary]) -> Table:
    partners = {r.name: zero_shot_partner(r, zero) for r in tuned}
    rows = [*zero, *tuned]

    def vs(r: RunSummary) -> str:
        if r.data.kind == "zero-shot":
            return DASH
        partner = partners[r.name]
        return partner.name if partner is not None else "no zero-shot run of this prompt"

    cols = [
        _text("Run", lambda r: r.name, 60),
        _text("Kind", lambda r: r.data.kind, 12),
        _text("Prompt", lambda r: r.data.prompt, 32),
        _text("LoRA r", lambda r: _cfg(r, "lora", "r") if r.data.kind == "lora" else None, 8),
        _text("targets", lambda r: _cfg(r, "lora", "targets") if r.data.kind == "lora" else None, 24),
        _text("epochs", lambda r: _cfg(r, "train", "epochs") if r.data.kind == "lora" else None, 8),
        *[
            _Col(m, lambda r, m=m: fmt_metric(r.values.get(m), r.ci.get(m)), lambda r, m=m: r.values.get(m))
            for m in section.metrics_present()
        ],
        _text("p vs", vs, 60),
        *[
            _Col(f"p {m}", lambda r, m=m: _p_text(section, r, partners.get(r.name), m))
            for m in section.metrics_present(p_value_keys())
        ],
        _Col("Trainable params", lambda r: _num(r.cost.trainable, ",")),
        _Col("Trainable %", lambda r: _num(r.cost.trainable_pct, ".3f", "%")),
        _Col("Train time", lambda r: fmt_duration(r.cost.train_s)),
        _Col("Peak RSS MB", lambda r: _num(r.cost.peak_rss_mb, ",.0f")),
        _Col("Peak CUDA MB", lambda r: _num(r.cost.peak_cuda_mb, ",.0f")),
    ]
    return _build(f"Zero-shot vs LoRA: {backend} ({model})", rows, cols)


def same_model_tables(section: Section) -> list[Table]:
    """One table per model that has both kinds of rows (or LoRA rows with a prompt only)."""
    return [same_model_table(section, *group) for group in _model_groups(section)]
