"""`bench compare`'s terminal leaderboard fits the terminal: intervals go first, then the p-value
columns, then metrics from the right; the title names what was left out (it is in the report)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from rich.cells import cell_len

from bench.commands.compare import _fit_leaderboard
from bench.testing.run_folders import toy_run

REPO = Path(__file__).resolve().parent.parent


def _board() -> pd.DataFrame:
    return pd.DataFrame({
        "#": ["1", "2"], "Run": ["lora_r8/vit-gpt2", "brief/vlm"],
        "CIDEr": ["1.0722 [0.9, 1.2]", "0.4533 [0.4, 0.5]"], "BLEU-4": ["0.3216 [0.3, 0.4]", "0.2898 [0.2, 0.3]"],
        "ROUGE-L": ["0.5677 [0.5, 0.6]", "0.4931 [0.4, 0.5]"],
        "p CIDEr": ["<0.001", "baseline"], "Holm p CIDEr": ["0.010 (holds)", "baseline"],
    })


@pytest.mark.parametrize("width, columns, left_out", [
    (200, ["#", "Run", "CIDEr", "BLEU-4", "ROUGE-L", "p CIDEr", "Holm p CIDEr"], ""),
    (90, ["#", "Run", "CIDEr", "BLEU-4", "ROUGE-L", "p CIDEr", "Holm p CIDEr"], "95% CIs"),
    (60, ["#", "Run", "CIDEr", "BLEU-4", "ROUGE-L"], "95% CIs, p-values"),
    (45, ["#", "Run", "CIDEr", "BLEU-4"], "95% CIs, p-values, ROUGE-L"),
    (10, ["#", "Run", "CIDEr"], "95% CIs, p-values, BLEU-4, ROUGE-L"),
])
def test_the_leaderboard_drops_what_does_not_fit_in_order(width, columns, left_out):
    got, cells, note = _fit_leaderboard(_board(), width)
    assert (got, note) == (columns, left_out)
    assert all(len(row) == len(columns) for row in cells)
    if "95% CIs" in note:
        assert not any("[" in c for row in cells for c in row)


@pytest.mark.parametrize("width", [80, 200])
def test_bench_compare_output_fits_the_terminal(tmp_path, width):
    runs = tmp_path / "runs"
    for k, setting in enumerate(["brief_and_a_long_prompt_name", "detailed"]):
        toy_run(runs, setting, k + 1)
    toy_run(runs, "lora_rank_32_alpha_64_long_name", 3, kind="lora")
    env = {**os.environ, "BENCH_RUNS": str(runs), "BENCH_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(REPO),
           "COLUMNS": str(width), "BENCH_SHARED_DATA": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "bench", "compare", "--out", str(tmp_path / "r.md"),
                           "--resamples", "20"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    board = [line for line in proc.stdout.splitlines() if line[:1] in "┏┃┡│└"]
    assert board and max(cell_len(line) for line in board) <= width
    header = next(line for line in board if "Run" in line)
    if width == 80:
        assert "CIDEr" in header and "p CIDEr" not in header and "in the report" in proc.stdout
    else:
        assert "Holm p CIDEr" in header


def test_bench_compare_says_how_many_runs_came_from_the_cache(tmp_path):
    runs = tmp_path / "runs"
    toy_run(runs, "brief", 1)
    toy_run(runs, "detailed", 2)
    env = {**os.environ, "BENCH_RUNS": str(runs), "BENCH_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(REPO),
           "BENCH_SHARED_DATA": str(tmp_path)}

    def compare() -> str:
        proc = subprocess.run([sys.executable, "-m", "bench", "compare", "--out", str(tmp_path / "r.md"),
                               "--resamples", "20"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout.replace("\n", "")

    assert "unchanged since an earlier compare" not in compare()
    toy_run(runs, "lora_r8", 3, kind="lora")
    assert f"2 of 3 runs unchanged since an earlier compare, read from {tmp_path / 'cache' / 'compare'}" in compare()
