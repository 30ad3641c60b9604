"""`build_report` on run folders made from real Flickr8k captions (no model needed): tables per
prompt / LoRA setting / leaderboard, figures, safe markdown, determinism, sections, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from markdown_it import MarkdownIt
from PIL import Image

from bench.errors import BenchError
from bench.report import build_report
from bench.report.figures import GALLERY_ROW_IN, GRID_COL_IN, GRID_HEIGHT_IN, LOSS_SIZE_IN, bars_size
from bench.testing.run_folders import flickr8k_samples, held_out_run, loss_curve, write_run

N_IMAGES = 24
N_BOOT = 100
LONG = "x" * 10_000
NASTY = [
    "a dog | jumps | over || the fence",
    "first line\nsecond line\r\nthird\u2028fourth",
    "``` fenced ``` and `inline code` with a trailing backtick`",
    "<script>alert('x')</script> <b>bold</b> &amp; &lt;tag&gt; <!-- comment -->",
    LONG,
    "**not bold** _not italic_ [not a link](http://example.com) ![img](x.png) $x^2$ \\ # ~~strike~~",
]


def _words(text: str, n: int) -> str:
    return " ".join(text.split()[:n])


@pytest.fixture(scope="module")
def flickr_runs(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """Two zero-shot prompts and two LoRA settings whose "captions" are real held-out references
    (refs 2-5 are the references), plus loss curves and an attention figure."""
    from bench.paths import shared_data_dir

    data = shared_data_dir()
    if not (data / "flickr8k-1k" / "captions.txt").is_file():
        pytest.skip("shared data missing")
    root = tmp_path_factory.mktemp("report") / "runs"
    full = flickr8k_samples(data, N_IMAGES)
    samples = [{**s, "refs": s["refs"][1:]} for s in full]
    first = {s["image_id"]: s["refs"][0] for s in full}
    lora_cfg = lambda r: {"lora": {"r": r, "alpha": 2 * r, "targets": ["c_attn", "c_proj"]}, "train": {"epochs": 3, "lr": 1e-4}}  # noqa: E731
    held_out_run(root, samples, setting="brief", backend="llava", kind="zero-shot", captions=first, seed=1,
                 prompt="brief", prompt_text="USER: <image>\nBriefly describe this image in a sentence. ASSISTANT:",
                 timings={"train_s": 0.0, "generate_s": 12.0, "score_s": 1.0, "images_per_s": 2.0},
                 memory={"peak_rss_mb": 900.0, "peak_cuda_mb": None})
    held_out_run(root, samples, setting="objects", backend="llava", kind="zero-shot",
                 captions={k: _words(v, 4) for k, v in first.items()}, seed=2, prompt="objects",
                 prompt_text="USER: <image>\nIn one sentence, describe the key objects. ASSISTANT:")
    held_out_run(root, samples, setting="lora-r8", backend="vit-gpt2", kind="lora",
                 captions={k: (v + " tropical tropical tropical" if j % 3 == 0 else v) for j, (k, v) in enumerate(first.items())},
                 seed=3, config=lora_cfg(8), params={"trainable": 294_912, "total": 239_000_000, "trainable_pct": 0.1234},
                 timings={"train_s": 3725.0, "generate_s": 10.0, "score_s": 1.0, "images_per_s": 2.4},
                 loss_rows=loss_curve(40, 4.0, 2.0))
    held_out_run(root, samples, setting="lora-r16", backend="clip-flan-t5", kind="lora",
                 captions={k: _words(v, 7) for k, v in first.items()}, seed=4, config=lora_cfg(16),
                 params={"trainable": 589_824, "total": 300_000_000, "trainable_pct": 0.1966},
                 timings={"train_s": 95.0, "generate_s": 8.0, "score_s": 1.0, "images_per_s": 3.0},
                 loss_rows=loss_curve(30, 5.0, 2.5))
    attend = root / "lora-r8" / "vit-gpt2" / "attend"
    attend.mkdir()
    Image.new("RGB", (32, 16), (200, 10, 10)).save(attend / "0.png")
    return root


@pytest.fixture(scope="module")
def report(flickr_runs: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("out")
    result = build_report(flickr_runs, out / "flickr.md", csv=out / "flickr.csv", json_out=out / "flickr.json", n_boot=N_BOOT)
    return result, result.markdown.read_text(), json.loads(result.json.read_text())


def _sections(md: str) -> dict[str, str]:
    """### title -> text until the next heading."""
    parts: dict[str, str] = {}
    title = None
    for line in md.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip()
            parts[title] = ""
        elif title is not None:
            parts[title] += line + "\n"
    return parts


