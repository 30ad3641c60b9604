"""`bench demo --fast` end to end in a temp cache and registry, plus the demo's pure pieces.

The end-to-end run builds and pretrains the tiny demo models, runs the `demo` group of settings
and writes the report; the checks read what it wrote (markdown tables, figures, JSON, run
registry) and recompute the verdict from the report's own numbers.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO, build_once, shared_tmp
from markdown_it import MarkdownIt
from PIL import Image

from bench.demo import models, profile, runner
from bench.demo.verdict import verdict_from_report
from bench.report import figures
PROMPTS = {"brief", "llava_concise"}
LORA_SETTINGS = {"demo_lora_r2", "demo_lora_r32"}
LORA_BACKENDS = {"vit-gpt2", "clip-flan-t5"}


@dataclass(frozen=True)
class DemoRun:
    stdout: str
    stderr: str
    out: Path
    runs: Path
    cache: Path

    @property
    def payload(self) -> dict:
        return json.loads(self.out.with_suffix(".json").read_text())


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """One `bench demo --fast` per test session, shared by the pytest-xdist workers."""

    def run(root: Path) -> None:
        env = {**os.environ, "BENCH_RUNS": str(root / "runs"), "BENCH_CACHE": str(root / "cache"),
               "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(
            [sys.executable, "-m", "bench", "demo", "--fast", "--no-progress", "--out", str(root / "reports" / "demo.md")],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=900,
        )
        (root / "stdout.txt").write_text(proc.stdout)
        (root / "stderr.txt").write_text(proc.stderr)
        (root / "rc.txt").write_text(str(proc.returncode))

    root = build_once(shared_tmp(tmp_path_factory) / "demo-fast", run)
    stdout, stderr = (root / "stdout.txt").read_text(), (root / "stderr.txt").read_text()
    assert (root / "rc.txt").read_text() == "0", stdout[-3000:] + stderr[-3000:]
    return DemoRun(stdout, stderr, root / "reports" / "demo.md", root / "runs", root / "cache")


# --- end to end --------------------------------------------------------------------------------

@pytest.mark.slow
def test_demo_prints_the_table_the_verdict_and_the_report_path(demo_run: DemoRun) -> None:
    stdout = demo_run.stdout
    assert "LoRA beats zero-shot on CIDEr with non-overlapping 95% CIs: yes" in stdout
    assert "The LoRA settings differ on CIDEr: yes" in stdout
    assert f"report: {demo_run.out}" in stdout
    for run in demo_run.payload["sections"][0]["runs"]:
        assert run["run"] in stdout  # every run is a row of the terminal table
    assert "Traceback" not in demo_run.stderr


def _tables(md: str) -> dict[str, list[list[str]]]:
    """Markdown tables by the `### heading` above them: header row + body rows of cell text."""
    tokens = MarkdownIt("commonmark").enable("table").parse(md)
    tables: dict[str, list[list[str]]] = {}
    heading, rows, in_heading = "", None, False
    for t in tokens:
        if t.type == "heading_open" and t.tag == "h3":
            in_heading = True
        elif t.type == "inline" and in_heading:
            heading, in_heading = t.content, False
        elif t.type == "table_open":
            rows = []
        elif t.type == "tr_open" and rows is not None:
            rows.append([])
        elif t.type == "inline" and rows is not None and rows:
            rows[-1].append(t.content)
        elif t.type == "table_close" and rows is not None:
            tables.setdefault(heading, rows)
            rows = None
    return tables


@pytest.mark.slow
def test_report_has_the_per_prompt_and_per_lora_tables_and_the_leaderboard(demo_run: DemoRun) -> None:
    md = demo_run.out.read_text()
    assert md.startswith("# Captioning comparison: synth")
    assert "About this demo (written by `bench demo`)" in md and "trained contrastively" in md
    tables = _tables(md)
    board = tables["Leaderboard (all runs)"]
    assert len(board) - 1 == 6  # 2 prompts + 2 LoRA settings x 2 backends
    prompts = tables["Zero-shot: one row per model x prompt"]
    assert {row[1] for row in prompts[1:]} == {p.replace("_", "\\_") for p in PROMPTS}  # Model, Prompt, ...
    lora = tables["LoRA: one row per (setting, backend)"]
    header = lora[0]
    rows = [dict(zip(header, row)) for row in lora[1:]]
    assert {(r["Setting"].replace("\\_", "_"), r["Backend"]) for r in rows} == {
        (s, b) for s in LORA_SETTINGS for b in LORA_BACKENDS
    }
    assert {r["r"] for r in rows} == {"2", "32"}
    # every metric cell of the leaderboard reads "value [lo, hi]"
    cider = [dict(zip(board[0], row))["CIDEr"].replace("*", "") for row in board[1:]]
    assert all(re.fullmatch(r"\d\.\d{4} \[\d\.\d{4}, \d\.\d{4}\]", c) for c in cider), cider


@pytest.mark.slow
def test_report_figures_open_at_their_sizes(demo_run: DemoRun) -> None:
    md = demo_run.out.read_text()
    links = re.findall(r"!\[([^\]]*)\]\(([^)]+)\)", md)
    by_name = {Path(target).name: demo_run.out.parent / target for _, target in links}
    assert {"s1-metrics.png", "s1-loss.png", "s1-gallery.png", "s1-grid.png"} <= set(by_name)
    sizes = {}
    for name, path in by_name.items():
        with Image.open(path) as im:
            im.load()
            assert im.format == "PNG"
            sizes[name] = im.size
    dpi = figures.DPI
    assert sizes["s1-loss.png"] == (int(figures.LOSS_SIZE_IN[0] * dpi), int(figures.LOSS_SIZE_IN[1] * dpi))
    width, height = sizes["s1-gallery.png"]
    row = int(figures.GALLERY_ROW_IN * dpi)
    assert width == int(figures.GALLERY_WIDTH_IN * dpi) and height % row == 0 and height // row >= 2
    width, height = sizes["s1-grid.png"]
    col = int(figures.GRID_COL_IN * dpi)
    assert height == int(figures.GRID_HEIGHT_IN * dpi) and width % col == 0 and width // col >= 2
    assert sizes["s1-metrics.png"] == figures.bars_size(6, 5)  # CIDEr, CLIPScore, RefCLIPScore, BLEU-4, ROUGE-L
    # the gallery lists every run's caption of its images, and the references
    assert "**top-1**" in md and "reference 1" in md


@pytest.mark.slow
def test_verdict_holds_on_the_report_numbers(demo_run: DemoRun) -> None:
    runs = demo_run.payload["sections"][0]["runs"]
    zero = [r["metrics"]["CIDEr"] for r in runs if r["kind"] == "zero-shot"]
    lora = [r["metrics"]["CIDEr"] for r in runs if r["kind"] == "lora"]
    assert len(zero) == 2 and len(lora) == 4
    assert min(m["lo"] for m in lora) > max(m["hi"] for m in zero)
    verdict = verdict_from_report(demo_run.payload)
    assert verdict.lora_beats_zero_shot and verdict.lora_settings_differ


@pytest.mark.slow
def test_runs_are_ordinary_registry_runs_of_the_fast_models(demo_run: DemoRun, monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.run import list_runs

    infos = list_runs(demo_run.runs)
    assert len(infos) == 6 and all(i.status == "complete" and i.dataset == "synth" for i in infos)
    for info in infos:
        results = json.loads((info.path / "results.json").read_text())
        assert results["model"].startswith(str(demo_run.cache / profile.FAST.models_dir))
        assert results["n_images"] == 100
        if info.kind == "lora":
            assert (info.path / "train" / "loss.csv").is_file()
            assert results["config"]["train"]["train_size"] == profile.FAST.train_size
    # every model folder holds a manifest that a second demo would accept as a cache hit
    monkeypatch.setenv("BENCH_CACHE", str(demo_run.cache))
    for name in (*profile.CAPTIONERS, profile.CLIP_NAME):
        manifest = json.loads((profile.models_root(profile.FAST) / name / profile.MANIFEST).read_text())
        assert models.cached_model(profile.models_root(profile.FAST) / name, manifest["key"])
        assert manifest["final_loss"] < manifest["first_loss"]


@pytest.mark.slow
def test_a_rebuilt_model_makes_its_runs_stale(demo_run: DemoRun, monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.run import plan_run

    monkeypatch.setenv("BENCH_CACHE", str(demo_run.cache))
    monkeypatch.setenv("BENCH_RUNS", str(demo_run.runs))
    settings = {s.name: s for s in runner.demo_settings(profile.FAST)}
    plan = plan_run(settings["demo_lora_r2"], "vit-gpt2")
    model = profile.models_root(profile.FAST) / "vit-gpt2"
    assert runner._stale(plan, [model]) is None  # fresh: a cache hit
    manifest = model / profile.MANIFEST
    before = manifest.stat()
    later = (plan.run_dir / "results.json").stat().st_mtime + 10
    os.utime(manifest, (later, later))
    try:
        assert "rebuilt" in (runner._stale(plan, [model]) or "")
    finally:
        os.utime(manifest, ns=(before.st_atime_ns, before.st_mtime_ns))
    # the full profile's setting (other model folders, more training images) is another config
    full_plan = plan_run(runner.demo_settings(profile.FULL)[0], "vit-gpt2")
    assert "another demo configuration" in (runner._stale(full_plan, []) or "")


# --- pure pieces -------------------------------------------------------------------------------

def _payload(zero: list[tuple[float, float, float]], lora: dict[tuple[str, str], tuple[float, float, float]]) -> dict:
    def run(name: str, kind: str, setting: str, backend: str, v: tuple[float, float, float]) -> dict:
        return {"run": name, "kind": kind, "setting": setting, "backend": backend,
                "metrics": {"CIDEr": {"value": v[0], "lo": v[1], "hi": v[2]}}}

    runs = [run(f"z{k}/llava", "zero-shot", f"z{k}", "llava", v) for k, v in enumerate(zero)]
    runs += [run(f"{s}/{b}", "lora", s, b, v) for (s, b), v in lora.items()]
    return {"sections": [{"runs": runs}]}


def test_verdict_needs_every_lora_interval_above_every_zero_shot_one() -> None:
    lora = {("a", "x"): (0.9, 0.8, 1.0), ("b", "x"): (1.0, 0.9, 1.1)}
    good = verdict_from_report(_payload([(0.4, 0.3, 0.5), (0.5, 0.45, 0.55)], lora))
    assert good.lora_beats_zero_shot and good.lora_settings_differ
    assert good.lines[0].startswith("LoRA beats zero-shot on CIDEr with non-overlapping 95% CIs: yes")
    overlap = verdict_from_report(_payload([(0.6, 0.5, 0.81)], lora))  # 0.81 > the lowest LoRA bound 0.8
    assert not overlap.lora_beats_zero_shot and ": no" in overlap.lines[0]
    same = verdict_from_report(_payload([(0.4, 0.3, 0.5)], {("a", "x"): (0.9, 0.8, 1.0), ("b", "x"): (0.9, 0.8, 1.0)}))
    assert same.lora_beats_zero_shot and not same.lora_settings_differ
    alone = verdict_from_report(_payload([(0.4, 0.3, 0.5)], {("a", "x"): (0.9, 0.8, 1.0)}))
    assert not alone.lora_settings_differ  # one setting cannot differ from another


def test_demo_group_is_zero_shot_prompts_and_lora_settings_on_synth(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path))
    full = {s.name: s for s in runner.demo_settings(profile.FULL)}
    assert {s.prompt for s in full.values() if s.prompt} == PROMPTS
    assert {n for n, s in full.items() if not s.prompt} == LORA_SETTINGS
    for s in full.values():
        assert s.data.dataset == "synth" and s.scoring.clip_model == str(tmp_path / "demo-models" / "clip")
        for b in s.backends:
            assert s.models[b].model.startswith(str(tmp_path / "demo-models" / b))
    assert full["demo_lora_r2"].lora.targets == full["demo_lora_r32"].lora.targets  # only the rank differs
    assert full["demo_lora_r2"].models["clip-flan-t5"].options["vision_model"] == str(tmp_path / "demo-models" / "clip-flan-t5" / "vision")
    fast = {s.name: s for s in runner.demo_settings(profile.FAST)}
    lora = fast["demo_lora_r32"]
    assert lora.models["vit-gpt2"].model == str(tmp_path / "demo-models-fast" / "vit-gpt2")
    assert lora.models["clip-flan-t5"].options["vision_model"] == str(tmp_path / "demo-models-fast" / "clip-flan-t5" / "vision")
    assert lora.scoring.clip_model == str(tmp_path / "demo-models-fast" / "clip")
    assert lora.train.train_size == profile.FAST.train_size and "meteor" not in lora.scoring.metrics
    assert lora.lora == full["demo_lora_r32"].lora  # the fast demo changes sizes, never the settings' LoRA


def test_demo_tokenizers_keep_synthetic_words_whole(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from bench.data.synth import make_scene, scene_captions
    from bench.tiny.clip_flan_t5 import build_t5_tokenizer
    from bench.tiny.vit_gpt2 import build_gpt2_tokenizer

    corpus = profile.tokenizer_corpus()
    caption = scene_captions(make_scene("target", 7, 3), "target", 7, 3)[0]  # a scene outside the corpus
    words = len(caption.split())
    build_t5_tokenizer(tmp_path / "t5", corpus, 300, whole_words=True)
    t5 = AutoTokenizer.from_pretrained(tmp_path / "t5")
    build_gpt2_tokenizer(tmp_path / "gpt2", corpus, 600)
    gpt2 = AutoTokenizer.from_pretrained(tmp_path / "gpt2")
    for tok in (t5, gpt2):
        ids = tok(caption, add_special_tokens=False)["input_ids"]
        assert len(ids) <= 1.5 * words, tok.convert_ids_to_tokens(ids)
        assert tok.decode(ids).strip() == caption
    plain = build_t5_tokenizer(tmp_path / "t5-plain", corpus, 300)  # the Unigram trainer alone spells words out
    assert len(plain(caption, add_special_tokens=False)["input_ids"]) > len(t5(caption, add_special_tokens=False)["input_ids"])
