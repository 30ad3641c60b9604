"""METEOR intervals from the jar's own statistics: every resample is aggregated as METEOR 1.5 does.

The reference here is the jar itself: its EVAL command, fed the statistics of a (resampled) list
of images, returns the corpus score it would report for that list.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from bench.paths import shared_data_dir
from bench.report.bootstrap import RunInput, bootstrap, resample_counts
from bench.report.meteor import aggregable, corpus_meteor, meteor_from_totals
from bench.scoring.text_metrics import MeteorMetric, tokenize

DATA = shared_data_dir() / "external" / "magic-flickr30k"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="shared data missing")
SYSTEMS = sorted(p.stem for p in DATA.glob("*.json")) if DATA.is_dir() else []
INTERVAL = re.compile(r"(-?\d+\.\d+)\**\s*\[(-?\d+\.\d+), (-?\d+\.\d+)\]")


def _jar_eval(metric: MeteorMetric, stats: np.ndarray) -> tuple[list[float], float]:
    """The jar's EVAL of these statistics rows: (per-row scores, aggregate score)."""
    proc = metric.process
    line = "EVAL" + "".join(" ||| " + " ".join(repr(float(v)) for v in row) for row in stats)
    proc.stdin.write((line + "\n").encode())
    proc.stdin.flush()
    scores = [float(proc.stdout.readline()) for _ in stats]
    return scores, float(proc.stdout.readline())


@pytest.fixture(scope="module")
def jar():
    metric = MeteorMetric()
    yield metric
    metric.close()


@pytest.fixture(scope="module")
def scored(jar) -> dict[str, tuple[float, list[float], np.ndarray]]:
    """Each published system scored as `bench score` scores it: (corpus, per-image, stats)."""
    items = {s: json.loads((DATA / f"{s}.json").read_text()) for s in SYSTEMS}
    # One PTB tokenizer run for everything (the references are the same 1,000 images' for all).
    gts, res = tokenize(
        {x["image_name"]: x["captions"] for x in items["magic"]},
        {(s, x["image_name"]): [x["prediction"]] for s in SYSTEMS for x in items[s]},
    )
    out = {}
    for system in SYSTEMS:
        names = [x["image_name"] for x in items[system]]
        assert sorted(names) == sorted(gts)
        score, scores, stats = jar.compute_with_stats({n: gts[n] for n in names}, {n: res[(system, n)] for n in names})
        out[system] = (score, scores, np.asarray(stats))
    return out


def test_full_sample_reproduces_the_jar_corpus_score(scored):
    assert len(scored) == 10
    for system, (score, scores, stats) in scored.items():
        assert stats.shape == (1000, 23)
        assert abs(float(corpus_meteor(stats)[0]) - score) <= 1e-6, system
        # each image alone: the jar's per-image score
        np.testing.assert_allclose(meteor_from_totals(stats), scores, rtol=0, atol=1e-6, err_msg=system)


def test_resamples_equal_the_jar_on_the_resampled_images(jar, scored):
    _, _, stats = scored["magic"]
    counts = resample_counts(len(stats), 3, seed=7)
    mine = corpus_meteor(stats, counts)
    for b in range(3):
        rows = np.repeat(stats, counts[b], axis=0)
        _, theirs = _jar_eval(jar, rows)
        assert abs(mine[b] - theirs) <= 1e-6


def test_perfect_segments_keep_their_chunk_out_of_the_aggregate(jar):
    """The jar drops the chunk of a candidate identical to a reference (frag 0) when summing."""
    refs = {"a": ["a dog runs on the grass"], "b": ["two men play soccer in a park"], "c": ["a cat sleeps"]}
    cands = {"a": ["a dog runs on the grass"], "b": ["men in a park play"], "c": ["a cat sleeps"]}
    score, scores, stats = jar.compute_with_stats(refs, cands)
    stats = np.asarray(stats)
    np.testing.assert_allclose(meteor_from_totals(stats), scores, rtol=0, atol=1e-9)  # frag 0 when perfect
    assert (aggregable(stats)[:, 20] != stats[:, 20]).sum() == 2  # the two perfect segments
    assert abs(float(corpus_meteor(stats)[0]) - score) <= 1e-9
    for counts in ([2, 1, 0], [0, 0, 3], [1, 3, 1]):
        _, theirs = _jar_eval(jar, np.repeat(stats, counts, axis=0))
        assert abs(float(corpus_meteor(stats, np.asarray([counts]))[0]) - theirs) <= 1e-9


