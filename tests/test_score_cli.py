"""`bench score` end to end: id matching, outputs, and one-line errors for bad input."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.cli import main
from bench.scoring import JAVA_MISSING
from bench.tiny.clip import build_tiny_clip

FAST = "bleu,rouge,cider"  # METEOR's JVM takes seconds to start; test_scoring covers it

REFS_TXT = """image,caption
1000268201_693b08cb0e.jpg,A child in a pink dress is climbing up a set of stairs in an entry way .
1000268201_693b08cb0e.jpg,A girl going into a wooden building .
1001773457_577c3a7d70.jpg,A black dog and a spotted dog are fighting
1001773457_577c3a7d70.jpg,"Two dogs on pavement , moving toward each other ."
1002674143_1b742ab4b8.jpg,A little girl covered in paint sits in front of a painted rainbow .
1002674143_1b742ab4b8.jpg,A small girl in the grass plays with fingerpaints .
"""
PREDS = {
    "1000268201_693b08cb0e": "a girl climbs the stairs",  # without extension
    "1001773457_577c3a7d70.jpg": "two dogs are fighting",  # with extension
    "1002674143_1b742ab4b8": "a girl is painting",
}


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """bench's real entry point, in-process: (exit code, stdout, stderr)."""
    code = 0
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, out: str, err: str, *needles: str) -> None:
    assert code != 0
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture()
def files(tmp_path) -> dict[str, Path]:
    refs = tmp_path / "captions.txt"
    refs.write_text(REFS_TXT, encoding="utf-8")
    preds = tmp_path / "preds.json"
    preds.write_text(json.dumps(PREDS), encoding="utf-8")
    return {"refs": refs, "preds": preds, "dir": tmp_path}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny")


def _images(folder: Path) -> Path:
    from PIL import Image

    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(1)
    for name in ("1000268201_693b08cb0e", "1001773457_577c3a7d70", "1002674143_1b742ab4b8"):
        Image.fromarray(rng.integers(0, 256, (36, 48, 3), dtype=np.uint8)).save(folder / f"{name}.jpg")
    return folder


