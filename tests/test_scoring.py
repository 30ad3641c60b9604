"""The pycocoevalcap side of bench.scoring: one tokenization per call, exact numbers, the JVM
closed, and the predictions reader."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from bench.errors import BenchError
from bench.scoring import JAVA_MISSING, read_predictions, tokenize
from bench.scoring.scorer import Scorer

REFS = {
    "img1": ["A dog runs across the green grass.", "A brown dog is running on a lawn.", "The dog plays outside."],
    "img2": ["Two men are playing soccer on a field.", "Men kick a ball.", "A soccer game in a park."],
    "img3": ["A cat sleeps on a red sofa.", "A sleeping cat.", "A cat lying on the couch next to a window."],
    "img4": ["A red bus drives down a busy street.", "A bus on a city road with cars."],
}
PREDS = {
    "img1": "a dog is running on the grass",
    # Java reads U+2028 and CR as line breaks: unguarded, every later caption would shift by one.
    "img2": "two men\u2028play soccer\rin a park",
    "img3": "",  # empty predictions are allowed and score 0
    "img4": "a red bus\non a street",
}


def _pycocoevalcap_direct(gts_raw, res_raw, metrics=("bleu", "rouge", "cider")):
    """What COCOEvalCap.evaluate() does: tokenize gts and res separately, run each scorer."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in gts_raw.items()})
    res = tok.tokenize({k: [{"caption": v}] for k, v in res_raw.items()})
    out, per = {}, {}
    with contextlib.redirect_stdout(io.StringIO()):
        scorers = {"bleu": (Bleu(4), ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"]), "rouge": (Rouge(), ["ROUGE-L"]),
                   "cider": (Cider(), ["CIDEr"])}
        for name in metrics:
            scorer, keys = scorers[name]
            score, scores = scorer.compute_score(gts, res)
            if len(keys) == 1:
                score, scores = [score], [scores]
            for key, s, ss in zip(keys, score, scores):
                out[key] = float(s)
                per[key] = dict(zip(gts.keys(), (float(x) for x in ss)))
    return out, per


def _count_tokenize_calls(monkeypatch) -> list[int]:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    calls: list[int] = []
    original = PTBTokenizer.tokenize

    def counting(self, captions):
        calls.append(sum(len(v) for v in captions.values()))
        return original(self, captions)

    monkeypatch.setattr(PTBTokenizer, "tokenize", counting)
    return calls


def test_all_text_metrics_tokenize_once_and_close_the_jvm(monkeypatch):
    calls = _count_tokenize_calls(monkeypatch)
    with Scorer(metrics=("bleu", "meteor", "rouge", "cider")) as scorer:
        result = scorer.score(PREDS, REFS, progress=False)
        proc = scorer.meteor_process
        assert proc is not None and proc.poll() is None  # the JVM is kept for the next call
        assert len(calls) == 1  # refs and candidates together: 11 refs + 4 predictions
        assert calls[0] == sum(len(v) for v in REFS.values()) + len(PREDS)
        second = scorer.score(PREDS, REFS, progress=False)
        assert len(calls) == 2 and scorer.meteor_process is proc  # one more call, same JVM
    assert proc.poll() is not None, "METEOR's JVM is still running after close()"
    assert second.corpus == result.corpus
    assert list(result.corpus) == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"]
    assert set(result.per_image) == set(REFS) and result.n_images == 4
    assert all(v == 0.0 for v in result.per_image["img3"].values())
    assert 0.0 < result.corpus["METEOR"] < 1.0


def test_numbers_equal_pycocoevalcap_and_line_breaks_do_not_shift_captions():
    # pycocoevalcap itself only replaces "\n"; give it the caption with the other breaks as spaces,
    # which is what the tokenizer makes of them inside a line.
    safe_preds = {k: v.replace("\u2028", " ").replace("\r", " ") for k, v in PREDS.items()}
    expected, expected_per = _pycocoevalcap_direct(REFS, safe_preds)
    with Scorer(metrics=("bleu", "rouge", "cider")) as scorer:
        result = scorer.score(PREDS, REFS, progress=False)
    assert result.corpus.keys() == expected.keys()
    for key, value in expected.items():
        assert result.corpus[key] == pytest.approx(value, abs=1e-9), key
        for image_id, v in expected_per[key].items():
            assert result.per_image[image_id][key] == pytest.approx(v, abs=1e-9), (key, image_id)
    assert result.per_image["img2"]["BLEU-1"] > 0.5  # its own words, not img3's empty line


def test_tokenize_keeps_keys_and_counts():
    gts, res = tokenize({"a": ["Hello, World!", "x\u2029y"]}, {"a": [""]})
    assert gts == {"a": ["hello world", "x y"]} and res == {"a": [""]}


def test_mismatched_ids_and_bad_values_are_errors():
    with Scorer(metrics=("bleu",)) as scorer:
        with pytest.raises(BenchError, match=r"1 predicted ids have no references \('zzz'\)"):
            scorer.score({**PREDS, "zzz": "x"}, REFS, progress=False)
        with pytest.raises(BenchError, match=r"1 reference images have no prediction \('img4'\)"):
            scorer.score({k: v for k, v in PREDS.items() if k != "img4"}, REFS, progress=False)
        with pytest.raises(BenchError, match=r"prediction for image 'img1' is not a string \(got int\)"):
            scorer.score({**PREDS, "img1": 3}, REFS, progress=False)  # type: ignore[dict-item]
        with pytest.raises(BenchError, match=r"image 'img1' has no reference captions"):
            scorer.score(PREDS, {**REFS, "img1": []}, progress=False)
    with pytest.raises(BenchError, match=r"unknown metric 'spice'"):
        Scorer(metrics=("bleu", "spice"))


def test_java_missing_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH without java
    with Scorer(metrics=("bleu", "meteor")) as scorer:
        with pytest.raises(BenchError) as info:
            scorer.score(PREDS, REFS, progress=False)
    assert str(info.value) == JAVA_MISSING
    assert "\n" not in str(info.value)


def test_score_result_to_json_keys():
    with Scorer(metrics=("rouge", "clipscore")) as scorer:  # no images: CLIP metrics skipped
        result = scorer.score(PREDS, REFS, images=None, progress=False)
    assert result.to_json() == {"ROUGE-L": result.corpus["ROUGE-L"], "n_images": 4}
    assert result.clip_model is None
    assert set(result.to_json(per_image=True)["per_image"]) == set(REFS)


# --- read_predictions ---------------------------------------------------------------------------

def _write(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return path


def test_read_predictions_layouts(tmp_path):
    expected = {"1": "a dog", "b.jpg": ""}
    as_map = _write(tmp_path, "map.json", json.dumps(expected))
    coco = _write(tmp_path, "coco.json", json.dumps([{"image_id": 1, "caption": "a dog"}, {"image_id": "b.jpg", "caption": ""}]))
    jsonl = _write(
        tmp_path, "p.jsonl", '{"image_id": 1, "caption": "a dog", "_crc": "x"}\n\n{"image_id": "b.jpg", "caption": ""}\n'
    )
    jsonl_as_json = _write(tmp_path, "lines.json", '{"image_id": 1, "caption": "a dog"}\n{"image_id": "b.jpg", "caption": ""}\n')
    magic = _write(
        tmp_path, "magic.json",
        json.dumps([{"split": "test", "image_name": "1", "captions": ["r"], "prediction": "a dog"},
                    {"split": "test", "image_name": "b.jpg", "captions": ["r"], "prediction": ""}]),
    )
    for path in (as_map, coco, jsonl, jsonl_as_json, magic):
        assert read_predictions(path) == expected, path.name


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.json", "  \n", r"empty.json: file is empty"),
        ("bad.json", '{"a": "x",\n "b": }', r"bad.json: invalid JSON at line 2 column 7"),
        ("bad.jsonl", '{"image_id": 1, "caption": "x"}\n{"image_id": 2, "caption": }\n', r"bad.jsonl line 2: invalid JSON at column"),
        ("list.json", "[]", r"list.json: no predictions \(empty list\)"),
        ("obj.json", "{}", r"obj.json: no predictions"),
        ("num.json", json.dumps({"a": "x", "b": 7}), r"num.json: prediction for image 'b' is not a string \(got int\)"),
        ("coconum.json", json.dumps([{"image_id": "a", "caption": ["x"]}]), r"coconum.json item 1: prediction for image 'a' is not a string \(got list\)"),
        ("dup.json", json.dumps([{"image_id": 1, "caption": "x"}, {"image_id": "1", "caption": "y"}]), r"dup.json item 2: duplicate image id '1' \(first at item 1\)"),
        ("nokey.json", json.dumps([{"image_id": 1}]), r"nokey.json item 1: missing field 'caption'"),
        ("scalar.json", "3", r"scalar.json: expected a JSON object"),
    ],
)
def test_read_predictions_errors(tmp_path, name, content, message):
    path = _write(tmp_path, name, content)
    with pytest.raises(BenchError, match=message) as info:
        read_predictions(path)
    assert "\n" not in str(info.value)


def test_read_predictions_missing_and_binary(tmp_path):
    with pytest.raises(BenchError, match=r"nope.json: file not found"):
        read_predictions(tmp_path / "nope.json")
    (tmp_path / "bin.json").write_bytes(b'{"a": "\xff"}')
    with pytest.raises(BenchError, match=r"bin.json: not UTF-8 text"):
        read_predictions(tmp_path / "bin.json")


def test_dead_meteor_jvm_is_an_error_not_a_hang():
    scorer = Scorer(metrics=("meteor",))
    meteor = scorer._metric("meteor")
    meteor.start()
    meteor.process.kill()  # as if the JVM died, e.g. out of memory
    meteor.process.wait()
    with pytest.raises(BenchError, match=r"METEOR \(Java\) failed"):
        scorer.score(PREDS, REFS, progress=False)
    scorer.close()  # must not dead-lock on pycocoevalcap's lock
    assert scorer.meteor_process is None
