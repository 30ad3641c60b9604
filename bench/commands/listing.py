"""`bench list [settings|prompts|datasets|runs|backends]`: what exists, as rich tables.

Nothing here imports torch: backends are rows of `bench.backends.table`.
A broken file is shown as a row with its error instead of hiding the rest of the list.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bench import paths
from bench.errors import BenchError

SECTIONS = ("settings", "prompts", "datasets", "runs", "backends")


def _short(text: str, width: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


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


def settings_table() -> Table:
    from bench.settings import expanded, file_label, load_setting, setting_files

    table = Table(title=f"settings ({escape(file_label(paths.settings_dir()))})", header_style="bold")
    table.add_column("name", no_wrap=True)
    for col in ("group", "backends", "what", "description"):
        table.add_column(col)
    for path in setting_files():
        try:
            s = load_setting(path)
        except BenchError as exc:
            table.add_row(escape(path.stem), "", "", "[red]invalid[/]", f"[red]{escape(str(exc))}[/]")
            continue
        table.add_row(
            escape(s.name), escape(s.group), escape(", ".join(s.backends)), escape(_what(s)), escape(_short(s.description))
        )
        runs = expanded([s])
        if runs != [s]:  # a sweep: the runs it expands into, one per (prompt, model)
            for one in runs:
                table.add_row(f"  [dim]↳ {escape(one.name)}[/]", "", escape(", ".join(one.backends)), escape(_what(one)), "")
    return table


def prompts_table() -> Table:
    from bench.prompts import load_prompt, prompt_names

    table = Table(title="prompts", header_style="bold")
    table.add_column("name", no_wrap=True)
    for col in ("template", "source"):
        table.add_column(col)
    for name in prompt_names():
        try:
            p = load_prompt(name)
        except BenchError as exc:
            table.add_row(escape(name), f"[red]{escape(str(exc))}[/]", "")
            continue
        table.add_row(escape(p.name), escape(_short(p.template.replace("\n", "\\n"))), escape(_short(p.source, 50)))
    return table


def datasets_table() -> Table:
    """Declared datasets; only their TOML is read (loading one may generate synthetic data)."""
    import tomllib

    from bench.data.dataset import dataset_path, list_datasets

    table = Table(title=f"datasets ({escape(_label(paths.datasets_dir()))})", header_style="bold")
    table.add_column("name", no_wrap=True)
    table.add_column("description")
    for name in list_datasets():
        try:
            desc = str(tomllib.loads(dataset_path(name).read_text(encoding="utf-8")).get("description", ""))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, BenchError) as exc:
            table.add_row(escape(name), f"[red]{escape(str(exc).splitlines()[0])}[/]")
            continue
        table.add_row(escape(name), escape(_short(desc, 90)))
    return table


def _label(path: Any) -> str:
    from bench.settings import file_label

    return file_label(path)


def runs_table() -> Table:
    from bench.run import list_runs, run_label

    table = Table(title=f"runs ({escape(run_label(paths.runs_dir()))}/<setting>/<backend>)", header_style="bold")
    table.add_column("run", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("kind")
    table.add_column("images", justify="right")
    table.add_column("dataset")
    table.add_column("CIDEr", justify="right", no_wrap=True)
    table.add_column("CLIPScore", justify="right", no_wrap=True)
    colors = {"complete": "green", "partial": "yellow", "empty": "dim"}
    for info in list_runs():
        m = info.metrics or {}
        table.add_row(
            escape(info.name),
            f"[{colors[info.status]}]{info.status}[/]",
            escape(info.kind or ""),
            str(info.n_predictions),
            escape(info.dataset or ""),
            *(f"{m[k]:.4f}" if isinstance(m.get(k), (int, float)) else "-" for k in ("CIDEr", "CLIPScore")),
        )
    return table


def backends_table() -> Table:
    from bench.backends.table import backend_table, ordered_backends

    catalog = backend_table()
    table = Table(title="backends", header_style="bold")
    table.add_column("name", no_wrap=True)
    for col in ("kind", "default model", "module"):
        table.add_column(col)
    for name in ordered_backends(list(catalog)):
        info = catalog[name]
        table.add_row(
            escape(name), "LoRA" if info.supports_lora else "zero-shot", escape(info.default_model or ""), info.module
        )
    return table


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
    for name in [what] if what else SECTIONS:
        console.print(TABLES[name]())