def _table_rows(text: str) -> list[list[str]]:
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in row.strip("|").split(" | ")] for row in rows]


def test_tables_per_prompt_lora_setting_and_leaderboard(report):
    result, md, data = report
    parts = _sections(md)
    assert "Leaderboard (all runs)" in parts
    assert "Zero-shot: one row per model x prompt" in parts and "LoRA: one row per (setting, backend)" in parts
    assert "External systems" not in parts
    runs = data["sections"][0]["runs"]
    cider = [r["metrics"]["CIDEr"]["value"] for r in runs]
    assert cider == sorted(cider, reverse=True) and len(runs) == 4

    board = _table_rows(parts["Leaderboard (all runs)"])
    header, body = board[0], board[2:]
    assert header[:3] == ["\\#", "Run", "Kind"] and "CIDEr" in header and "p CIDEr" in header
    assert [row[1] for row in body] == [r["run"] for r in runs]
    col = header.index("CIDEr")
    best = runs[0]["metrics"]["CIDEr"]
    assert body[0][col] == f"**{best['value']:.4f}** [{best['lo']:.4f}, {best['hi']:.4f}]"
    assert all(not row[col].startswith("**") for row in body[1:])

    prompts = _table_rows(parts["Zero-shot: one row per model x prompt"])
    assert [row[1] for row in prompts[2:]] == [r["prompt"] for r in runs if r["kind"] == "zero-shot"]  # Model, Prompt, ...
    lora = _table_rows(parts["LoRA: one row per (setting, backend)"])
    assert {row[0]: row[2] for row in lora[2:]} == {"lora-r8": "8", "lora-r16": "16"}
    # the baseline defaults to the best zero-shot prompt; its p against itself is exactly 1
    zero = [r for r in runs if r["kind"] == "zero-shot"]
    assert data["sections"][0]["baseline"] == zero[0]["run"]
    assert zero[0]["metrics"]["CIDEr"]["p_vs_baseline"] == 1.0
    for r in runs:
        for m in ("CIDEr", "CLIPScore", "BLEU-4", "ROUGE-L"):
            v = r["metrics"][m]
            assert v["lo"] <= v["value"] <= v["hi"] or m == "METEOR"
            assert 0 < v["p_vs_baseline"] <= 1


def test_cost_and_degeneration_tables(report):
    _, md, data = report
    parts = _sections(md)
    cost = {row[0]: row for row in _table_rows(parts["Cost"])[2:]}
    assert cost["lora-r8/vit-gpt2"][1] == "**294,912**" and cost["lora-r8/vit-gpt2"][3] == "1h 02m"
    assert cost["lora-r16/clip-flan-t5"][3] == "**1m 35s**"  # the shortest training is bold
    assert cost["brief/llava"][1] == "—" and cost["brief/llava"][3] == "—"  # zero-shot trains nothing
    deg = {r["run"]: r["degeneration"] for r in data["sections"][0]["runs"]}
    assert deg["lora-r8/vit-gpt2"]["repeated_share"] == pytest.approx(8 / 24)  # every 3rd caption
    assert deg["brief/llava"]["empty_share"] == 0.0
    assert deg["objects/llava"]["mean_length"] <= 4.0


