"""A clone without ../shared: skips for lack of it are summarised in one line at the end of the
run (tests/conftest.py's pytest_terminal_summary), under xdist too; other skips keep their own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.testing import shared
from conftest import REPO

PROBE = "tests/shared_probe.py"
LINE_START = "tests skipped for lack of ../shared"


def _pytest(*args: str, data: Path, models: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "BENCH_SHARED_DATA": str(data), "BENCH_SHARED_MODELS": str(models), "COLUMNS": "80",
           "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", PROBE, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("xdist", [["-p", "no:xdist"], ["-n", "2"]], ids=["one-process", "xdist"])
def test_one_summary_line_for_the_skips_without_shared(tmp_path: Path, xdist: list[str]) -> None:
    proc = _pytest(*xdist, data=tmp_path / "no-data", models=tmp_path / "no-models")
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert out.count(LINE_START) == 1, out
    summary = " ".join(out[out.index(f"3 {LINE_START}"):].split("\n=")[0].split())
    assert f"2 need {tmp_path / 'no-data'} (" in summary and f"1 need {tmp_path / 'no-models'} (" in summary
    assert "BENCH_SHARED_DATA and BENCH_SHARED_MODELS" in summary
    assert "not found" not in out  # the per-test reasons stay out of the short summary...
    assert "no GPU here, a reason of its own" in out  # ...other reasons stay in it
    assert "1 passed, 4 skipped" in out  # the count still includes every skip
    assert all(len(line) <= 80 or str(tmp_path) in line for line in out.splitlines())  # long paths stay whole


def test_no_summary_line_when_shared_is_there(tmp_path: Path, stand_in_data: Path) -> None:
    models = tmp_path / "models" / "google__flan-t5-base"
    models.mkdir(parents=True)
    (models / "config.json").write_text("{}")
    proc = _pytest("-p", "no:xdist", data=stand_in_data, models=tmp_path / "models")
    assert proc.returncode == 0 and "4 passed, 1 skipped" in proc.stdout, proc.stdout + proc.stderr
    assert LINE_START not in proc.stdout


def test_skip_reasons_are_tagged_by_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_SHARED_DATA", str(tmp_path / "d"))
    monkeypatch.setenv("BENCH_SHARED_MODELS", str(tmp_path / "m"))
    data, models = shared.data_missing("flickr8k-1k"), shared.models_missing("x/config.json")
    assert data == f"needs ../shared/data: {tmp_path / 'd' / 'flickr8k-1k'} not found (set BENCH_SHARED_DATA)"
    assert shared.skip_kind(f"Skipped: {data}") == "data" and shared.skip_kind(str(models)) == "models"
    assert shared.skip_kind("needs a CUDA GPU") is None and shared.summary([]) == []
    assert shared.skip_kind(f"Skipped: {tmp_path / 'm'} is empty") == "models"  # an ad-hoc reason naming the folder
    assert shared.skip_kind("shared data not found (set BENCH_SHARED_DATA)") == "data"
    (tmp_path / "d" / "flickr8k-1k").mkdir(parents=True)
    assert shared.data_missing("flickr8k-1k") is None and shared.need_data("flickr8k-1k") == tmp_path / "d"
