"""`bench compare` end to end on real published system outputs recorded with `bench score --as-run`:
the report ranks the systems with CIs, and its numbers equal pycocoevalcap's on each file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from bench.cli import main
from bench.paths import shared_data_dir
from bench.report.markdown import cell
from bench.testing import shared

SYSTEMS = ("magic", "zerocap", "top_k_run_1")
MAGIC = shared_data_dir() / "external" / "magic-flickr30k"
REPO = Path(__file__).resolve().parent.parent
pytestmark = shared.skip_without_data("external/magic-flickr30k")


def _cli(*args: str) -> int:
    try:
        main(list(args))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def _pycocoevalcap(system: str) -> dict[str, float]:
    """The reference numbers, straight from pycocoevalcap on the published file."""
    items = json.loads((MAGIC / f"{system}.json").read_text())
    tok = PTBTokenizer()
    gts = tok.tokenize({str(k): [{"caption": c} for c in x["captions"]] for k, x in enumerate(items)})
    res = tok.tokenize({str(k): [{"caption": x["prediction"]}] for k, x in enumerate(items)})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out = {f"BLEU-{k + 1}": float(bleu[k]) for k in range(4)}
    out["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    out["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
    return out


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """runs/<system>/external for each system, recorded by `bench score --as-run`."""
    runs = tmp_path_factory.mktemp("compare") / "runs"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENCH_RUNS", str(runs))
        for system in SYSTEMS:
            f = str(MAGIC / f"{system}.json")
            assert _cli("score", f, "--refs", f, "--metrics", "bleu,rouge,cider", "--as-run", system) == 0
        yield runs


@pytest.fixture(scope="module")
def compared(registry: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, dict]:
    out = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENCH_RUNS", str(registry))
        code = _cli("compare", "--out", str(out / "magic.md"), "--json", str(out / "magic.json"),
                    "--csv", str(out / "magic.csv"), "--resamples", "200")
    assert code == 0
    return out, (out / "magic.md").read_text(), json.loads((out / "magic.json").read_text())


def test_report_numbers_equal_pycocoevalcap_on_each_file(compared):
    out, md, data = compared
    (section,) = data["sections"]
    assert section["dataset"] == "magic-flickr30k" and section["n_images"] == 1000
    runs = {r["run"]: r for r in section["runs"]}
    assert set(runs) == {f"{s}/external" for s in SYSTEMS}
    for system in SYSTEMS:
        expected = _pycocoevalcap(system)
        got = runs[f"{system}/external"]["metrics"]
        for metric, value in expected.items():
            assert got[metric]["value"] == value, (system, metric)  # exactly, in the JSON
            # the bootstrap's own full-sample recomputation agrees too
            assert got[metric]["recomputed"] == pytest.approx(value, abs=1e-9)
            assert got[metric]["lo"] < value < got[metric]["hi"]
        # and to the printed precision in the markdown
        row = next(line for line in md.splitlines() if line.startswith("| ") and f"| {cell(system)}/external |" in line)
        assert f"{expected['CIDEr']:.4f}" in row and f"{expected['BLEU-4']:.4f}" in row


def test_report_ranks_the_systems_by_cider_with_p_values(compared):
    out, md, data = compared
    runs = data["sections"][0]["runs"]
    cider = [r["metrics"]["CIDEr"]["value"] for r in runs]
    assert cider == sorted(cider, reverse=True)
    best = runs[0]["run"]
    assert data["sections"][0]["baseline"] == best  # no zero-shot runs: the best run
    assert runs[0]["metrics"]["CIDEr"]["p_vs_baseline"] == 1.0
    assert all(r["metrics"]["CIDEr"]["p_vs_baseline"] < 1.0 for r in runs[1:])
    board = md.split("### Leaderboard (all runs)")[1].split("###")[0]
    order = [line.split(" | ")[1] for line in board.splitlines() if line.startswith("| ") and "/external" in line]
    assert order == [cell(r["run"]) for r in runs]
    assert "### External systems" in md
    df = pd.read_csv(out / "magic.csv")
    assert list(df["run"]) == [r["run"] for r in runs]


def test_cli_prints_the_leaderboard_and_fails_cleanly_without_runs(
    registry: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.setenv("BENCH_RUNS", str(registry))
    monkeypatch.setenv("BENCH_HOME", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "200")
    assert _cli("compare", "--resamples", "20", "--baseline", "zerocap/external") == 0
    stdout = capsys.readouterr().out
    assert "zerocap/external" in stdout and "baseline" in stdout
    report = tmp_path / "reports" / "magic-flickr30k.md"  # default: reports/<dataset>.md
    assert f"report: {report}" in stdout.replace("\n", "")
    assert "Baseline for p-values: zerocap/external." in report.read_text()

    # the real CLI: one line on stderr, exit code 2, no traceback
    env = {**os.environ, "BENCH_RUNS": str(tmp_path / "none"), "BENCH_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "bench", "compare"], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "no finished runs" in lines[0] and "Traceback" not in done.stderr

    assert _cli("compare", "--baseline", "nope/external") == 2
    assert "--baseline: no finished run named 'nope/external'" in capsys.readouterr().err.replace("\n", "")
