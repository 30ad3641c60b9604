"""`bench meta`: how far each metric agrees with people on a human-judgment benchmark.

Scores the benchmark's captions with bench's own scorer, prints Kendall's tau (or Pascal-50S's
pairwise accuracy) per metric with bootstrap intervals, and writes a markdown/JSON report and a
figure (default `reports/meta-<benchmark>.md`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table as RichTable

from bench.errors import BenchError
from bench.paths import project_dir, shared_data_dir

DataOption = Annotated[
    str, typer.Option("--data", help="Benchmark: flickr8k-expert, thumb or pascal-50s.", show_default=False)
]
PathOption = Annotated[
    Optional[Path],
    typer.Option("--path", help="The benchmark's file (default: its file under the shared data folder)."),
]
OutOption = Annotated[
    Optional[Path], typer.Option("--out", help="Markdown report (default reports/meta-<benchmark>.md); .json beside it.")
]
ResamplesOption = Annotated[int, typer.Option("--resamples", help="Bootstrap resamples of images.")]
SeedOption = Annotated[int, typer.Option("--seed", help="Bootstrap seed.")]
JudgeOption = Annotated[
    Optional[str],
    typer.Option("--judge", help="Also meta-evaluate the judge metric of this judge file (judges/NAME.toml)."),
]


def _print(console: Console, result) -> None:  # noqa: ANN001 - MetaResult, imported lazily
    from bench.meta.report import best_lines, frame, statistic_label

    board = frame(result, bold=False)
    cells = [[str(v) for v in row] for row in board.itertuples(index=False)]
    widths = [max([len(str(c))] + [len(r[k]) for r in cells]) for k, c in enumerate(board.columns)]
    with_ci = sum(widths) + 3 * len(widths) + 1 <= console.width  # else values only; CIs in the report
    if not with_ci:
        cells = [[c.split(" [")[0] for c in row] for row in cells]
    note = "" if with_ci else " (95% intervals in the report)"
    table = RichTable(title=f"{result.benchmark}: {statistic_label(result.statistic)}{note}", title_justify="left")
    for col in board.columns:
        table.add_column(str(col), justify="left" if col == "Metric" else "right")
    for row in cells:
        table.add_row(*[escape(v) for v in row])
    console.print(table)
    for line in best_lines(result):
        console.print(escape(line), highlight=False, soft_wrap=True)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)


def meta(
    data: DataOption,
    path: PathOption = None,
    out: OutOption = None,
    resamples: ResamplesOption = 1000,
    seed: SeedOption = 0,
    judge: JudgeOption = None,
) -> None:
    """Meta-evaluate the metrics on a human-judgment set: Kendall's tau per metric (as the
    benchmark's papers compute it), bootstrap intervals, a report and a figure."""
    from bench.meta import benchmark, evaluate, score_rows, write_meta_report

    spec = benchmark(data)
    if resamples < 1:
        raise BenchError(f"--resamples must be >= 1, got {resamples}")
    file = path if path is not None else shared_data_dir() / spec.path
    out = out if out is not None else project_dir() / "reports" / f"meta-{spec.name}.md"
    if out.with_suffix(".json").resolve() == Path(file).resolve():
        raise BenchError(f"--out {out}: its JSON {out.with_suffix('.json')} would overwrite the benchmark file")
    judge_spec = None
    if judge is not None:
        from bench.judge import load_judge

        judge_spec = load_judge(judge)  # a bad judge file fails before minutes of scoring
    hset = spec.read(file)
    console, err = Console(soft_wrap=True), Console(stderr=True)
    err.print(f"{spec.name}: scoring {hset.n_rows:,} captions with bench's scorer", highlight=False)
    scores = score_rows(hset, progress=err.is_terminal)
    notes: list[str] = []
    if judge_spec is not None:
        from bench.judge import judge_rows

        judged = judge_rows(judge_spec, hset.candidates, hset.refs, progress=err.is_terminal)
        scores[judged.metric] = judged.scores
        notes += judged.notes
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task("bootstrap", total=resamples)
        result = evaluate(hset, spec, scores, n_boot=resamples, seed=seed,
                          progress=lambda done: bar.update(task, completed=done))
    result.notes += notes
    md, js, fig = write_meta_report(result, out)
    _print(console, result)
    console.print(f"report: {md}\nwrote: {js}\nwrote: {fig}", highlight=False, soft_wrap=True)
