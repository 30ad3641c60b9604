"""Reference formats, id matching and the bad-input cases of reference files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.data import RefEntry, match_predictions, read_references
from bench.data.ids import normalize_id
from bench.errors import BenchError

REFS = ["a dog runs", "a brown dog running", "dog on grass", "a puppy outside", "the dog is fast"]


def write(path: Path, content: str | bytes | object) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_text(json.dumps(content), encoding="utf-8")
    return path


def as_dict(entries: list[RefEntry]) -> dict[str, tuple[str, ...]]:
    return {e.image_id: e.refs for e in entries}


# --- every format ------------------------------------------------------------------------------

def test_coco_captions(tmp_path: Path) -> None:
    data = {
        "images": [{"id": 42, "file_name": "COCO_val2014_000000000042.jpg"}, {"id": 7, "file_name": "b.jpg"}],
        "annotations": [{"image_id": 42, "id": 1, "caption": r} for r in REFS] + [{"image_id": 7, "id": 9, "caption": "x y"}],
    }
    entries = read_references(write(tmp_path / "captions_val.json", data))
    assert [e.image_id for e in entries] == ["42", "7"]
    assert entries[0].file_name == "COCO_val2014_000000000042.jpg"
    assert entries[0].refs == tuple(REFS)


def test_karpathy_keeps_split(tmp_path: Path) -> None:
    data = {"dataset": "coco", "images": [
        {"filepath": "val2014", "filename": "COCO_val2014_000000000042.jpg", "split": "test", "cocoid": 42,
         "sentences": [{"raw": r, "tokens": r.split()} for r in REFS]},
        {"filepath": "train2014", "filename": "t.jpg", "split": "restval", "cocoid": 43, "sentences": [{"tokens": ["a", "cat"]}]},
    ]}
    entries = read_references(write(tmp_path / "dataset_coco.json", data))
    assert [(e.image_id, e.split, e.file_name) for e in entries] == [
        ("42", "test", "val2014/COCO_val2014_000000000042.jpg"), ("43", "restval", "train2014/t.jpg"),
    ]
    assert entries[0].refs == tuple(REFS) and entries[1].refs == ("a cat",)
    flickr = {"images": [{"filename": "1000268201_693b08cb0e.jpg", "imgid": 0, "split": "val", "sentences": [{"raw": "a girl"}]}]}
    (entry,) = read_references(write(tmp_path / "dataset_flickr8k.json", flickr))
    assert entry.image_id == "1000268201_693b08cb0e" and entry.split == "val"


def test_kaggle_csv_with_commas_and_quotes(tmp_path: Path) -> None:
    text = (
        "image,caption\n"
        'a.jpg,"A dog , a ball and a ""frisbee"" ."\n'
        "a.jpg,A dog with a ball .\n"
        "b.jpg,unquoted, with a comma\n"
        "\n"
    )
    entries = read_references(write(tmp_path / "captions.txt", text))
    assert as_dict(entries) == {"a": ('A dog , a ball and a "frisbee" .', "A dog with a ball ."), "b": ("unquoted, with a comma",)}
    assert entries[0].file_name == "a.jpg"


def test_flickr30k_pipe_csv_and_token_txt(tmp_path: Path) -> None:
    pipe = "image_name| comment_number| comment\n1000092795.jpg| 0| Two young guys .\n1000092795.jpg| 1| Two men .\n"
    assert as_dict(read_references(write(tmp_path / "results.csv", pipe))) == {"1000092795": ("Two young guys .", "Two men .")}
    token = "x.jpg#0\tA child .\nx.jpg#1\tA girl .\ny.jpg#0\tA dog .\n"
    assert as_dict(read_references(write(tmp_path / "Flickr8k.token.txt", token))) == {"x": ("A child .", "A girl ."), "y": ("A dog .",)}


def test_json_map(tmp_path: Path) -> None:
    entries = read_references(write(tmp_path / "refs.json", {"img1.jpg": REFS, "99": ["one ref"]}))
    assert as_dict(entries) == {"img1": tuple(REFS), "99": ("one ref",)}
    assert entries[0].file_name == "img1.jpg" and entries[1].file_name is None


def test_jsonl_single_and_list_records(tmp_path: Path) -> None:
    lines = [
        {"image_id": "a", "caption": "first"},
        {"image_id": "a", "caption": "second"},
        {"file_name": "b.png", "captions": ["x", "y"]},
        {"image": "c.jpg", "refs": ["z"]},
    ]
    path = write(tmp_path / "refs.jsonl", "\n".join(json.dumps(o) for o in lines) + "\n\n")
    entries = read_references(path)
    assert as_dict(entries) == {"a": ("first", "second"), "b": ("x", "y"), "c": ("z",)}
    assert entries[1].file_name == "b.png"
    # The same records as a JSON list, and JSONL saved under .json, are read the same way.
    assert read_references(write(tmp_path / "list.json", lines)) == entries
    assert read_references(write(tmp_path / "lines.json", "\n".join(json.dumps(o) for o in lines))) == entries


def test_magic_layout(tmp_path: Path) -> None:
    data = [{"split": "test", "image_name": "1007129816.jpg", "captions": REFS, "prediction": "a man"}]
    (entry,) = read_references(write(tmp_path / "magic.json", data))
    assert entry == RefEntry("1007129816", "1007129816.jpg", tuple(REFS), "test")


def test_explicit_format_overrides_detection(tmp_path: Path) -> None:
    path = write(tmp_path / "weird.dat", "image,caption\na.jpg,hello\n")
    assert as_dict(read_references(path, "csv")) == {"a": ("hello",)}
    with pytest.raises(BenchError, match="unknown references format 'xml'"):
        read_references(path, "xml")
    with pytest.raises(BenchError, match="format 'coco' expects a JSON object"):
        read_references(write(tmp_path / "l.json", [{"image_id": 1, "caption": "c"}]), "coco")


# --- the real shared files -----------------------------------------------------------------------

def test_real_flickr8k_captions(shared_data: Path) -> None:
    entries = read_references(shared_data / "flickr8k-1k" / "captions.txt")
    assert len(entries) == 1000 and all(len(e.refs) == 5 for e in entries)
    by_id = as_dict(entries)
    # A quoted caption with commas in it (line 37 of the file).
    assert "A dog shakes its head near the shore , a red ball next to it ." in by_id["1012212859_01547e3f17"]


def test_real_coco12_and_magic(shared_data: Path) -> None:
    coco = read_references(shared_data / "coco-12" / "refs.json")
    assert len(coco) == 12 and all(len(e.refs) == 5 for e in coco)
    magic = read_references(shared_data / "external" / "magic-flickr30k" / "magic.json")
    raw = json.loads((shared_data / "external" / "magic-flickr30k" / "magic.json").read_text())
    assert len(magic) == len(raw) == 1000
    assert [e.refs for e in magic] == [tuple(c.strip() for c in item["captions"]) for item in raw]


# --- id matching ---------------------------------------------------------------------------------

def test_normalize_id() -> None:
    assert normalize_id("1000268201_693b08cb0e.jpg") == normalize_id("1000268201_693b08cb0e") == "1000268201_693b08cb0e"
    assert normalize_id("images/x.JPEG") == "x"
    assert normalize_id(42) == "42"
    assert normalize_id("v1.2") == "v1.2"  # not an image extension: kept


def test_match_predictions_by_file_name_stem_and_coco_id() -> None:
    flickr = RefEntry("1000268201_693b08cb0e", "1000268201_693b08cb0e.jpg", ("r",))
    coco = RefEntry("27440", "COCO_val2014_000000027440.jpg", ("r",))
    coco_by_file = RefEntry("COCO_val2014_000000033645", "COCO_val2014_000000033645.jpg", ("r",))
    entries = [flickr, coco, coco_by_file]
    got = match_predictions(["1000268201_693b08cb0e.jpg", "27440", "33645", "unknown"], entries)
    assert got == {"1000268201_693b08cb0e.jpg": flickr, "27440": coco, "33645": coco_by_file}
    assert match_predictions(["1000268201_693b08cb0e", "COCO_val2014_000000027440.jpg"], entries) == {
        "1000268201_693b08cb0e": flickr, "COCO_val2014_000000027440.jpg": coco,
    }
    with pytest.raises(BenchError, match="both name image '27440'"):
        match_predictions(["27440", "COCO_val2014_000000027440"], entries, source="preds.json")


def test_match_predictions_ambiguous_key() -> None:
    entries = [RefEntry("a", "x.jpg", ("r",)), RefEntry("x", None, ("r",))]
    with pytest.raises(BenchError, match="matches more than one"):
        match_predictions(["x"], entries)


# --- bad input: one test per case, each naming the file and the field ------------------------------

def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match=r"nope\.json: file not found"):
        read_references(tmp_path / "nope.json")


def test_invalid_json(tmp_path: Path) -> None:
    path = write(tmp_path / "refs.json", '{"a.jpg": ["x"],\n  "b.jpg": ["y"\n}')
    with pytest.raises(BenchError, match=r"refs\.json line 3 column 1: invalid JSON"):
        read_references(path)


def test_non_utf8_bytes(tmp_path: Path) -> None:
    path = write(tmp_path / "captions.txt", b"image,caption\na.jpg,caf\xe9 au lait\n")
    with pytest.raises(BenchError, match=r"captions\.txt line 2: not UTF-8 text \(byte 23\)"):
        read_references(path)
    # With a BOM (which is allowed) the offset still counts from the start of the file.
    with pytest.raises(BenchError, match=r"bom\.txt line 2: not UTF-8 text \(byte 26\)"):
        read_references(write(tmp_path / "bom.txt", b"\xef\xbb\xbf" + path.read_bytes()))
    assert read_references(write(tmp_path / "ok.txt", b"\xef\xbb\xbfimage,caption\na.jpg,x\n"))[0].refs == ("x",)


def test_empty_caption_list(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match=r"refs\.json key 'b\.jpg': field 'b\.jpg' is an empty caption list"):
        read_references(write(tmp_path / "refs.json", {"a.jpg": ["x"], "b.jpg": []}))
    with pytest.raises(BenchError, match=r"magic\.json \[0\]: field 'captions' is an empty caption list"):
        read_references(write(tmp_path / "magic.json", [{"image_name": "a.jpg", "captions": [], "prediction": "p"}]))


def test_image_with_zero_references(tmp_path: Path) -> None:
    data = {"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
            "annotations": [{"image_id": 1, "caption": "x"}]}
    with pytest.raises(BenchError, match=r"coco\.json images\[1\]: image '2' has zero references"):
        read_references(write(tmp_path / "coco.json", data))


def test_reference_not_a_string(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match=r"refs\.json key 'a\.jpg': field 'a\.jpg\[1\]' must be a string, got int"):
        read_references(write(tmp_path / "refs.json", {"a.jpg": ["ok", 5]}))
    data = {"images": [{"id": 1}], "annotations": [{"image_id": 1, "caption": None}]}
    with pytest.raises(BenchError, match=r"annotations\[0\]: field 'caption' must be a string, got NoneType"):
        read_references(write(tmp_path / "coco.json", data))


def test_empty_caption_string_names_line(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match=r"captions\.txt line 3: field 'caption' is empty"):
        read_references(write(tmp_path / "captions.txt", "image,caption\na.jpg,fine\nb.jpg,  \n"))


def test_duplicate_image_ids(tmp_path: Path) -> None:
    coco = {"images": [{"id": 1}, {"id": 1}], "annotations": []}
    with pytest.raises(BenchError, match=r"coco\.json images\[1\]: duplicate image id '1'"):
        read_references(write(tmp_path / "coco.json", coco))
    with pytest.raises(BenchError, match=r"refs\.json: duplicate image id 'a\.jpg'"):
        read_references(write(tmp_path / "refs.json", '{"a.jpg": ["x"], "a.jpg": ["y"]}'))
    with pytest.raises(BenchError, match=r"refs2\.json key 'a': duplicate image id 'a' \(also given as 'a\.jpg'\)"):
        read_references(write(tmp_path / "refs2.json", {"a.jpg": ["x"], "a": ["y"]}))
    with pytest.raises(BenchError, match=r"captions\.txt line 3: duplicate image id 'a'"):
        read_references(write(tmp_path / "captions.txt", "image,caption\na.jpg,x\na.png,y\n"))
    lines = [{"image_id": "a", "captions": ["x"]}, {"image_id": "a", "captions": ["y"]}]
    with pytest.raises(BenchError, match=r"r\.jsonl line 2: duplicate image id 'a'"):
        read_references(write(tmp_path / "r.jsonl", "\n".join(json.dumps(o) for o in lines)))


def test_unknown_structure(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match=r"x\.json: unknown structure"):
        read_references(write(tmp_path / "x.json", {"info": {}, "licenses": []}))
    with pytest.raises(BenchError, match=r"p\.json: values must be lists of references"):
        read_references(write(tmp_path / "p.json", {"a.jpg": "a caption"}))
    with pytest.raises(BenchError, match=r"c\.csv line 1: header must name an image column"):
        read_references(write(tmp_path / "c.csv", "foo,bar\n1,2\n"))


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match=r"e\.txt: file is empty"):
        read_references(write(tmp_path / "e.txt", "\n"))
