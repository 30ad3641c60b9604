"""`bench compare`: tables with bootstrap CIs, paired p-values, cost, degeneration and figures.

Output: by default one report per dataset, `reports/<dataset>.md` (figures in
`reports/<dataset>-figures/`). With `--out FILE` every selected dataset goes into that one file,
one section per dataset (and per split, when runs of a dataset disagree on it). With several
datasets and per-dataset reports, `--csv`/`--json` files get a `-<dataset>` suffix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column
from rich.table import Table as RichTable

from bench.errors import BenchError
from bench.paths import cache_dir, project_dir, runs_dir


def _suffixed(path: Path | None, dataset: str, several: bool) -> Path | None:
    if path is None or not several:
        return path
    return path.with_name(f"{path.stem}-{dataset}{path.suffix}")


RUN_WIDTH = 32  # the Run column folds beyond this; every other column is sized to its cells


def _fit_leaderboard(board, width: int) -> tuple[list[str], list[list[str]], str]:  # noqa: ANN001 - DataFrame
    """The columns and cells of the leaderboard that fit `width`, and a note on what was left
    out: first the intervals go, then the p-value columns, then metrics from the right (the
    metric table's order), keeping # and Run and the first metric."""
    columns = [str(c) for c in board.columns]
    rows = [[str(v) for v in row] for row in board.itertuples(index=False)]
    values = [[c.split(" [")[0] for c in row] for row in rows]

    def fits(cols: list[int], cells: list[list[str]]) -> bool:
        widths = [max([len(columns[k])] + [len(r[k]) for r in cells]) for k in cols]
        widths = [min(w, RUN_WIDTH) if columns[k] == "Run" else w for w, k in zip(widths, cols)]
        return sum(widths) + 3 * len(cols) + 1 <= width

    every = list(range(len(columns)))
    if fits(every, rows):
        return columns, rows, ""
    if fits(every, values):
        return columns, values, "95% CIs"
    p_cols = [k for k, c in enumerate(columns) if c.startswith(("p ", "Holm p "))]
    keep = [k for k in every if k not in p_cols]
    left_out = ["95% CIs"] + (["p-values"] if p_cols else [])
    dropped: list[str] = []
    while len(keep) > 3 and not fits(keep, values):
        dropped.insert(0, columns[keep.pop()])
    return [columns[k] for k in keep], [[row[k] for k in keep] for row in values], ", ".join(left_out + dropped)


def _leaderboard_table(s, console: Console) -> RichTable:  # noqa: ANN001 - SectionSummary
    """The leaderboard as wide as the terminal allows (see _fit_leaderboard); everything left out
    is in the report."""
    board = s.leaderboard.drop(columns=["Kind"])  # the report has it; the terminal is narrow
    columns, cells, left_out = _fit_leaderboard(board, console.width)
    note = f"; {left_out} in the report" if left_out else ""
    table = RichTable(title=f"{s.title} (baseline {s.baseline}{note})", title_justify="left")
    for col in columns:
        wide = {"max_width": RUN_WIDTH} if col == "Run" else {"no_wrap": True}
        table.add_column(col, justify="left" if col == "Run" else "right", overflow="fold", **wide)
    for row in cells:
        table.add_row(*[escape(c) for c in row])
    return table


def _print_result(console: Console, result) -> None:  # noqa: ANN001 - ReportResult, imported lazily
    for s in result.sections:
        console.print(_leaderboard_table(s, console))
        for line in s.trust:
            console.print(escape(line), highlight=False, soft_wrap=True)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    if result.runs_cached:
        from bench.report.compute_cache import FOLDER

        # Why a re-compare is fast: unchanged runs come from the cache (bench.report.run_cache).
        console.print(f"{result.runs_cached} of {result.runs_total} runs unchanged since an earlier compare, read "
                      f"from {cache_dir() / FOLDER}", highlight=False, soft_wrap=True)
    console.print(f"report: {result.markdown}", highlight=False, soft_wrap=True)
    console.print(f"explorer: {result.html}", highlight=False, soft_wrap=True)
    for extra in (result.csv, result.json):
        if extra is not None:
            console.print(f"wrote: {extra}", highlight=False, soft_wrap=True)


def _report_targets(
    root: Path, data: str | None, runs: str | None, baseline: str | None, out: Path | None
) -> tuple[list[tuple[str | None, Path, str | None]], bool]:
    """(dataset, report path, baseline) of each report to write, and whether there are several."""
    from bench.report.load import select_runs

    if out is not None or data is not None:
        return [(data, out or project_dir() / "reports" / f"{data}.md", baseline)], False
    # Only results.json is read here: build_report reads the chosen runs once.
    found = [results for _, results in select_runs(root, runs_glob=runs)]
    if not found:
        where = f" matching {runs!r}" if runs else ""
        raise BenchError(f"{root}: no finished runs{where} (a run is finished when its results.json exists)")
    if baseline is not None and baseline not in {r["run"] for r in found}:
        raise BenchError(f"--baseline: no finished run named {baseline!r}; runs: {', '.join(r['run'] for r in found)}")
    datasets = sorted({r["dataset"] for r in found})
    # Each dataset's report uses --baseline if the run is on that dataset, else its default.
    targets = [
        (ds, project_dir() / "reports" / f"{ds}.md",
         baseline if any(r["run"] == baseline and r["dataset"] == ds for r in found) else None)
        for ds in datasets
    ]
    return targets, len(datasets) > 1


def compare(
    data: Annotated[Optional[str], typer.Option("--data", help="Only runs on this dataset.")] = None,
    runs: Annotated[Optional[str], typer.Option("--runs", help="Only runs whose name (setting/backend) matches this glob.")] = None,
    baseline: Annotated[Optional[str], typer.Option("--baseline", help="Run the p-values compare against (default: the best zero-shot prompt, else the best run).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Markdown report to write (default reports/<dataset>.md).")] = None,
    csv: Annotated[Optional[Path], typer.Option("--csv", help="Also write one CSV row per run.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write everything as JSON (full caption text).")] = None,
    resamples: Annotated[int, typer.Option("--resamples", help="Bootstrap resamples.", min=1)] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Bootstrap seed.")] = 0,
    judge: Annotated[Optional[str], typer.Option("--judge", help="Add the judge metric (CLAIR) of this judge setting (judges/NAME.toml or a path); off by default.")] = None,
) -> None:
    """Compare finished runs: a markdown report with CIs, p-values, cost, degeneration and figures."""
    from bench.report import build_report

    console = Console()
    root = runs_dir()
    judge_spec = None
    if judge is not None:
        from bench.judge import load_judge

        judge_spec = load_judge(judge)  # a bad judge file fails before any work
    targets, several = _report_targets(root, data, runs, baseline, out)

    err = Console(stderr=True)
    # The run being bootstrapped, cut to fit 80 columns beside the section's bar.
    run_column = TextColumn("{task.fields[run]}", table_column=Column(max_width=16, no_wrap=True, overflow="ellipsis"))
    with Progress(TextColumn("{task.description}"), BarColumn(bar_width=8), MofNCompleteColumn(),
                  TimeElapsedColumn(), run_column, console=err, transient=True) as bar:
        tasks: dict[str, int] = {}

        def progress(label: str, done: int, total: int, run: str) -> None:
            # One bar per section; it counts (run, chunk of resamples) steps and names the run.
            if label not in tasks:
                tasks[label] = bar.add_task(label, total=total, run="")
            bar.update(tasks[label], completed=done, total=total, run=escape(run))

        results = []
        for ds, path, base in targets:
            results.append(
                build_report(
                    root,
                    path,
                    dataset=ds,
                    runs_glob=runs,
                    baseline=base,
                    csv=_suffixed(csv, ds or "", several),
                    json_out=_suffixed(json_out, ds or "", several),
                    n_boot=resamples,
                    seed=seed,
                    progress=progress,
                    judge=judge_spec,
                    cache=True,  # a re-compare after one new run costs about that run's work
                )
            )
    for result in results:
        _print_result(console, result)
