"""`bench compare` at sweep scale: the chunked, shared-reference bootstrap gives bit for bit the
numbers of an independent per-resample recomputation, whatever the chunking and whichever runs
are computed together; what compare computed per run is cached and reused only when valid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.paths import shared_data_dir
from bench.report import build_report, cider_chunks
from bench.report.bootstrap import RunInput, bootstrap, resample_counts
from bench.report.cider_tables import (
    bleu_from_totals,
    cand_tables,
    cider_per_image,
    idf_weights_sq,
    ref_norms_sq,
    ref_tables,
)
from bench.report.compute_cache import FOLDER, ComputeCache
from bench.report.load import find_runs
from bench.report.tokens import ptb_tokenize
from bench.run.folder import TOKENS, RunFolder
from bench.testing.run_folders import magic_run

DATA = shared_data_dir()
pytestmark = pytest.mark.skipif(not (DATA / "external" / "magic-flickr30k").is_dir(), reason="shared data missing")
SYSTEMS = ("magic", "zerocap", "contrastive")


@pytest.fixture(scope="module")
def tokenized() -> tuple[list[list[str]], dict[str, list[str]]]:
    """120 Flickr30k images: their references and three published systems' captions, PTB-tokenized."""
    items = {s: json.loads((DATA / "external" / "magic-flickr30k" / f"{s}.json").read_text())[:120] for s in SYSTEMS}
    first = items[SYSTEMS[0]]
    flat = [c for x in first for c in x["captions"]] + [x["prediction"] for s in SYSTEMS for x in items[s]]
    tok = iter(ptb_tokenize(flat))
    refs = [[next(tok) for _ in x["captions"]] for x in first]
    return refs, {s: [next(tok) for _ in items[s]] for s in SYSTEMS}


def _dense(refs, cands, counts):
    """The per-resample recomputation: the dense kernels of cider_tables on every (reference,
    order) row, one resample at a time."""
    tables = ref_tables(refs)
    cand = cand_tables(tables, cands)
    cider, bleu4 = [], []
    for row in counts:
        m = row[None, :]
        w2 = idf_weights_sq(tables, m)
        per_image = cider_per_image(tables, cand, w2, ref_norms_sq(tables, w2))
        cider.append(float((m.astype(np.float64) * per_image.T).sum(axis=1)[0] / len(refs)))
        bleu4.append(float(bleu_from_totals(m.astype(np.float64) @ cand.bleu_stats)[0, 3]))
    return np.asarray(cider), np.asarray(bleu4), per_image


def test_chunked_bootstrap_equals_the_dense_recomputation_bit_for_bit(tokenized):
    refs, cands = tokenized
    n_boot, seed = 25, 3
    result = bootstrap(refs, [RunInput(s, cands[s]) for s in SYSTEMS], n_boot=n_boot, seed=seed, chunk=7)
    counts = np.vstack([np.ones((1, len(refs)), dtype=np.int64), resample_counts(len(refs), n_boot, seed)])
    for s in SYSTEMS:
        cider, bleu4, _ = _dense(refs, cands[s], counts)
        assert result.full[s]["CIDEr"] == cider[0]
        assert np.array_equal(result.samples[s]["CIDEr"], cider[1:])  # exact, not approx
        assert np.array_equal(result.samples[s]["BLEU-4"], bleu4[1:])
        _, _, full_per_image = _dense(refs, cands[s], counts[:1])
        assert np.array_equal(result.cider_per_image[s], full_per_image[:, 0])


def test_numbers_do_not_depend_on_chunking_or_on_the_other_runs(tokenized, monkeypatch):
    refs, cands = tokenized
    runs = [RunInput(s, cands[s]) for s in SYSTEMS]
    whole = bootstrap(refs, runs, n_boot=30, seed=1, chunk=1000)
    monkeypatch.setattr(cider_chunks, "CHUNK_ELEMENTS", 1)  # one resample per chunk
    single = bootstrap(refs, runs, n_boot=30, seed=1, chunk=1000)
    alone = bootstrap(refs, runs[1:2], n_boot=30, seed=1, chunk=1000)
    for name in whole.samples:
        for metric, values in whole.samples[name].items():
            assert np.array_equal(values, single.samples[name][metric]), (name, metric)
    for metric, values in alone.samples["zerocap"].items():
        assert np.array_equal(values, whole.samples["zerocap"][metric]), metric


def test_chunks_bound_the_arrays_whatever_the_number_of_resamples(tokenized):
    refs, _ = tokenized
    section = cider_chunks.SectionKernel(ref_tables(refs), [])
    size = section.chunk_size(10**6)
    biggest = max(section.tables.n_cols, len(section.tables.img_of_ref) * 4)
    assert 1 <= size and size * biggest <= cider_chunks.CHUNK_ELEMENTS


def test_progress_names_each_run_and_counts_to_the_total(tokenized):
    refs, cands = tokenized
    calls: list[tuple[int, int, str]] = []
    bootstrap(refs, [RunInput(s, cands[s]) for s in SYSTEMS], n_boot=20, seed=0, chunk=8,
              progress=lambda done, total, run: calls.append((done, total, run)))
    assert {run for _, _, run in calls} == set(SYSTEMS)
    assert [d for d, _, _ in calls] == list(range(1, len(calls) + 1))
    assert calls[-1][0] == calls[-1][1]


# --- the per-run cache ----------------------------------------------------------------------------

