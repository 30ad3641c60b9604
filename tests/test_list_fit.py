"""`bench list` fits the terminal: at 80 and 140 columns every column of every table is at least
6 characters wide, no line is wider than the terminal and no row takes more than 2 lines; and
the fitting helper shortens names in the middle and free text at its end."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from bench.cli import app
from bench.commands.fit import MIN_WIDTH, Col, clip_lines, fit_table, shorten
from bench.testing.explorer_runs import explorer_runs

VIEWS = ([], ["settings"], ["runs"], ["prompts"], ["datasets"], ["backends"])


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory: pytest.TempPathFactory):
    """Finished runs with long generated names, so the runs table has something to squeeze."""
    root = tmp_path_factory.mktemp("list")
    explorer_runs(root / "runs", root / "images", 6, 2)
    long = root / "runs" / "vlm_small_sweep--lmms_eval_caption--HuggingFaceTB__SmolVLM-256M-Instruct"
    (root / "runs" / "run00").rename(long)
    return root / "runs"


def _tables(output: str) -> list[tuple[list[int], list[list[str]]]]:
    """(column widths, body lines split into cells) of each box-drawn table in the output."""
    tables, current = [], None
    for line in output.splitlines():
        if line.startswith("┏"):
            current = ([len(seg) - 2 for seg in line[1:-1].split("┳")], [])  # minus the padding
            tables.append(current)
        elif line.startswith("│") and current is not None:
            current[1].append(line[1:-1].split("│"))
    return tables


@pytest.mark.parametrize("columns", [80, 140])
@pytest.mark.parametrize("view", VIEWS, ids=lambda v: " ".join(v) or "all")
def test_every_view_fits(view: list[str], columns: int, runs_root, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_RUNS", str(runs_root))
    result = CliRunner().invoke(app, ["list", *view], env={"COLUMNS": str(columns), "BENCH_RUNS": str(runs_root)})
    assert result.exit_code == 0, result.output
    tables = _tables(result.output)
    assert len(tables) == (5 if not view else 1)
    assert max(len(line) for line in result.output.splitlines()) <= columns
    for widths, lines in tables:
        assert min(widths) >= MIN_WIDTH, (widths, result.output)
        assert lines, result.output
        # A row's continuation lines have an empty first cell (names never wrap): at most one.
        continued = [not cells[0].strip() for cells in lines]
        assert not any(a and b for a, b in zip(continued, continued[1:])), result.output
        assert not continued[0]


def test_sweep_runs_are_listed_under_their_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    result = CliRunner().invoke(app, ["list", "settings"], env={"COLUMNS": "140"})
    assert "↳ brief--" in result.output and "↳ lmms_eval_c" in result.output
    assert "vlm_small_sweep--brief" not in result.output


def test_long_run_names_are_shortened_in_the_middle(runs_root, monkeypatch: pytest.MonkeyPatch) -> None:
    result = CliRunner().invoke(app, ["list", "runs"], env={"COLUMNS": "80", "BENCH_RUNS": str(runs_root)})
    row = next(line for line in result.output.splitlines() if "vlm_small" in line)
    name = row.split("│")[1].strip()
    assert "…" in name and name.startswith("vlm_small") and name.endswith("/vlm")


def test_shorten_and_clip() -> None:
    assert shorten("abcdefghij", 5) == "abcd…"
    assert shorten("abcdefghij", 5, middle=True) == "ab…ij"
    assert shorten("short", 9) == "short"
    assert clip_lines("one two three four five six", 9, 2) == "one two\nthree fo…"
    assert clip_lines("one two", 9, 2) == "one two"


def test_optional_columns_drop_before_any_is_narrower_than_the_minimum() -> None:
    from rich.console import Console

    cols = [Col("name"), Col("a", drop=2), Col("b", drop=1), Col("c")]
    rows = [["x" * 30, "y" * 30, "z" * 30, "w" * 30]]
    console = Console(width=24, record=True)
    console.print(fit_table("t", cols, rows, 24))
    widths, _ = _tables(console.export_text())[0]
    assert len(widths) == 2 and min(widths) >= MIN_WIDTH  # a and b dropped, the highest drop first
