"""The vectorised bootstrap equals pycocoevalcap on real data, on the full set and on resamples."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider

from bench.paths import shared_data_dir
from bench.testing import shared
from bench.report.bootstrap import (
    RunInput,
    bootstrap,
    corpus_metrics,
    paired_p_value,
    resample_counts,
)
from bench.report.tokens import ptb_tokenize

DATA = shared_data_dir()
pytestmark = shared.skip_without_data("external/magic-flickr30k")


def _tokenized(system: str, limit: int | None = None) -> tuple[list[str], list[list[str]], list[str]]:
    items = json.loads((DATA / "external" / "magic-flickr30k" / f"{system}.json").read_text())[:limit]
    flat = [x["prediction"] for x in items] + [c for x in items for c in x["captions"]]
    tok = iter(ptb_tokenize(flat))
    cands = [next(tok) for _ in items]
    refs = [[next(tok) for _ in x["captions"]] for x in items]
    return [x["image_name"] for x in items], refs, cands


@pytest.fixture(scope="module")
def magic() -> tuple[list[str], list[list[str]], list[str]]:
    return _tokenized("magic")


@pytest.fixture(scope="module")
def magic300(magic) -> tuple[list[str], list[list[str]], list[str]]:
    return tuple(x[:300] for x in magic)


@pytest.fixture(scope="module")
def zerocap() -> tuple[list[str], list[list[str]], list[str]]:
    return _tokenized("zerocap", 300)


def _mine(refs, cands, counts=None) -> tuple[float, list[float]]:
    values = corpus_metrics(refs, cands, counts)
    return values["CIDEr"], [values[f"BLEU-{k}"] for k in range(1, 5)]


def _coco(ids, refs, cands, counts=None):
    """pycocoevalcap's Cider and Bleu on the (resampled) lists: duplicates get their own keys."""
    counts = np.ones(len(ids), dtype=int) if counts is None else counts
    gts, res = {}, {}
    for i, k in enumerate(ids):
        for copy in range(int(counts[i])):
            gts[f"{k}#{copy}"], res[f"{k}#{copy}"] = refs[i], [cands[i]]
    cider, _ = Cider().compute_score(gts, res)
    bleu, _ = Bleu().compute_score(gts, res, verbose=0)
    return float(cider), [float(b) for b in bleu]


def test_cider_and_bleu_equal_pycocoevalcap_on_the_full_set(magic):
    ids, refs, cands = magic
    cider, bleu = _coco(ids, refs, cands)
    mine_cider, mine_bleu = _mine(refs, cands)
    assert mine_cider == pytest.approx(cider, abs=1e-9)
    assert mine_bleu == pytest.approx(bleu, abs=1e-12)


def test_cider_and_bleu_equal_pycocoevalcap_on_a_resample(magic300):
    ids, refs, cands = magic300
    counts = resample_counts(len(ids), 5, seed=3)[4]
    assert counts.max() > 1 and (counts == 0).any()  # a real resample: repeats and omissions
    cider, bleu = _coco(ids, refs, cands, counts)
    mine_cider, mine_bleu = _mine(refs, cands, counts)
    assert mine_cider == pytest.approx(cider, abs=1e-9)
    assert mine_bleu == pytest.approx(bleu, abs=1e-12)
    # the document frequencies matter: weighting the resample with the full set's idf differs
    full_idf = Cider().compute_score(
        {k: refs[i] for i, k in enumerate(ids)}, {k: [cands[i]] for i, k in enumerate(ids)}
    )[1]
    assert abs(float(np.dot(full_idf, counts)) / counts.sum() - cider) > 1e-4


def test_bootstrap_samples_are_the_corpus_metrics_of_their_resamples(magic300):
    ids, refs, cands = magic300
    n_boot, seed = 40, 7
    result = bootstrap(refs, [RunInput("magic", cands)], n_boot=n_boot, seed=seed, chunk=16)
    counts = resample_counts(len(ids), n_boot, seed)
    for b in (0, 17, 39):  # across chunk boundaries
        cider, bleu = _coco(ids, refs, cands, counts[b])
        assert result.samples["magic"]["CIDEr"][b] == pytest.approx(cider, abs=1e-9)
        assert result.samples["magic"]["BLEU-4"][b] == pytest.approx(bleu[3], abs=1e-12)
    full_cider, _ = _coco(ids, refs, cands)
    assert result.full["magic"]["CIDEr"] == pytest.approx(full_cider, abs=1e-9)
    lo, hi = result.ci("magic", "CIDEr")
    assert lo < full_cider < hi


