"""`bench meta`: the published Flickr8k-Expert tau-c table reproduced, and each benchmark's protocol
checked against computations that share no code with bench (a hand count of concordant pairs,
a hand count of Pascal-50S pair agreements)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from bench.errors import BenchError
from bench.meta import BENCHMARKS, evaluate, score_rows
from bench.meta.protocol import group_resamples
from bench.paths import shared_data_dir
from tests.test_score_cli import assert_one_line_error, run_cli

HUMAN = shared_data_dir() / "human"
PUBLISHED = {"BLEU-1": "32.324", "BLEU-4": "30.776", "METEOR": "41.822", "ROUGE-L": "32.314", "CIDEr": "43.891"}
needs_data = pytest.mark.skipif(not HUMAN.is_dir(), reason="shared human-judgment data not present")


def hand_tau(x: list[float], y: list[float], variant: str) -> float:
    """Kendall's tau-b or tau-c from an explicit count over all pairs (no scipy)."""
    conc = disc = tie_x = tie_y = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        dx, dy = x[i] - x[j], y[i] - y[j]
        if dx == 0 and dy == 0:
            continue
        if dx == 0:
            tie_x += 1
        elif dy == 0:
            tie_y += 1
        elif (dx > 0) == (dy > 0):
            conc += 1
        else:
            disc += 1
    if variant == "b":
        return (conc - disc) / math.sqrt((conc + disc + tie_x) * (conc + disc + tie_y))
    m = min(len(set(x)), len(set(y)))
    return 2 * (conc - disc) / (len(x) ** 2 * (m - 1) / m)


@needs_data
def test_flickr8k_expert_prints_the_published_tau_c(tmp_path: Path, capsys) -> None:
    out = tmp_path / "f8k.md"
    code, stdout, err = run_cli(["meta", "--data", "flickr8k-expert", "--out", out, "--resamples", "20"], capsys)
    assert code == 0, err
    for metric, value in PUBLISHED.items():
        line = next(ln for ln in stdout.splitlines() if f" {metric} " in ln)
        assert f" {value} [" in line, (metric, line)
    payload = json.loads(out.with_suffix(".json").read_text())
    assert payload["n_rows"] == 16992 and payload["n_images"] == 1000
    assert {r["metric"]: round(r["value"], 3) for r in payload["rows"]} == {k: float(v) for k, v in PUBLISHED.items()}
    md = out.read_text()
    assert "agrees best with people" in md and (tmp_path / "f8k-figures" / "meta.png").is_file()


