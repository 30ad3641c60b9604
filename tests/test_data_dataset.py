"""Dataset declarations, the deterministic split and its fingerprint, missing images, and the
bad-input battery as the user sees it: one line naming the file and field, non-zero exit."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from PIL import Image

from bench.cli import main
from bench.data import fingerprint, load_dataset, make_split, partition
from bench.errors import BenchError


def make_world(root: Path, n: int = 10, *, toml_split: str = "val_size = 4\nseed = 0", extra: str = "") -> Path:
    """n tiny images with Kaggle captions and a dataset declaration; returns the .toml path."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = ["image,caption"]
    for i in range(n):
        Image.new("RGB", (4, 4), (i * 20, 0, 0)).save(images / f"img{i:02d}.jpg")
        rows += [f"img{i:02d}.jpg,a red square number {i} version {k}" for k in range(5)]
    (root / "captions.txt").write_text("\n".join(rows) + "\n")
    toml = root / "world.toml"
    toml.write_text(
        f'description = "test world"\nannotations = "captions.txt"\nimages = "images"\n{extra}\n[split]\n{toml_split}\n'
    )
    return toml


# --- loading and splitting -----------------------------------------------------------------------

def test_load_dataset_relative_paths_and_samples(tmp_path: Path) -> None:
    ds = load_dataset(make_world(tmp_path))
    assert ds.name == "world" and ds.description == "test world"
    assert len(ds.samples) == 10 and ds.samples[0].image_id == "img00"
    assert ds.samples[3].path == (tmp_path / "images" / "img03.jpg").resolve()
    assert ds.samples[3].refs[4] == "a red square number 3 version 4"


def test_seeded_split_is_deterministic_and_disjoint(tmp_path: Path) -> None:
    toml = make_world(tmp_path)
    first, second = make_split(load_dataset(toml)), make_split(load_dataset(toml))
    assert first == second
    assert len(first.val) == 4 and len(first.train) == 6
    assert not {s.image_id for s in first.val} & {s.image_id for s in first.train}
    # The documented rule: sorted ids, random.Random(seed).shuffle, the first val_size.
    import random

    ids = sorted(f"img{i:02d}" for i in range(10))
    random.Random(0).shuffle(ids)
    assert [s.image_id for s in first.val] == ids[:4]
    assert first.fingerprint == fingerprint(first.val)


def test_split_does_not_depend_on_annotation_order(tmp_path: Path) -> None:
    toml = make_world(tmp_path)
    split = make_split(load_dataset(toml))
    lines = (tmp_path / "captions.txt").read_text().splitlines()
    blocks = [lines[1 + 5 * i : 6 + 5 * i] for i in range(10)]  # images in reverse order, refs kept
    (tmp_path / "captions.txt").write_text("\n".join([lines[0]] + [x for b in reversed(blocks) for x in b]) + "\n")
    again = make_split(load_dataset(toml))
    assert [s.image_id for s in again.val] == [s.image_id for s in split.val]
    assert again.fingerprint == split.fingerprint


def test_fingerprint_changes_with_one_reference(tmp_path: Path) -> None:
    toml = make_world(tmp_path)
    split = make_split(load_dataset(toml))
    val_id = split.val[0].image_id
    text = (tmp_path / "captions.txt").read_text()
    (tmp_path / "captions.txt").write_text(text.replace(f"number {int(val_id[3:])} version 2", "edited"))
    changed = make_split(load_dataset(toml))
    assert [s.image_id for s in changed.val] == [s.image_id for s in split.val]
    assert changed.fingerprint != split.fingerprint
    # Order of the samples given to fingerprint() does not matter; the seed does.
    assert fingerprint(reversed(split.val)) == split.fingerprint
    other_seed = make_split(load_dataset(make_world(tmp_path / "b", toml_split="val_size = 4\nseed = 1")))
    assert other_seed.fingerprint != split.fingerprint


