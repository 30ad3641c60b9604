"""The built-in synthetic dataset: deterministic bytes, idempotent writing, readable by bench."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from bench.cli import app
from bench.data import load_dataset, make_split, read_references
from bench.data.synth import vocabulary, write_synth
from bench.data.synth import VARIANTS, make_scene, scene_captions
from bench.errors import BenchError


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_same_seed_same_bytes_different_seed_different(tmp_path: Path) -> None:
    a = write_synth(tmp_path / "a", 30, seed=5)
    b = write_synth(tmp_path / "b", 30, seed=5)
    c = write_synth(tmp_path / "c", 30, seed=6)
    assert digest(a.parent) == digest(b.parent)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    images_b = {k: v for k, v in digest(b.parent).items() if k.startswith("images/")}
    images_c = {k.replace("-s6-", "-s5-"): v for k, v in digest(c.parent).items() if k.startswith("images/")}
    assert images_b != images_c


def test_image_i_does_not_depend_on_n(tmp_path: Path) -> None:
    small, big = write_synth(tmp_path / "s", 5, seed=0), write_synth(tmp_path / "b", 12, seed=0)
    assert {k: v for k, v in digest(big.parent).items() if k in digest(small.parent) and k.startswith("images/")} == {
        k: v for k, v in digest(small.parent).items() if k.startswith("images/")
    }
    assert big.read_text().startswith(small.read_text())


def test_written_format_reads_back(tmp_path: Path) -> None:
    path = write_synth(tmp_path / "t", 20, seed=0, size=96)
    entries = read_references(path)
    assert len(entries) == 20
    for entry in entries:
        assert len(entry.refs) == 5 and len(set(entry.refs)) == 5  # five different wordings
        im = Image.open(path.parent / "images" / entry.file_name)
        assert im.size == (96, 96) and im.mode == "RGB"


def test_captions_describe_the_scene() -> None:
    for variant, spec in VARIANTS.items():
        for i in range(50):
            scene = make_scene(variant, 3, i)
            assert scene.shape in spec.shapes and scene.colour in spec.colours
            caps = scene_captions(scene, variant, 3, i)
            assert all(scene.colour in c for c in caps), caps
            assert all(set(c.replace(",", " ").split()) <= set(vocabulary()) for c in caps)


def test_variants_overlap_partly() -> None:
    src, tgt = VARIANTS["source"], VARIANTS["target"]
    assert set(src.shapes) & set(tgt.shapes) and set(src.shapes) ^ set(tgt.shapes)
    assert set(src.colours) & set(tgt.colours) and set(src.colours) ^ set(tgt.colours)


def test_idempotent_and_refuses_other_params(tmp_path: Path) -> None:
    path = write_synth(tmp_path / "d", 8, seed=1)
    stamp = {p: p.stat().st_mtime_ns for p in path.parent.rglob("*")}
    assert write_synth(tmp_path / "d", 8, seed=1) == path
    assert {p: p.stat().st_mtime_ns for p in path.parent.rglob("*")} == stamp
    with pytest.raises(BenchError, match=r"manifest\.json: folder already holds synthetic data"):
        write_synth(tmp_path / "d", 8, seed=2)
    # A deleted image is noticed and the folder rebuilt.
    next((path.parent / "images").iterdir()).unlink()
    write_synth(tmp_path / "d", 8, seed=1)
    assert len(list((path.parent / "images").iterdir())) == 8
    # A folder with someone else's captions.txt is never overwritten.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "captions.txt").write_text("image,caption\n")
    with pytest.raises(BenchError, match="did not generate"):
        write_synth(tmp_path / "other", 3, seed=0)


def test_bad_parameters() -> None:
    with pytest.raises(BenchError, match="variant must be one of target, source"):
        write_synth("/nonexistent", 3, 0, "neither")
    with pytest.raises(BenchError, match="n must be an integer >= 1"):
        write_synth("/nonexistent", 0, 0)


def test_cli_bench_data_synth(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["data", "synth", "--out", str(out), "--n", "6", "--seed", "2", "--variant", "source"])
    assert result.exit_code == 0, result.output
    assert "captions.txt" in result.output
    assert digest(out) == digest(write_synth(tmp_path / "api", 6, seed=2, variant="source").parent)


def test_dataset_declaration_generates_on_first_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    toml = tmp_path / "mini.toml"
    toml.write_text(
        'annotations = "${BENCH_CACHE}/synth/target-n30-s0/captions.txt"\n'
        'images = "${BENCH_CACHE}/synth/target-n30-s0/images"\n'
        'generator = { variant = "target", n = 30, seed = 0 }\n[split]\nval_size = 10\n'
    )
    split = make_split(load_dataset(toml))
    assert len(split.val) == 10 and len(split.train) == 20
    assert make_split(load_dataset(toml)) == split
    assert (tmp_path / "cache" / "synth" / "target-n30-s0" / "manifest.json").is_file()


def test_shipped_synth_declarations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tomllib

    from bench.paths import datasets_dir

    for name in ("synth", "synth-source"):
        table = tomllib.loads((datasets_dir() / f"{name}.toml").read_text())
        gen = table["generator"]
        folder = f"{gen['variant']}-n{gen['n']}-s{gen['seed']}"  # the folder says what is in it
        assert table["annotations"] == f"${{BENCH_CACHE}}/synth/{folder}/captions.txt"
        assert table["images"] == f"${{BENCH_CACHE}}/synth/{folder}/images"
        assert 0 < table["split"]["val_size"] < gen["n"]
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path))
    split = make_split(load_dataset("synth"))
    assert len(split.val) + len(split.train) == 600 and split.val[0].path.is_relative_to(tmp_path)