def test_cider_edge_cases_match_pycocoevalcap():
    # empty and one-word candidates (bigram "length" 0), n-grams in no reference, repeated words,
    # images with different numbers of references
    refs = [
        ["a dog runs on the grass", "a brown dog is running", "the dog plays"],
        ["two men ride bikes", "men riding bicycles down a road"],
        ["a cat", "a small cat sleeps on a sofa", "cat on a couch", "a cat sleeping"],
        ["children play in the park", "kids playing"],
    ]
    cands = ["", "bikes", "a cat a cat a cat on zebra xylophone", "children children play"]
    ids = [str(i) for i in range(len(refs))]
    for counts in (None, np.array([2, 0, 1, 1]), np.array([0, 3, 0, 1])):
        cider, bleu = _coco(ids, refs, cands, counts)
        mine_cider, mine_bleu = _mine(refs, cands, counts)
        assert mine_cider == pytest.approx(cider, abs=1e-12)
        assert mine_bleu == pytest.approx(bleu, abs=1e-12)


def test_mean_metrics_resample_per_image_scores(magic300):
    ids, refs, cands = magic300
    scores = np.linspace(0.0, 1.0, len(ids)) ** 2
    result = bootstrap(refs, [RunInput("m", cands, {"CLIPScore": scores})], n_boot=30, seed=1)
    counts = resample_counts(len(ids), 30, 1)
    expected = [np.mean(np.repeat(scores, counts[b])) for b in range(30)]
    np.testing.assert_allclose(result.samples["m"]["CLIPScore"], expected, rtol=0, atol=1e-12)
    assert result.full["m"]["CLIPScore"] == pytest.approx(scores.mean())


def test_paired_p_values(magic300, zerocap):
    ids, refs, cands = magic300
    zids, _, zcands = zerocap
    assert zids == ids  # the same test images, in the same order
    result = bootstrap(refs, [RunInput("magic", cands), RunInput("zerocap", zcands), RunInput("copy", list(cands))],
                       n_boot=200, seed=0)
    for metric in ("CIDEr", "BLEU-4"):
        assert result.p_value("magic", "magic", metric) == 1.0
        assert result.p_value("copy", "magic", metric) == 1.0  # identical captions, another run
    # MAGIC beats ZeroCap on CIDEr by far more than the resampling noise
    assert result.full["magic"]["CIDEr"] > result.full["zerocap"]["CIDEr"]
    assert result.p_value("zerocap", "magic", "CIDEr") < 0.05
    assert result.p_value("zerocap", "magic", "CIDEr") == result.p_value("magic", "zerocap", "CIDEr")


def test_p_value_definition():
    base = np.array([0.5, 0.6, 0.4, 0.5])
    assert paired_p_value(base, 0.5, base, 0.5) == 1.0
    run = base + np.array([0.3, -0.1, 0.2, 0.25])  # differences centred on 0.2: |d_b - 0.2| >= 0.2 once
    assert paired_p_value(run, 0.7, base, 0.5) == pytest.approx((1 + 1) / 5)


def test_resampling_is_seeded():
    a, b, c = resample_counts(50, 20, 0), resample_counts(50, 20, 0), resample_counts(50, 20, 1)
    assert (a == b).all() and not (a == c).all()
    assert (a.sum(axis=1) == 50).all()


def test_bootstrap_is_deterministic(magic):
    ids, refs, cands = magic
    small = (refs[:200], [RunInput("x", cands[:200])])
    r1 = bootstrap(*small, n_boot=50, seed=5, chunk=7)
    r2 = bootstrap(*small, n_boot=50, seed=5, chunk=50)
    assert np.array_equal(r1.samples["x"]["BLEU-4"], r2.samples["x"]["BLEU-4"])
    np.testing.assert_allclose(r1.samples["x"]["CIDEr"], r2.samples["x"]["CIDEr"], rtol=0, atol=1e-12)