def test_meteor_interval_brackets_the_corpus_value(scored):
    """MAGIC's METEOR 0.1308 used to read [0.1348, 0.1433] (an interval over per-image means)."""
    refs = [["x"]] * 1000  # CIDEr/BLEU are not under test here
    runs = [RunInput(s, ["x"] * 1000, {}, scored[s][2]) for s in ("magic", "zerocap")]
    result = bootstrap(refs, runs, n_boot=1000, seed=0)
    for system in ("magic", "zerocap"):
        value = result.full[system]["METEOR"]
        lo, hi = result.ci(system, "METEOR")
        assert value == pytest.approx(scored[system][0], abs=1e-6)
        assert lo <= value <= hi
    assert round(result.full["magic"]["METEOR"], 4) == 0.1308
    # the paired p-value uses the same aggregation: a run against itself gives 1
    assert result.p_value("magic", "magic", "METEOR") == 1.0


def assert_intervals_bracket_values(markdown: str) -> int:
    """Every `value [lo, hi]` of a report has lo <= value <= hi; returns how many were checked."""
    cells = INTERVAL.findall(markdown)
    for value, lo, hi in cells:
        assert float(lo) <= float(value) <= float(hi), f"{value} [{lo}, {hi}]"
    return len(cells)


N_REPORT = 300


@pytest.mark.slow
def test_published_report_intervals_contain_their_values(scored, bench_env):
    """`bench score --as-run` then `bench compare` on two published systems (their first
    N_REPORT images, for time), in process; one of them recorded as before bench kept the
    statistics, so the report recomputes them."""
    from bench.data import fingerprint
    from bench.data.types import RefEntry
    from bench.report import build_report
    from bench.run import record_external_run
    from bench.scoring.scorer import Scorer

    with Scorer(metrics=("bleu", "meteor", "rouge", "cider")) as scorer:
        for system in ("magic", "zerocap"):
            items = json.loads((DATA / f"{system}.json").read_text())[:N_REPORT]
            refs = {x["image_name"]: x["captions"] for x in items}
            result = scorer.score({x["image_name"]: x["prediction"] for x in items}, refs, progress=False)
            fp = fingerprint(RefEntry(i, None, tuple(r)) for i, r in refs.items())
            run_dir = record_external_run(
                f"published-{system}", {x["image_name"]: x["prediction"] for x in items}, refs,
                result.to_json(per_image=True), dataset="flickr30k-test", fingerprint=fp, images=None, source=system,
            )
    metrics_path = run_dir / "metrics.json"  # zerocap: as an old run, without statistics
    old = json.loads(metrics_path.read_text())
    assert len(old.pop("meteor_stats")) == N_REPORT
    metrics_path.write_text(json.dumps(old))

    out = bench_env.runs.parent / "report.md"
    build_report(bench_env.runs, out, dataset="flickr30k-test", json_out=out.with_suffix(".json"))
    text = out.read_text()
    assert assert_intervals_bracket_values(text) >= 2 * 6
    # The recomputed statistics give the interval the recorded ones would have given.
    runs = {r["run"]: r for r in json.loads(out.with_suffix(".json").read_text())["sections"][0]["runs"]}
    zerocap = runs["published-zerocap/external"]["metrics"]["METEOR"]
    assert zerocap["recomputed"] == pytest.approx(zerocap["value"], abs=1e-6)
    names = [x["image_name"] for x in json.loads((DATA / "zerocap.json").read_text())[:N_REPORT]]
    order = np.argsort(names, kind="stable")
    stats = scored["zerocap"][2][:N_REPORT][order]
    boot = bootstrap([["x"]] * N_REPORT, [RunInput("z", ["x"] * N_REPORT, {}, stats)], n_boot=1000, seed=0)
    assert (zerocap["lo"], zerocap["hi"]) == pytest.approx(boot.ci("z", "METEOR"), abs=1e-12)


@pytest.mark.parametrize("bad", [{"a": [1.0] * 22}, {"a": ["1"] * 23}, [1.0] * 23, {"a": [float("nan")] * 23}])
def test_malformed_statistics_are_one_line_errors(tmp_path, bad):
    from bench.errors import BenchError
    from bench.report.load import load_run
    from bench.testing.run_folders import write_run

    folder = write_run(
        tmp_path, setting="s", backend="b", kind="external", dataset="d", fingerprint="f",
        samples=[{"image_id": "a", "refs": ["a dog"]}], captions={"a": "a dog"}, corpus={"METEOR": 1.0},
    )
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["meteor_stats"] = {"a": [1.0] * 23}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    assert load_run(folder).meteor_stats == {"a": (1.0,) * 23}
    metrics["meteor_stats"] = bad
    (folder / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(BenchError, match=r"metrics\.json: key 'meteor_stats") as err:
        load_run(folder)
    assert "\n" not in str(err.value)