def test_figures_are_pngs_of_the_expected_size(report, flickr_runs: Path):
    result, md, data = report
    names = {p.name: p for p in result.figures}
    assert set(names) == {"s1-metrics.png", "s1-loss.png", "s1-gallery.png", "s1-grid.png"}
    headline = ("CIDEr", "CLIPScore", "RefCLIPScore", "BLEU-4", "METEOR", "ROUGE-L")
    n_metrics = len([m for m in headline if m in data["sections"][0]["runs"][0]["metrics"]])
    assert n_metrics == 5  # no METEOR in these runs
    expected = {
        "s1-metrics.png": bars_size(4, n_metrics),
        "s1-loss.png": (int(LOSS_SIZE_IN[0] * 100), int(LOSS_SIZE_IN[1] * 100)),
        "s1-gallery.png": (1200, int(round(GALLERY_ROW_IN * 4 * 100))),  # top-2 + bottom-2
        "s1-grid.png": (int(GRID_COL_IN * 4 * 100), int(GRID_HEIGHT_IN * 100)),
    }
    assert expected["s1-metrics.png"] == (1200, 2 * 300)  # two rows of 3 panels, 4 runs
    for name, path in names.items():
        with Image.open(path) as im:
            assert im.format == "PNG"
            assert im.size == expected[name]
            im.load()
            assert len(set(im.convert("L").getdata())) > 10  # something was drawn
        assert f"(flickr-figures/{name})" in md  # linked relative to the report
    # the attention figure of a run is linked from the gallery and the link resolves
    link = next(line for line in md.splitlines() if line.startswith("Attention maps"))
    target = link.split("](")[1].split(")")[0]
    assert (result.markdown.parent / target).resolve() == (flickr_runs / "lora-r8/vit-gpt2/attend/0.png").resolve()


def test_gallery_ranks_images_by_mean_clipscore(report):
    _, md, data = report
    examples = data["sections"][0]["examples"]
    gallery = [e for e in examples if e["role"] != "grid"]
    assert [e["role"] for e in gallery] == ["top-1", "top-2", "bottom-2", "bottom-1"]
    means = [sum(e["CLIPScore"].values()) / len(e["CLIPScore"]) for e in gallery]
    assert means == sorted(means, reverse=True)
    assert len([e for e in examples if e["role"] == "grid"]) == 4
    assert f"**top-1**: image {gallery[0]['image_id'].replace('_', chr(92) + '_')}" in md


def test_csv_has_one_row_per_run_with_cis(report):
    result, _, data = report
    df = pd.read_csv(result.csv)
    assert list(df["run"]) == [r["run"] for r in data["sections"][0]["runs"]]
    assert {"CIDEr", "CIDEr lo", "CIDEr hi", "CIDEr p", "degeneration distinct_1", "cost train_s"} <= set(df.columns)
    assert df["CIDEr"].tolist() == [r["metrics"]["CIDEr"]["value"] for r in data["sections"][0]["runs"]]


def _check_tables(md: str) -> int:
    """Every table row has as many cells as its header; no raw HTML; returns the table count."""
    tokens = MarkdownIt("commonmark").enable("table").parse(md)
    assert not [t for t in tokens if t.type == "html_block"]
    assert not [c for t in tokens if t.type == "inline" for c in (t.children or []) if c.type == "html_inline"]
    tables, header, row = 0, None, 0
    for t in tokens:
        if t.type == "table_open":
            tables, header = tables + 1, None
        elif t.type == "tr_open":
            row = 0
        elif t.type in ("th_open", "td_open"):
            row += 1
        elif t.type == "tr_close":
            header = row if header is None else header
            assert row == header
    return tables