def test_json_output_and_id_matching(files, capsys):
    code, out, err = run_cli(["score", files["preds"], "--refs", files["refs"], "--metrics", FAST, "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert out.count("\n") == 1
    assert list(result) == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr", "n_images"]
    assert result["n_images"] == 3
    assert 0 < result["BLEU-1"] <= 1 and 0 <= result["CIDEr"]


def test_table_output_and_per_image_files(files, capsys):
    per_json = files["dir"] / "out" / "per.json"
    code, out, err = run_cli(
        ["score", files["preds"], "--refs", files["refs"], "--metrics", FAST, "--per-image", per_json], capsys
    )
    assert code == 0, err
    assert "CIDEr" in out and "ROUGE-L" in out and "preds.json vs captions.txt: 3 images" in out
    per = json.loads(per_json.read_text())
    assert set(per) == {"1000268201_693b08cb0e", "1001773457_577c3a7d70", "1002674143_1b742ab4b8"}
    assert set(per["1000268201_693b08cb0e"]) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr"}

    per_csv = files["dir"] / "per.csv"
    code, out, err = run_cli(
        ["score", files["preds"], "--refs", files["refs"], "--metrics", "cider", "--json", "--per-image", per_csv], capsys
    )
    assert code == 0, err
    rows = list(csv.DictReader(per_csv.open()))
    assert [r["image_id"] for r in rows] == list(per)
    assert [float(r["CIDEr"]) for r in rows] == pytest.approx([per[k]["CIDEr"] for k in per])
    assert json.loads(out)["CIDEr"] == pytest.approx(np.mean([per[k]["CIDEr"] for k in per]))


def test_clip_metrics_with_images(files, tiny_clip, capsys):
    images = _images(files["dir"] / "images")
    long_preds = dict(PREDS, **{"1002674143_1b742ab4b8": "a girl " * 2000})
    files["preds"].write_text(json.dumps(long_preds))
    code, out, err = run_cli(
        ["score", files["preds"], "--refs", files["refs"], "--metrics", "cider,clipscore", "--images", images,
         "--clip-model", tiny_clip, "--json", "--batch-size", "2", "--device", "cpu"],
        capsys,
    )
    assert code == 0, err
    result = json.loads(out)
    assert list(result) == ["CIDEr", "CLIPScore", "RefCLIPScore", "n_images", "n_clip_truncated", "clip_model"]
    assert result["n_clip_truncated"] == 1 and result["clip_model"] == str(tiny_clip)
    assert 0 <= result["CLIPScore"] <= 2.5


def test_no_images_skips_clip_with_a_note(files, capsys):
    code, out, err = run_cli(["score", files["preds"], "--refs", files["refs"], "--metrics", "rouge,clipscore", "--json"], capsys)
    assert code == 0
    assert "CLIPScore/RefCLIPScore skipped" in err
    assert set(json.loads(out)) == {"ROUGE-L", "n_images"}


def test_unknown_and_missing_ids(files, capsys):
    preds = dict(PREDS, extra_1="x", extra_2="y")
    del preds["1002674143_1b742ab4b8"]
    files["preds"].write_text(json.dumps(preds))
    args = ["score", files["preds"], "--refs", files["refs"], "--metrics", FAST, "--json"]
    code, out, err = run_cli(args, capsys)
    assert_one_line_error(
        code, out, err,
        "2 of 4 predictions name images not in", "'extra_1', 'extra_2'",
        "1 of 3 reference images have no prediction ('1002674143_1b742ab4b8')", "--intersect",
    )
    code, out, err = run_cli(args + ["--intersect"], capsys)
    assert code == 0, err
    assert json.loads(out)["n_images"] == 2
    assert "scoring the 2 images in both; left out 2 predictions without references and 1 reference images" in err


@pytest.mark.parametrize(
    ("case", "needles"),
    [
        ("missing_predictions", ["nope.json: file not found"]),
        ("missing_refs", ["nope.txt", "not found"]),
        ("bad_json", ["preds.json: invalid JSON at line 1 column"]),
        ("empty_predictions", ["preds.json: no predictions (empty list)"]),
        ("empty_ref_list", ["refs.json", "'1000268201_693b08cb0e.jpg'", "empty caption list"]),
        ("non_string", ["preds.json: prediction for image '1001773457_577c3a7d70.jpg' is not a string (got int)"]),
        ("bad_metric", ["--metrics: unknown metric 'spice'"]),
        ("bad_per_image", ["--per-image", "use a .json or .csv file name"]),
        ("no_images_dir", ["--images", "folder not found"]),
    ],
)
def test_bad_input_is_one_line(files, capsys, case, needles):
    d = files["dir"]
    args = ["score", files["preds"], "--refs", files["refs"], "--metrics", FAST]
    if case == "missing_predictions":
        args[1] = d / "nope.json"
    elif case == "missing_refs":
        args[3] = d / "nope.txt"
    elif case == "bad_json":
        files["preds"].write_text('{"a": "b",, }')
    elif case == "empty_predictions":
        files["preds"].write_text("[]")
    elif case == "empty_ref_list":
        (d / "refs.json").write_text(json.dumps({"1000268201_693b08cb0e.jpg": [], "x.jpg": ["a"]}))
        args[3] = d / "refs.json"
    elif case == "non_string":
        files["preds"].write_text(json.dumps(dict(PREDS, **{"1001773457_577c3a7d70.jpg": 5})))
    elif case == "bad_metric":
        args[-1] = "bleu,spice"
    elif case == "bad_per_image":
        args += ["--per-image", d / "per.txt"]
    elif case == "no_images_dir":
        args = args[:-2] + ["--images", d / "no-such-folder"]
    code, out, err = run_cli(args, capsys)
    assert_one_line_error(code, out, err, *needles)
    assert out == ""


def test_corrupt_jpeg_is_one_line(files, tiny_clip, capsys):
    images = _images(files["dir"] / "images")
    bad = images / "1001773457_577c3a7d70.jpg"
    bad.write_bytes(bad.read_bytes()[:200] + b"\x00garbage" * 10)
    code, out, err = run_cli(
        ["score", files["preds"], "--refs", files["refs"], "--metrics", "clipscore", "--images", images,
         "--clip-model", tiny_clip, "--json"],
        capsys,
    )
    assert_one_line_error(code, out, err, "1001773457_577c3a7d70.jpg")
    assert out == ""


def test_java_missing_is_one_line(files, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(files["dir"]))  # nothing named java here
    code, out, err = run_cli(["score", files["preds"], "--refs", files["refs"], "--metrics", "bleu", "--json"], capsys)
    assert_one_line_error(code, out, err, JAVA_MISSING)


def test_real_process_prints_no_traceback(files):
    files["preds"].write_text("{broken")
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "score", str(files["preds"]), "--refs", str(files["refs"]), "--json"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "invalid JSON at line 1 column 2" in proc.stderr
