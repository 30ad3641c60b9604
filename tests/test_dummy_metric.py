"""Adding a metric is its compute class plus one row of bench.scoring.metrics.METRICS: with the
row below (and nothing else), `--metrics` and `scoring.metrics` accept it, the scorer computes
it, metrics.json / results.json record it, and `bench compare` shows it with a bootstrap CI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.errors import BenchError
from bench.scoring import metrics as table


class WordCount:
    """The dummy metric: words in the (tokenized) caption; the corpus value is their mean."""

    names = ("Words",)

    def compute_score(self, gts: dict[str, list[str]], res: dict[str, list[str]]) -> tuple[float, list[float]]:
        scores = [float(len(res[k][0].split())) for k in gts]
        return sum(scores) / len(scores), scores

    def close(self) -> None:
        pass


ROW = table.MetricSpec("Words", "words", f"{__name__}:WordCount", "words per caption", "0-inf", "mean",
                       higher_is_better=True, default=False, headline=7)


@pytest.fixture
def with_dummy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(table, "METRICS", (*table.METRICS, ROW))


def test_the_row_is_all_the_parsers_need(with_dummy: None) -> None:
    assert table.parse_metrics("cider,words") == ("cider", "words")
    assert "words" not in table.default_families()  # default=False: scored only when asked
    assert table.headline_keys()[-1] == "Words"


def test_without_the_row_the_metric_is_unknown() -> None:
    with pytest.raises(BenchError, match=r"^--metrics: unknown metric 'words'; choose from bleu, "):
        table.parse_metrics("words")


def test_a_setting_may_name_it(with_dummy: None, tmp_path: Path) -> None:
    from bench.settings import load_setting

    path = tmp_path / "counted.toml"
    path.write_text('prompt = "brief"\n[scoring]\nmetrics = ["cider", "words"]\n')
    assert load_setting(path).scoring.metrics == ("cider", "words")


def test_scored_recorded_and_reported(with_dummy: None, tmp_path: Path, shared_data: Path) -> None:
    from bench.report import build_report
    from bench.run.folder import MetricsRecord, RunFolder
    from bench.scoring.scorer import Scorer
    from bench.testing.run_folders import flickr8k_samples, write_run

    samples = flickr8k_samples(shared_data, 12)
    refs = {s["image_id"]: s["refs"][1:] for s in samples}
    runs = tmp_path / "runs"
    for name, pick in (("first", 0), ("short", None)):
        captions = {s["image_id"]: s["refs"][0] if pick == 0 else "a dog" for s in samples}
        with Scorer(metrics=("cider", "words")) as scorer:
            scored = MetricsRecord.of(scorer.score(captions, refs))
        assert list(scored.corpus) == ["CIDEr", "Words"]  # the table's order
        folder = write_run(runs, setting=name, backend="external", kind="external", dataset="flickr8k-1k",
                           fingerprint="f", samples=[{**s, "refs": refs[s["image_id"]]} for s in samples],
                           captions=captions, corpus=scored.corpus, per_image=scored.per_image)
        assert RunFolder(folder).read_results().metrics["Words"] == scored.corpus["Words"]
    assert RunFolder(runs / "short" / "external").read_results().metrics["Words"] == 2.0

    out, js = tmp_path / "report.md", tmp_path / "report.json"
    build_report(runs, out, json_out=js, n_boot=50)
    header = next(line for line in out.read_text().splitlines() if line.startswith("| \\# | Run"))
    cols = header.split(" | ")
    assert "Words" in cols and cols.index("Words") == cols.index("ROUGE-L") + 1  # headline position 7
    words = {r["run"]: r["metrics"]["Words"] for r in json.loads(js.read_text())["sections"][0]["runs"]}
    assert words["short/external"]["value"] == 2.0 and words["short/external"]["lo"] == 2.0
    first = words["first/external"]
    assert first["lo"] < first["value"] < first["hi"]  # a bootstrap interval around the mean