def test_limit_truncates_val_only(tmp_path: Path) -> None:
    ds = load_dataset(make_world(tmp_path))
    full, limited = make_split(ds), make_split(ds, limit=2)
    assert limited.val == full.val[:2] and limited.train == full.train
    assert limited.fingerprint == fingerprint(full.val[:2]) != full.fingerprint
    with pytest.raises(BenchError, match="limit must be an integer >= 1"):
        make_split(ds, limit=0)


def test_explicit_val_id_list(tmp_path: Path) -> None:
    (tmp_path / "ids.txt").write_text("# chosen by hand\nimg07.jpg\nimg02\n\n")
    split = make_split(load_dataset(make_world(tmp_path, toml_split='val_ids = "ids.txt"')))
    assert [s.image_id for s in split.val] == ["img07", "img02"] and len(split.train) == 8
    (tmp_path / "ids.txt").write_text("img01\nimg99\n")
    with pytest.raises(BenchError, match=r"ids\.txt line 2: id 'img99' is not an image of dataset 'world'"):
        make_split(load_dataset(tmp_path / "world.toml"))


def test_karpathy_split(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    images = []
    for i, split in enumerate(["train", "val", "test", "restval", "val"]):
        Image.new("RGB", (2, 2)).save(tmp_path / "images" / f"f{i}.jpg")
        images.append({"filename": f"f{i}.jpg", "split": split, "sentences": [{"raw": f"caption {i}"}]})
    (tmp_path / "dataset_flickr.json").write_text(json.dumps({"images": images}))
    (tmp_path / "k.toml").write_text('annotations = "dataset_flickr.json"\nimages = "images"\n[split]\nkarpathy_split = "val"\n')
    split = make_split(load_dataset(tmp_path / "k.toml"))
    assert [s.image_id for s in split.val] == ["f1", "f4"]
    assert [s.image_id for s in split.train] == ["f0", "f3"]  # test images are never trained on
    (tmp_path / "k.toml").write_text('annotations = "dataset_flickr.json"\nimages = "images"\n[split]\nkarpathy_split = "dev"\n')
    with pytest.raises(BenchError, match=r"k\.toml: key 'split\.karpathy_split': no image has split 'dev'"):
        make_split(load_dataset(tmp_path / "k.toml"))


def test_shipped_datasets(shared_data: Path) -> None:
    flickr = make_split(load_dataset("flickr8k-1k"))
    assert len(flickr.val) == 500 and len(flickr.train) == 500
    assert all(s.path.is_file() for s in flickr.val[:5])
    coco = make_split(load_dataset("coco-12"))
    assert len(coco.val) == 12 and coco.train == ()


# --- missing images ------------------------------------------------------------------------------

def test_missing_image_is_an_error_naming_the_file(tmp_path: Path) -> None:
    toml = make_world(tmp_path)
    (tmp_path / "images" / "img05.jpg").unlink()
    (tmp_path / "images" / "img06.jpg").unlink()
    with pytest.raises(BenchError, match=r"images/img0[56]\.jpg: image file not found \(2 of 10 images are missing"):
        make_split(load_dataset(toml))


def test_missing_images_skipped_and_counted(tmp_path: Path) -> None:
    toml = make_world(tmp_path)
    full = make_split(load_dataset(toml))
    gone = full.val[0]
    gone.path.unlink()
    (tmp_path / "images" / f"{full.train[0].image_id}.jpg").unlink()
    split = make_split(load_dataset(toml), skip_missing=True)
    assert split.skipped_missing == 2
    assert split.val == full.val[1:] and split.train == full.train[1:]
    assert split.fingerprint == fingerprint(full.val[1:])


def test_image_path_escaping_images_dir_in_annotations(tmp_path: Path) -> None:
    toml = make_world(tmp_path)
    with (tmp_path / "captions.txt").open("a") as f:
        f.write("../../etc/passwd,a sneaky caption\n")
    with pytest.raises(BenchError, match=r"captions\.txt image 'passwd': image path '\.\./\.\./etc/passwd' leads outside the images folder"):
        load_dataset(toml)


# --- declaration errors --------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t + "colour = 1\n", r"unknown key 'split\.colour'"),
        (lambda t: "nickname = 'x'\n" + t, r"unknown key 'nickname'"),
        (lambda t: t.replace("val_size = 4", 'val_size = "4"'), r"key 'split\.val_size' must be an integer, got str"),
        (lambda t: t.replace("val_size = 4", "val_size = true"), r"key 'split\.val_size' must be an integer, got bool"),
        (lambda t: t.replace("val_size = 4", "val_size = -3"), r"key 'split\.val_size' must be >= 1, got -3"),
        (lambda t: t.replace("val_size = 4", "val_size = 11"), r"key 'split\.val_size' is 11 but the dataset has only 10"),
        (lambda t: t + 'val_ids = "ids.txt"\n', r"\[split\] must give exactly one of"),
        (lambda t: t.replace('images = "images"', 'images = "nowhere"'), r"key 'images': folder not found"),
        (lambda t: t.replace('annotations = "captions.txt"', 'annotations = "none.txt"'), r"key 'annotations': file not found"),
        (lambda t: t.replace('images = "images"\n', ""), r"key 'images' is missing"),
        (lambda t: t.replace('description = "test world"', 'format = "yaml"'), r"key 'format' must be one of"),
        (lambda t: t.replace("[split]", "[split"), r"invalid TOML"),
    ],
)
def test_bad_declaration(tmp_path: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    toml = make_world(tmp_path)
    toml.write_text(edit(toml.read_text()))
    with pytest.raises(BenchError, match=r"world\.toml: .*" + message):
        make_split(load_dataset(toml))


def test_unknown_dataset_name_lists_available() -> None:
    with pytest.raises(BenchError, match=r"unknown dataset 'no-such-set'.*available: .*flickr8k-1k"):
        load_dataset("no-such-set")


# --- the CLI: one line, non-zero exit, no traceback ------------------------------------------------

BAD_ANNOTATIONS = {
    "invalid JSON": ("refs.json", '{"img00.jpg": ["x"', r"refs\.json line 1 column 19: invalid JSON"),
    "non-UTF-8": ("captions.txt", b"image,caption\nimg00.jpg,caf\xe9\n", r"captions\.txt line 2: not UTF-8 text \(byte 27\)"),
    "empty caption list": ("refs.json", '{"img00.jpg": []}', r"refs\.json key 'img00\.jpg': field 'img00\.jpg' is an empty caption list"),
    "zero references": (
        "coco.json", '{"images": [{"id": 1, "file_name": "img00.jpg"}], "annotations": []}',
        r"coco\.json images\[0\]: image '1' has zero references",
    ),
    "duplicate ids": ("refs.json", '{"img00.jpg": ["x"], "img00": ["y"]}', r"refs\.json key 'img00': duplicate image id 'img00'"),
    "path escape": ("captions.txt", "image,caption\n../../etc/passwd,x\n", r"captions\.txt image 'passwd': image path '\.\./\.\./etc/passwd' leads outside"),
}


@pytest.mark.parametrize("case", sorted(BAD_ANNOTATIONS))
def test_cli_reports_bad_annotations_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    toml = make_world(tmp_path)
    name, content, message = BAD_ANNOTATIONS[case]
    target = tmp_path / name
    target.write_bytes(content if isinstance(content, bytes) else content.encode())
    toml.write_text(toml.read_text().replace('annotations = "captions.txt"', f'annotations = "{name}"'))
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "info", str(toml)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    import re

    assert re.search(message, err), err


def test_cli_info_counts_missing_images(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    toml = make_world(tmp_path)
    (tmp_path / "images" / "img01.jpg").unlink()
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "info", str(toml)])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    ds = load_dataset(toml)
    train, val = partition(ds)
    assert "missing images  │ 1" in out and fingerprint(val) in out
    assert "│ train           │ 6" in out and "│ val             │ 4" in out
    assert dataclasses.is_dataclass(ds)
