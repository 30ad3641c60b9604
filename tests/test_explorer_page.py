"""The HTML report's page without a browser: the embedded data is the JSON report's, data can
not end its <script>, caption flags come from the tokens and the predictions records, the CSP
allows exactly the page's script, and thumbnails are cached by content (corrupt images: none)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from bench.io import append_records, read_records
from bench.report import build_report
from bench.report.html import FLAG_BITS
from bench.report.thumbs import thumbnail
from bench.testing.explorer_runs import HOSTILE, explorer_runs

NOW = dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc)
DATA = re.compile(r'<script type="application/json" id="bench-data">(.*?)</script>', re.S)


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("page")
    names = explorer_runs(root / "runs", root / "images", 12, 2)
    pred = root / "runs" / names[0] / "predictions.jsonl"
    records = [{k: v for k, v in r.items() if k != "_crc"} for r in read_records(pred)]
    records[0]["truncated"] = True
    records[1]["error"] = "HTTP 500 after 5 retries"
    pred.unlink()
    append_records(pred, records)
    result = build_report(root / "runs", root / "reports" / "p.md", json_out=root / "reports" / "p.json", n_boot=20, now=NOW)
    html = result.html.read_text(encoding="utf-8")
    return {"root": root, "names": names, "result": result, "html": html,
            "data": json.loads(DATA.search(html).group(1)), "records": records}


def test_embedded_report_is_the_json_report(page: dict) -> None:
    assert page["data"]["report"] == json.loads(page["result"].json.read_text())
    assert page["result"].html == page["result"].markdown.with_suffix(".html")


def test_hostile_text_cannot_end_the_data_script(page: dict) -> None:
    html = page["html"]
    assert html.count("</script>") == 2  # the data's and the script's own: none from a caption
    data = DATA.search(html).group(1)
    assert "<" not in data and ">" not in data and "&" not in data  # escaped as \u003c etc.
    runs = page["data"]["sections"][0]["explorer"]["runs"]
    assert HOSTILE in runs[[r["name"] for r in runs].index(page["names"][1])]["captions"]


def test_caption_flags_from_tokens_and_records(page: dict) -> None:
    ex = page["data"]["sections"][0]["explorer"]
    run = next(r for r in ex["runs"] if r["name"] == page["names"][0])
    by_id = dict(zip(ex["ids"], run["flags"]))
    assert by_id[page["records"][0]["image_id"]] & FLAG_BITS["truncated"]
    assert by_id[page["records"][1]["image_id"]] & FLAG_BITS["failed"]
    for image_id, caption in zip(ex["ids"], run["captions"]):
        assert bool(by_id[image_id] & FLAG_BITS["empty"]) == (not caption.strip())
        if "tropical tropical tropical" in caption:
            assert by_id[image_id] & FLAG_BITS["repetitive"]


def test_csp_allows_exactly_the_page_script(page: dict) -> None:
    html = page["html"]
    script = html.rsplit("<script>", 1)[1].split("</script>", 1)[0]
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode()
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html).group(1)
    assert f"script-src 'sha256-{digest}'" in csp and "default-src 'none'" in csp
    assert "connect-src" not in csp  # default-src 'none' forbids every fetch


def test_thumbnails_cached_by_content_and_none_for_bad_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.data.images import load_image
    from bench.report import thumbs

    decoded: list[Path] = []
    monkeypatch.setattr(thumbs, "load_image", lambda path, **kw: decoded.append(path) or load_image(path, **kw))
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    Image.new("RGB", (640, 480), (10, 200, 30)).save(a)
    b.write_bytes(a.read_bytes())
    ta, tb = thumbnail(a, tmp_path / "t"), thumbnail(b, tmp_path / "t")
    assert ta == tb and len(list((tmp_path / "t").iterdir())) == 1
    assert decoded == [a]  # the same bytes under another name are not decoded again
    with Image.open(ta) as im:
        assert im.format == "JPEG" and im.size == (128, 96)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    assert thumbnail(bad, tmp_path / "t") is None
    assert thumbnail(tmp_path / "missing.jpg", tmp_path / "t") is None and thumbnail(None, tmp_path / "t") is None
