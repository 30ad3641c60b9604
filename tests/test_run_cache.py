"""`bench compare`'s run cache (bench.report.run_cache) and its per-section reference tables
(bench.report.compute_cache): a re-compare reads no run folder, tokenizes nothing and rebuilds
no reference table it built before, and gives the report it gave before; a changed, damaged or
foreign entry is never trusted."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest

from bench.report import build_report, compute_cache, run_cache, tokens
from bench.report.cider_tables import RefTables, cand_tables, ref_tables
from bench.report.compute_cache import FOLDER, ComputeCache
from bench.report.run_cache import load_runs
from bench.run.folder import METRICS, RunFolder
from bench.testing.run_folders import toy_run

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
N_IMAGES = 30


@pytest.fixture
def runs_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("BENCH_SHARED_DATA", str(tmp_path / "shared"))
    root = tmp_path / "runs"
    toy_run(root, "brief", 1)
    toy_run(root, "lora_r8", 2, kind="lora")
    return root


def _report(root: Path, out: Path, *, cache: bool = True) -> list[str]:
    result = build_report(root, out, n_boot=30, csv=out.with_suffix(".csv"), json_out=out.with_suffix(".json"),
                          now=NOW, cache=cache)
    return [p.read_text() for p in (result.markdown, result.html, result.csv, result.json)]


def _forbid(monkeypatch: pytest.MonkeyPatch, *targets: str) -> None:
    for target in targets:
        monkeypatch.setattr(target, lambda *a, **k: pytest.fail(f"{target} called on a re-compare"))


def test_a_recompare_reads_no_folder_tokenizes_nothing_and_writes_the_same_report(runs_root, tmp_path, monkeypatch):
    first = _report(runs_root, tmp_path / "a.md")
    _forbid(monkeypatch, "bench.report.run_cache.load_run", "bench.report.tokens.ptb_tokenize",
            "bench.report.compute_cache.ref_tables", "bench.report.bootstrap.corpus_samples")
    assert _report(runs_root, tmp_path / "a.md") == first


def test_runs_from_the_cache_equal_the_runs_read_from_their_folders(runs_root, tmp_path):
    cache = tmp_path / "cache" / FOLDER
    read = load_runs(runs_root, cache=cache)
    again = load_runs(runs_root, cache=cache)
    assert again == read == load_runs(runs_root)  # RunData, tokens, degeneration, repeats
    lora = next(r for r in again if r.data.kind == "lora")
    assert lora.data.loss_csv is not None and lora.data.loss_csv.is_file()  # looked up, not cached
    assert lora.repetitive[lora.data.image_ids.index("im03")]
    assert sum(lora.repetitive) == round(lora.degeneration.repeated_share * N_IMAGES)
    # Runs of one split entry share its references (one copy in memory).
    assert again[0].data.refs is again[1].data.refs


def test_image_paths_are_expanded_on_this_machine_not_cached(runs_root, tmp_path, monkeypatch):
    cache = tmp_path / "cache" / FOLDER
    load_runs(runs_root, cache=cache)
    monkeypatch.setenv("BENCH_SHARED_DATA", str(tmp_path / "elsewhere"))
    _forbid(monkeypatch, "bench.report.run_cache.load_run")
    run = load_runs(runs_root, cache=cache)[0]
    assert run.data.image_paths[0] == tmp_path / "elsewhere" / "photos" / "im00.jpg"


def test_a_changed_run_is_read_again_and_only_that_one(runs_root, tmp_path, monkeypatch):
    cache = tmp_path / "cache" / FOLDER
    before = {r.name: r for r in load_runs(runs_root, cache=cache)}
    folder = before["brief/vlm"].data.folder
    metrics = RunFolder(folder).member(METRICS)
    obj = json.loads(metrics.read_text())
    obj["per_image"]["im00"]["ROUGE-L"] = 0.5
    metrics.write_text(json.dumps(obj))
    read: list[Path] = []
    real = run_cache.load_run
    monkeypatch.setattr(run_cache, "load_run", lambda f, r: read.append(f) or real(f, r))
    after = {r.name: r for r in load_runs(runs_root, cache=cache)}
    assert read == [folder]
    assert after["brief/vlm"].data.per_image != before["brief/vlm"].data.per_image
    assert after["lora_r8/vit-gpt2"] == before["lora_r8/vit-gpt2"]


@pytest.mark.parametrize("kind", ["runs", "splits"])
def test_a_damaged_or_foreign_entry_is_recomputed_never_trusted(runs_root, tmp_path, monkeypatch, kind):
    cache = tmp_path / "cache" / FOLDER
    before = load_runs(runs_root, cache=cache)
    entries = sorted((cache / kind).glob("*.json"))
    assert entries
    entries[0].write_text(entries[0].read_text()[:50])  # torn
    if len(entries) > 1:
        entries[1].write_text('{"version": 999}')  # another bench's layout
    read: list[Path] = []
    real = run_cache.load_run
    monkeypatch.setattr(run_cache, "load_run", lambda f, r: read.append(f) or real(f, r))
    assert load_runs(runs_root, cache=cache) == before
    assert read  # recomputed from the folders ...
    read.clear()
    assert load_runs(runs_root, cache=cache) == before
    assert read == []  # ... and rewritten


def test_an_unwritable_cache_only_costs_time(runs_root, tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    assert load_runs(runs_root, cache=blocked / FOLDER) == load_runs(runs_root)


def test_a_new_run_reads_the_section_tables_back_and_matches_an_uncached_compare(runs_root, tmp_path, monkeypatch):
    _report(runs_root, tmp_path / "a.md")
    toy_run(runs_root, "detailed", 3)
    sent: list[str] = []
    real = tokens.ptb_tokenize
    monkeypatch.setattr(tokens, "ptb_tokenize", lambda texts: sent.extend(texts) or real(texts))
    _forbid(monkeypatch, "bench.report.compute_cache.ref_tables")
    cached = _report(runs_root, tmp_path / "b.md")
    new = RunFolder(runs_root / "detailed" / "vlm")
    assert sent and set(sent) <= {r["caption"] for r in _records(new)}  # only the new captions
    monkeypatch.undo()
    fresh = _report(runs_root, tmp_path / "b.md", cache=False)
    assert cached == fresh


def _records(folder: RunFolder) -> list[dict]:
    from bench.io import read_records

    return read_records(folder.predictions)


def test_reference_tables_read_back_give_the_same_bits(runs_root, tmp_path):
    runs = load_runs(runs_root)
    refs = runs[0].tokens.refs
    built = ref_tables(refs)
    store = ComputeCache(tmp_path / "store")
    store.ref_tables(refs)  # built and written
    read = store.ref_tables(refs)  # read back
    assert read.gram_id == built.gram_id and list(read.gram_id) == list(built.gram_id)
    for name in RefTables._ARRAYS + ("entry_key",):
        got, want = getattr(read, name), getattr(built, name)
        assert got.dtype == want.dtype and np.array_equal(got, want), name
    for name in ("df_matrix", "ref_sq"):
        got, want = getattr(read, name).matrix, getattr(built, name).matrix
        assert got.data.dtype == want.data.dtype == np.float64 and (got != want).nnz == 0, name
    assert (read.n_images, read.n_multi) == (built.n_images, built.n_multi)
    a, b = cand_tables(built, runs[0].tokens.captions), cand_tables(read, runs[0].tokens.captions)
    w2 = np.random.default_rng(0).random((built.n_cols, 3))
    assert np.array_equal(a.clip_sq.matmul(w2), b.clip_sq.matmul(w2))
    assert np.array_equal(a.cand_sq.matmul(w2), b.cand_sq.matmul(w2))
    assert np.array_equal(built.ref_sq.matmul(w2), read.ref_sq.matmul(w2))


def test_damaged_reference_tables_are_rebuilt(runs_root, tmp_path, monkeypatch):
    refs = load_runs(runs_root)[0].tokens.refs
    store = ComputeCache(tmp_path / "store")
    store.ref_tables(refs)
    (entry,) = (tmp_path / "store").glob("refs-*.npz")
    arrays = dict(np.load(entry))
    del arrays["grams"]
    np.savez(entry, **arrays)
    built: list[int] = []
    real = compute_cache.ref_tables
    monkeypatch.setattr(compute_cache, "ref_tables", lambda r: built.append(1) or real(r))
    assert isinstance(store.ref_tables(refs), RefTables) and built == [1]
    store.ref_tables(refs)
    assert built == [1]  # the rebuilt tables were written back


# Runs bench's CLI in this process and, at exit, writes whether torch / scipy.stats were loaded.
PROBE = """
import atexit, json, sys
out = sys.argv.pop(1)
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(m for m in ("torch", "scipy.stats") if m in sys.modules))))
from bench.cli import main
sys.argv[0] = "bench"
main()
"""


def test_bench_compare_imports_neither_torch_nor_scipy_stats(runs_root, tmp_path):
    # A second or two of every compare: a re-compare's fixed cost is mostly imports.
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    loaded = tmp_path / "loaded.json"
    env = {**os.environ, "BENCH_RUNS": str(runs_root), "PYTHONPATH": str(repo)}
    proc = subprocess.run([sys.executable, "-c", PROBE, str(loaded), "compare", "--data", "toy", "--out",
                           str(tmp_path / "r.md"), "--resamples", "20"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (tmp_path / "r.md").is_file()
    assert json.loads(loaded.read_text()) == []


def test_progress_counts_the_runs_read_and_the_runs_tokenized(runs_root, tmp_path):
    cache = tmp_path / "cache" / FOLDER
    calls: list[tuple[str, int, int, str]] = []
    load_runs(runs_root, cache=cache, progress=lambda *a: calls.append(a))
    assert calls == [("read runs", 1, 2, "brief/vlm"), ("read runs", 2, 2, "lora_r8/vit-gpt2"),
                     ("PTB-tokenize 2 runs", 0, 2, ""), ("PTB-tokenize 2 runs", 1, 2, "brief/vlm"),
                     ("PTB-tokenize 2 runs", 2, 2, "lora_r8/vit-gpt2")]
    calls.clear()
    load_runs(runs_root, cache=cache, progress=lambda *a: calls.append(a))
    assert [c[0] for c in calls] == ["read runs", "read runs"]  # nothing to tokenize