def test_hostile_captions_cannot_break_the_markdown(flickr_runs: Path, tmp_path: Path):
    from bench.paths import shared_data_dir

    samples = [{**s, "refs": s["refs"][1:]} for s in flickr8k_samples(shared_data_dir(), N_IMAGES)]
    root = tmp_path / "runs"
    import shutil

    shutil.copytree(flickr_runs / "brief", root / "brief")
    # one run per hostile string, as every caption, its prompt name and its prompt text, so the
    # string shows wherever the report quotes that run
    for k, text in enumerate(NASTY):
        held_out_run(root, samples, setting=f"nasty{k}|<b>`x`&amp;*_", backend="llava", kind="zero-shot",
                     captions={s["image_id"]: text for s in samples}, seed=9, prompt=f"p{k}|<i>", prompt_text=text)
    result = build_report(root, tmp_path / "out" / "nasty.md", csv=tmp_path / "nasty.csv", json_out=tmp_path / "nasty.json",
                          n_boot=20)
    md = result.markdown.read_text()
    assert _check_tables(md) >= 8
    assert md.count("nasty") >= 7 * len(NASTY)  # every hostile run is in the tables
    assert LONG not in md and "x" * 200 not in md  # truncated with an ellipsis
    assert "…" in md
    assert "<script>" not in md and "&lt;script&gt;" in md
    # the full text is in the JSON and the CSV
    data = json.loads(result.json.read_text())
    full = [c for e in data["sections"][0]["examples"] for c in e["captions"].values()]
    assert LONG in full and NASTY[1] in full
    df = pd.read_csv(result.csv, keep_default_na=False)
    assert set(NASTY) <= set(df["prompt_text"].tolist())
    for path in result.figures:
        with Image.open(path) as im:
            assert im.format == "PNG"


def test_report_is_deterministic(flickr_runs: Path, tmp_path: Path):
    a = build_report(flickr_runs, tmp_path / "a" / "r.md", csv=tmp_path / "a" / "r.csv", json_out=tmp_path / "a" / "r.json", n_boot=50)
    b = build_report(flickr_runs, tmp_path / "b" / "r.md", csv=tmp_path / "b" / "r.csv", json_out=tmp_path / "b" / "r.json", n_boot=50)
    la, lb = a.markdown.read_text().splitlines(), b.markdown.read_text().splitlines()
    assert sum(line.startswith("Generated at ") for line in la) == 1
    assert [x for x in la if not x.startswith("Generated at ")] == [x for x in lb if not x.startswith("Generated at ")]
    assert a.csv.read_bytes() == b.csv.read_bytes() and a.json.read_bytes() == b.json.read_bytes()
    assert [p.name for p in a.figures] == [p.name for p in b.figures]
    for pa, pb in zip(a.figures, b.figures):
        assert pa.read_bytes() == pb.read_bytes()
    # another seed gives other intervals
    c = build_report(flickr_runs, tmp_path / "c" / "r.md", json_out=tmp_path / "c" / "r.json", n_boot=50, seed=1)
    assert c.json.read_bytes() != a.json.read_bytes()


def _small(root: Path, setting: str, fingerprint: str, n: int, dataset: str = "flickr8k-1k") -> None:
    from bench.paths import shared_data_dir

    samples = [{**s, "refs": s["refs"][1:]} for s in flickr8k_samples(shared_data_dir(), n)]
    write_run(root, setting=setting, backend="llava", kind="zero-shot", dataset=dataset, fingerprint=fingerprint,
              samples=samples, captions={s["image_id"]: s["refs"][0] for s in samples}, corpus={"CIDEr": 1.0})


def test_runs_with_another_split_are_a_separate_section(tmp_path: Path, shared_data: Path):
    root = tmp_path / "runs"
    _small(root, "a", "fp-main", 8)
    _small(root, "b", "fp-main", 8)
    _small(root, "c", "fp-other", 8)
    _small(root, "d", "fp-main", 6)  # same fingerprint string, fewer images (data.limit)
    result = build_report(root, tmp_path / "r.md", json_out=tmp_path / "r.json", n_boot=10)
    md = result.markdown.read_text()
    sections = json.loads(result.json.read_text())["sections"]
    assert [(s["fingerprint"], s["n_images"], len(s["runs"])) for s in sections] == [
        ("fp-main", 8, 2), ("fp-main", 6, 1), ("fp-other", 8, 1)
    ]
    assert "Note: 1 run on flickr8k-1k (c/llava) use a different split (fingerprint fp-other vs fp-main) and are shown separately" in md
    assert "score a different set of images (6 vs 8" in md
    assert md.count("\n## ") == 3