@pytest.fixture
def runs_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "runs"
    for system in SYSTEMS[:2]:
        magic_run(root, system, DATA, limit=60)
    return root


def _computed(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Records the runs each section actually computes."""
    seen: list[list[str]] = []
    real = cider_chunks.corpus_samples

    def spy(tables, runs, *args, **kwargs):
        seen.append(sorted(runs))
        return real(tables, runs, *args, **kwargs)

    monkeypatch.setattr("bench.report.bootstrap.corpus_samples", spy)
    return seen


def _run_entries(folder: Path) -> list[Path]:
    """The per-run entries (beside them: the section's reference tables, refs-*.npz)."""
    return sorted(p for p in folder.glob("*.npz") if not p.name.startswith("refs-"))


def _numbers(md: str) -> str:
    return "\n".join(line for line in md.splitlines() if not line.startswith("Generated at "))


def test_a_recompare_reuses_every_unchanged_run_and_gives_the_same_report(runs_root, tmp_path, monkeypatch):
    seen = _computed(monkeypatch)
    out = tmp_path / "a.md"
    first = build_report(runs_root, out, n_boot=40, cache=True).markdown.read_text()
    again = build_report(runs_root, out, n_boot=40, cache=True).markdown.read_text()
    uncached = build_report(runs_root, out, n_boot=40).markdown.read_text()
    # The first and the uncached compare computed both runs; the second read them back.
    assert seen == [["magic/external", "zerocap/external"], ["magic/external", "zerocap/external"]]
    assert _numbers(first) == _numbers(again) == _numbers(uncached)
    assert len(_run_entries(tmp_path / "cache" / FOLDER)) == 2

    magic_run(runs_root, SYSTEMS[2], DATA, limit=60)
    seen.clear()
    build_report(runs_root, tmp_path / "d.md", n_boot=40, cache=True)
    assert seen == [["contrastive/external"]]  # only the new run


def test_other_resamples_seed_or_captions_are_recomputed(runs_root, tmp_path, monkeypatch):
    seen = _computed(monkeypatch)
    build_report(runs_root, tmp_path / "a.md", n_boot=40, cache=True)
    build_report(runs_root, tmp_path / "a.md", n_boot=41, cache=True)
    build_report(runs_root, tmp_path / "a.md", n_boot=40, seed=1, cache=True)
    assert [len(s) for s in seen] == [2, 2, 2]
    run = next(r for r in find_runs(runs_root) if r.run == "zerocap/external")
    captions = dict(zip(run.image_ids, run.captions))
    captions[run.image_ids[0]] = "a completely different caption"
    RunFolder(run.folder).write_predictions(captions)
    seen.clear()
    build_report(runs_root, tmp_path / "a.md", n_boot=40, cache=True)
    assert seen == [["zerocap/external"]]


def test_a_damaged_or_mismatched_entry_is_recomputed_never_trusted(runs_root, tmp_path, monkeypatch):
    seen = _computed(monkeypatch)
    before = build_report(runs_root, tmp_path / "a.md", n_boot=40, cache=True).markdown.read_text()
    entries = _run_entries(tmp_path / "cache" / FOLDER)
    entries[0].write_bytes(entries[0].read_bytes()[:100])  # torn
    seen.clear()
    after = build_report(runs_root, tmp_path / "a.md", n_boot=40, cache=True).markdown.read_text()
    assert [len(s) for s in seen] == [1]
    assert _numbers(before) == _numbers(after)
    cache = ComputeCache(tmp_path / "cache" / FOLDER)
    key = entries[1].stem
    assert cache.get(key, (41, 60)) is not None
    assert cache.get(key, (42, 60)) is None and cache.get(key, (41, 59)) is None  # wrong shape


def test_an_unwritable_cache_folder_only_costs_time(tokenized, tmp_path):
    refs, cands = tokenized
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    cache = ComputeCache(blocked / FOLDER)
    result = bootstrap(refs, [RunInput("magic", cands["magic"])], n_boot=5, seed=0, cache=cache)
    assert result.samples["magic"]["CIDEr"].shape == (5,)


def test_ngram_counts_are_pycocoevalcaps(tokenized):
    from pycocoevalcap.bleu.bleu_scorer import precook

    from bench.report.cider_tables import _precook

    refs, cands = tokenized
    for text in [r for rs in refs for r in rs] + cands["zerocap"] + ["", "a", "a a a a a", "a b a b"]:
        words, counts = _precook(text)
        expected_words, expected = precook(text, 4)
        assert words == expected_words and dict(counts) == dict(expected), text


def test_a_new_run_sends_only_its_new_texts_to_the_tokenizer(runs_root, monkeypatch):
    from bench.report import tokens

    first = tokens.tokenize_runs(find_runs(runs_root))
    magic_run(runs_root, SYSTEMS[2], DATA, limit=60)
    sent: list[str] = []
    real = tokens.ptb_tokenize
    monkeypatch.setattr(tokens, "ptb_tokenize", lambda texts: sent.extend(texts) or real(texts))
    runs = find_runs(runs_root)
    again = tokens.tokenize_runs(runs)
    new = next(r for r in runs if r.run == "contrastive/external")
    assert sent and set(sent) <= set(new.captions)  # the shared references came from the caches
    assert {k: again[k] for k in first} == first
    # Exactly what tokenizing it alone gives.
    RunFolder(new.folder).member(TOKENS).unlink()
    assert again[new.run] == tokens.tokenize_runs([new], write_cache=False)[new.run]
