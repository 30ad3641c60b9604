"""`bench list [settings|prompts|datasets|runs|backends]`: what exists, as tables that fit the
terminal (bench.commands.fit): `bench list` an overview of every section, one line a row;
`bench list SECTION` that section's table with more columns and two lines a cell.

Nothing here imports torch: backends are rows of `bench.backends.table`.
A broken file is shown as a row with its error instead of hiding the rest of the list.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from bench import paths
from bench.commands.fit import Cell, Col, fit_table
from bench.errors import BenchError

SECTIONS = ("settings", "prompts", "datasets", "runs", "backends")


def _what(s: Any) -> str:
    targets = s.lora.targets if isinstance(s.lora.targets, str) else ",".join(s.lora.targets)
    lora = f"r={s.lora.r} {targets}, {s.train.epochs} ep, lr {s.train.lr:g}"
    if s.prompts:
        return f"sweep of {len(s.prompts)} prompts"
    if s.prompt:  # zero-shot, or the VLM LoRA-trained first (a [lora] table in the setting)
        model = s.models[s.backends[0]].model if s.backends and s.backends[0] in s.models else ""
        text = f"prompt {s.prompt}" + (f", {model}" if model and s.backends == ("vlm",) else "")
        return text + (f" after LoRA {lora}" if s.vlm_lora else "")
    g = s.generation
    decode = f"beam {g.num_beams}" if g.strategy == "beam" else "greedy"
    return f"{lora}, {decode}"


def _lines(detail: bool) -> int:
    """Lines a free-text cell may take: one in the overview, two in a section's own table."""
    return 2 if detail else 1


def settings_table(width: int = 80, detail: bool = False) -> Table:
    from bench.settings import expanded, file_label, load_setting, setting_files

    n = _lines(detail)
    cols = [Col("name", middle=True, want=24, weight=1.5), Col("group", drop=4), Col("backends", lines=n, want=8),
            Col("what", lines=n, want=16, drop=2, weight=1.5), Col("dataset", drop=5),
            Col("description", lines=n, want=16 if detail else 6, drop=3, weight=2)]
    if not detail:
        cols.pop(4)  # the overview leaves the dataset to `bench list settings`
    rows: list[list[Cell]] = []
    for path in setting_files():
        try:
            s = load_setting(path)
        except BenchError as exc:
            row: list[Cell] = [path.stem, "", "", ("invalid", "red"), "", (str(exc), "red")]
            rows.append(row if detail else row[:4] + row[5:])
            continue
        row = [s.name, s.group, ", ".join(s.backends), _what(s), s.data.dataset, s.description]
        rows.append(row if detail else row[:4] + row[5:])
        runs = expanded([s])
        if runs != [s]:  # a sweep: its runs, listed under it by what follows the sweep's name
            for one in runs:
                sub = one.name.removeprefix(f"{s.name}--")
                row = [(f"↳ {sub}", "dim"), "", ", ".join(one.backends), _what(one), one.data.dataset, ""]
                rows.append(row if detail else row[:4] + row[5:])
    return fit_table(f"settings ({file_label(paths.settings_dir())})", cols, rows, width)


def prompts_table(width: int = 80, detail: bool = False) -> Table:
    from bench.prompts import load_prompt, prompt_names

    n = _lines(detail)
    cols = [Col("name", want=24), Col("template", lines=n, want=30, weight=2), Col("source", lines=n, want=16, drop=1)]
    rows: list[list[Cell]] = []
    for name in prompt_names():
        try:
            p = load_prompt(name)
        except BenchError as exc:
            rows.append([name, (str(exc), "red"), ""])
            continue
        rows.append([p.name, p.template.replace("\n", "\\n"), p.source])
    return fit_table("prompts", cols, rows, width)


def datasets_table(width: int = 80, detail: bool = False) -> Table:
    """Declared datasets; only their TOML is read (loading one may generate synthetic data)."""
    import tomllib

    from bench.data.dataset import dataset_path, list_datasets

    cols = [Col("name", want=16), Col("format", drop=2), Col("description", lines=_lines(detail), want=30)]
    rows: list[list[Cell]] = []
    for name in list_datasets():
        try:
            raw = tomllib.loads(dataset_path(name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, BenchError) as exc:
            rows.append([name, "", (str(exc).splitlines()[0], "red")])
            continue
        rows.append([name, str(raw.get("format", "")), str(raw.get("description", ""))])
    if not detail:
        cols, rows = [cols[0], cols[2]], [[r[0], r[2]] for r in rows]
    return fit_table(f"datasets ({_label(paths.datasets_dir())})", cols, rows, width)


def _label(path: Any) -> str:
    from bench.settings import file_label

    return file_label(path)


def runs_table(width: int = 80, detail: bool = False) -> Table:
    from bench.run import list_runs, run_label

    colors = {"complete": "green", "partial": "yellow", "empty": "dim"}
    cols = [Col("run", middle=True, want=30, weight=3), Col("status"), Col("kind", drop=3), Col("images", justify="right", drop=2),
            Col("dataset", drop=4), Col("CIDEr", justify="right"), Col("CLIPScore", justify="right", drop=1)]
    rows: list[list[Cell]] = []
    for info in list_runs():
        m = info.metrics or {}
        rows.append([
            info.name, (info.status, colors[info.status]), info.kind or "", str(info.n_predictions), info.dataset or "",
            *(f"{m[k]:.4f}" if isinstance(m.get(k), (int, float)) else "-" for k in ("CIDEr", "CLIPScore")),
        ])
    return fit_table(f"runs ({run_label(paths.runs_dir())}/<setting>/<backend>)", cols, rows, width)


def backends_table(width: int = 80, detail: bool = False) -> Table:
    from bench.backends.table import backend_table, ordered_backends

    catalog = backend_table()
    cols = [Col("name", want=12), Col("kind", want=9), Col("default model", middle=True, weight=2),
            Col("module", middle=True, drop=1)]
    rows: list[list[Cell]] = []
    for name in ordered_backends(list(catalog)):
        info = catalog[name]
        rows.append([name, "LoRA" if info.supports_lora else "zero-shot", info.default_model or "", info.module])
    return fit_table("backends", cols, rows, width)


TABLES = {
    "settings": settings_table,
    "prompts": prompts_table,
    "datasets": datasets_table,
    "runs": runs_table,
    "backends": backends_table,
}


def list_(
    what: Annotated[
        str | None, typer.Argument(help="settings, prompts, datasets, runs or backends (default: all).")
    ] = None,
) -> None:
    """List settings, prompts, datasets, runs (with status) and backends."""
    if what is not None and what not in TABLES:
        raise BenchError(f"bench list {what}: unknown section; choose one of {', '.join(SECTIONS)}")
    console = Console(highlight=False)
    # One section: its own table in full detail (two lines a cell); all: the one-line overview.
    for name in [what] if what else SECTIONS:
        console.print(TABLES[name](console.width, detail=what is not None))