def test_errors_are_one_line_bench_errors(tmp_path: Path, shared_data: Path):
    root = tmp_path / "runs"
    with pytest.raises(BenchError, match="no finished runs"):
        build_report(root, tmp_path / "r.md")
    _small(root, "a", "fp", 4)
    with pytest.raises(BenchError, match="no finished runs on dataset 'coco'"):
        build_report(root, tmp_path / "r.md", dataset="coco")
    with pytest.raises(BenchError, match="--baseline: no finished run named 'zz/llava'"):
        build_report(root, tmp_path / "r.md", baseline="zz/llava")
    res = root / "a" / "llava" / "results.json"
    data = json.loads(res.read_text())
    del data["fingerprint"]
    res.write_text(json.dumps(data))
    with pytest.raises(BenchError) as err:
        build_report(root, tmp_path / "r.md")
    assert str(err.value) == f"{res}: missing key 'fingerprint'"
    data["fingerprint"] = "fp"
    res.write_text(json.dumps(data))
    pred = root / "a" / "llava" / "predictions.jsonl"
    pred.write_text("".join(pred.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(BenchError, match=r"predictions.jsonl: no caption for image_id '.+' \(listed in split.json; 1 missing\)"):
        build_report(root, tmp_path / "r.md")


def test_degeneration_statistics():
    from bench.report.diagnostics import degeneration, is_degenerate

    assert is_degenerate("a tropical tropical tropical beach".split())
    assert is_degenerate("a dog on a dog on a".split())  # the 3-gram "a dog on" twice
    assert not is_degenerate("a man in a red shirt and a hat".split())
    assert not is_degenerate("the the cat".split()) and not is_degenerate([])
    d = degeneration(["a b c", "", "a a a"])
    assert (d.n_captions, d.mean_length, d.vocab_size) == (3, 2.0, 3)
    assert d.repeated_share == pytest.approx(1 / 3) and d.empty_share == pytest.approx(1 / 3)
    assert d.distinct_1 == pytest.approx(3 / 6)  # a, b, c over 6 words
    assert d.distinct_2 == pytest.approx(3 / 4)  # (a b), (b c), (a a) over 4 bigrams


def test_cells_are_escaped_folded_and_truncated():
    from bench.report.markdown import cell

    assert cell("a|b\nc\r\nd\u2028e\tf") == "a\\|b c d e f"
    assert cell("<b>&amp;</b>") == "&lt;b&gt;&amp;amp;&lt;/b&gt;"
    assert cell("`x` *y* _z_ [l](u) \\") == "\\`x\\` \\*y\\* \\_z\\_ \\[l\\](u) \\\\"
    assert cell("x" * 100, 10) == "x" * 9 + "…"
    assert cell("<" * 100, 5) == "&lt;" * 4 + "…"  # truncated before escaping: no cut entity
    assert cell("nul\x00bell\x07") == "nulbell"


def test_every_interval_contains_its_value(report):
    """`value [lo, hi]` never excludes its own value, in the markdown and in the JSON."""
    import re

    _, md, data = report
    cells = re.findall(r"(-?\d+\.\d+)\**\s*\[(-?\d+\.\d+), (-?\d+\.\d+)\]", md)
    assert len(cells) >= 20
    for value, lo, hi in cells:
        assert float(lo) <= float(value) <= float(hi), f"{value} [{lo}, {hi}]"
    checked = 0
    for section in data["sections"]:
        for run in section["runs"]:
            for name, m in run["metrics"].items():
                if m["lo"] is not None:
                    assert m["lo"] <= m["value"] <= m["hi"], (run["run"], name, m)
                    checked += 1
    assert 0 < checked <= len(cells)  # the markdown repeats some cells across its tables