def _thumb_subset(tmp_path: Path, n_segs: int) -> Path:
    """The first n_segs images of THumB (all 5 systems each), in the published layout."""
    rows = [json.loads(x) for x in (HUMAN / "thumb-mscoco/mscoco_THumB-1.0.jsonl").read_text().splitlines()]
    segs = list(dict.fromkeys(r["seg_id"] for r in rows))[:n_segs]
    refs = [json.loads(x) for x in (HUMAN / "thumb-mscoco/mscoco_references.json").read_text().splitlines()]
    folder = tmp_path / "thumb"
    folder.mkdir()
    (folder / "mscoco_THumB-1.0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows if r["seg_id"] in segs))
    (folder / "mscoco_references.json").write_text("".join(json.dumps(r) + "\n" for r in refs if r["seg_id"] in segs))
    return folder / "mscoco_THumB-1.0.jsonl"


@needs_data
def test_thumb_end_to_end_and_tau_b_by_hand(tmp_path: Path, capsys) -> None:
    path = _thumb_subset(tmp_path, 24)
    out = tmp_path / "thumb.md"
    code, stdout, err = run_cli(["meta", "--data", "thumb", "--path", path, "--out", out, "--resamples", "50"], capsys)
    assert code == 0, err
    payload = json.loads(out.with_suffix(".json").read_text())
    assert payload["aspects"] == ["precision", "recall", "total"] and payload["n_rows"] == 120

    spec = BENCHMARKS["thumb"]
    hset = spec.read(path)
    assert all(len(r) == 4 for r in hset.refs)  # the rated human caption is not a reference
    assert sum(1 for g in hset.groups if g == hset.groups[0]) == 5  # 5 systems per image
    scores = score_rows(hset, ("bleu", "cider"), progress=False)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    for aspect, key in (("precision", "P"), ("recall", "R"), ("total", "human_score")):
        human = [r[key] for r in lines]
        for metric in ("BLEU-1", "CIDEr"):
            got = next(r for r in payload["rows"] if r["metric"] == metric and r["aspect"] == aspect)
            assert got["value"] == pytest.approx(100 * hand_tau(list(scores[metric]), human, "b"), abs=1e-9)
            assert got["lo"] <= got["value"] <= got["hi"]


@needs_data
def test_flickr8k_tau_c_matches_a_hand_count_on_a_subset(tmp_path: Path) -> None:
    data = json.loads((HUMAN / "flickr8k-expert/flickr8k.json").read_text())
    sub = dict(list(data.items())[:30])
    path = tmp_path / "f8k.json"
    path.write_text(json.dumps(sub))
    spec = BENCHMARKS["flickr8k-expert"]
    hset = spec.read(path)
    assert hset.n_rows == sum(len(v["human_judgement"]) for v in sub.values())  # one row per rating
    scores = score_rows(hset, ("bleu", "rouge"), progress=False)
    result = evaluate(hset, spec, scores, n_boot=30, seed=1)
    human = list(hset.human["rating"])
    for metric in ("BLEU-1", "BLEU-4", "ROUGE-L"):
        assert result.row(metric, "rating").value == pytest.approx(100 * hand_tau(list(scores[metric]), human, "c"), abs=1e-9)
    # The lead of the best metric: paired (the same resamples for every metric), so it is exactly
    # the difference of the two metrics' bootstrap values resample by resample.
    margin = result.margins["rating"]
    ranked = sorted(result.metrics, key=lambda m: -result.row(m, "rating").value)
    assert (margin.best, margin.runner_up) == tuple(ranked[:2]) == (result.best("rating").metric, ranked[1])
    from scipy.stats import kendalltau

    h = hset.human["rating"]
    diffs = [100 * (kendalltau(scores[ranked[0]][r], h[r], variant="c").statistic
                    - kendalltau(scores[ranked[1]][r], h[r], variant="c").statistic)
             for r in group_resamples(hset.groups, 30, seed=1)]
    assert (margin.lo, margin.hi) == pytest.approx(tuple(np.percentile(diffs, [2.5, 97.5])))
    assert margin.settled == (margin.lo > 0)


@needs_data
def test_pascal50s_end_to_end_and_pair_agreements_by_hand(tmp_path: Path, capsys) -> None:
    data = json.loads((HUMAN / "pascal-50s/pascal_50s.json").read_text())
    sub = {cat: pairs[:40] for cat, pairs in data.items()}
    path = tmp_path / "pascal_50s.json"
    path.write_text(json.dumps(sub))
    out = tmp_path / "pascal.md"
    code, stdout, err = run_cli(["meta", "--data", "pascal-50s", "--path", path, "--out", out, "--resamples", "50"], capsys)
    assert code == 0, err
    payload = json.loads(out.with_suffix(".json").read_text())
    assert payload["aspects"] == ["HC", "HI", "HM", "MM"]

    hset = BENCHMARKS["pascal-50s"].read(path)
    scores = score_rows(hset, ("bleu", "cider"), progress=False)
    for metric in ("BLEU-4", "CIDEr"):
        s = scores[metric]
        for cat in ("HC", "HI", "HM", "MM"):
            agree = ties = 0
            for k, pair in enumerate(sub[cat]):
                row = 2 * (("HC", "HI", "HM", "MM").index(cat) * 40 + k)
                a, b = s[row], s[row + 1]
                assert hset.candidates[row] == " ".join(pair["captions"][0].split())
                if a == b:
                    ties += 1
                    agree += pair["label"] == 0  # the published code: a tie picks the first caption
                else:
                    agree += (b > a) == (pair["label"] == 1)
            got = next(r for r in payload["rows"] if r["metric"] == metric and r["aspect"] == cat)
            assert got["value"] == pytest.approx(100 * agree / 40) and got["ties"] == ties and got["n"] == 40


def test_image_resamples_keep_an_images_rows_together() -> None:
    groups = ["a", "a", "a", "b", "c", "c"]
    for rows in group_resamples(groups, 50, seed=3):
        counts = {g: sum(1 for r in rows if groups[r] == g) for g in "abc"}
        assert counts["a"] % 3 == 0 and counts["c"] % 2 == 0
        assert sum(counts[g] // {"a": 3, "b": 1, "c": 2}[g] for g in "abc") == 3  # 3 images drawn
    again = group_resamples(groups, 50, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(group_resamples(groups, 50, seed=3), again))


def test_unknown_benchmark_and_bad_files_are_one_line_errors(tmp_path: Path, capsys) -> None:
    code, out, err = run_cli(["meta", "--data", "nope"], capsys)
    assert_one_line_error(code, out, err, "--data", "nope")
    code, out, err = run_cli(["meta", "--data", "flickr8k-expert", "--path", tmp_path / "missing.json"], capsys)
    assert_one_line_error(code, out, err, "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"img1": {"ground_truth": ["a dog"], "human_judgement": [{"caption": "a dog"}]}}))
    code, out, err = run_cli(["meta", "--data", "flickr8k-expert", "--path", bad, "--out", tmp_path / "r.md"], capsys)
    assert_one_line_error(code, out, err, "bad.json", "rating")
    assert not (tmp_path / "r.md").exists()
    code, out, err = run_cli(["meta", "--data", "flickr8k-expert", "--path", bad, "--out", tmp_path / "bad.md"], capsys)
    assert_one_line_error(code, out, err, "--out", "bad.json")  # the report would overwrite its input
    with pytest.raises(BenchError, match="label 0 or 1"):
        p = tmp_path / "p.json"
        p.write_text(json.dumps({"HC": [{"captions": ["a", "b"], "label": 2, "references": ["c"]}]}))
        BENCHMARKS["pascal-50s"].read(p)
