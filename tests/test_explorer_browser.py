"""The HTML report in a real headless Chromium (Debian's chromium + chromium-driver, selenium):
it loads from file:// with no console error and no network request, sorts, searches, filters,
shows hostile captions as text, restores its view from the URL, and its numbers are the JSON's.

The truth the page is checked against is read independently: each run's metrics.json and
predictions.jsonl, and reports/<name>.json. The suite also saves docs/explorer.png.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import os
from pathlib import Path

import pytest
from conftest import REPO
from PIL import Image
from test_demo import demo_run  # noqa: F401 - the one `bench demo --fast` of the session, shared

from bench.io import read_records
from bench.report import build_report
from bench.testing import browser
from bench.testing.explorer_runs import HOSTILE, explorer_runs

# The suite's report; `BENCH_EXPLORER_SIZE=5000x10` runs the same tests on a report of that size.
N_IMAGES, N_RUNS = (int(x) for x in os.environ.get("BENCH_EXPLORER_SIZE", "60x4").split("x"))
PAGE = 25  # rows per page of the explorer
NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)


@pytest.fixture(scope="module")
def gen(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("explorer")
    names = explorer_runs(root / "runs", root / "images", N_IMAGES, N_RUNS)
    result = build_report(root / "runs", root / "reports" / "gen.md", json_out=root / "reports" / "gen.json", n_boot=50, now=NOW)
    return {"root": root, "names": names, "result": result}


@pytest.fixture(scope="module")
def driver():
    reason = browser.missing()
    if reason is not None:
        pytest.skip(reason)  # the same line for every browser test: pytest -ra folds them into one
    with browser.chromium() as d:
        yield d


def _metric(gen: dict, run: str, metric: str) -> dict[str, float]:
    scored = json.loads((gen["root"] / "runs" / run / "metrics.json").read_text())
    return {i: v[metric] for i, v in scored["per_image"].items()}


def _captions(gen: dict, run: str) -> dict[str, str]:
    return {r["image_id"]: r["caption"] for r in read_records(gen["root"] / "runs" / run / "predictions.jsonl")}


def _ordered(values: dict[str, float], descending: bool = True, digits: int | None = 6) -> list[str]:
    ids = sorted(values)  # the page's tie-break: the section's image order (sorted ids)
    rounded = {i: v if digits is None else round(v, digits) for i, v in values.items()}  # as the page holds them
    return sorted(ids, key=lambda i: -rounded[i] if descending else rounded[i])


def _click(driver, css: str) -> None:
    driver.find_element("css selector", css).click()


def test_loads_from_file_with_no_console_error_and_no_network_request(gen: dict, driver) -> None:
    browser.requested_urls(driver)  # drop what earlier pages logged
    browser.console_messages(driver)
    browser.open_page(driver, gen["result"].html)
    assert browser.console_messages(driver) == []
    urls = browser.requested_urls(driver)
    assert urls and all(u.startswith("file://") for u in urls), [u for u in urls if not u.startswith("file://")]
    resources = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(u.startswith("file://") for u in resources)
    assert any("/thumbs/" in u for u in urls)  # the thumbnails are files beside the page
    assert len(browser.visible_ids(driver)) == min(PAGE, N_IMAGES)


def test_sort_header_orders_rows_by_the_runs_per_image_metric(gen: dict, driver) -> None:
    browser.open_page(driver, gen["result"].html)
    run = gen["names"][1]
    scores = _metric(gen, run, "CLIPScore")
    _click(driver, f'button.sort-btn[data-run="{run}"][data-metric="CLIPScore"]')
    assert browser.all_ids(driver) == _ordered(scores)
    assert browser.visible_ids(driver) == _ordered(scores)[:PAGE]
    _click(driver, f'button.sort-btn[data-run="{run}"][data-metric="CLIPScore"]')  # again: ascending
    assert browser.visible_ids(driver) == _ordered(scores, descending=False)[:PAGE]


def test_difference_of_two_runs_orders_rows(gen: dict, driver) -> None:
    from selenium.webdriver.support.ui import Select

    browser.open_page(driver, gen["result"].html)
    a, b = gen["names"][2], gen["names"][0]
    va, vb = _metric(gen, a, "RefCLIPScore"), _metric(gen, b, "RefCLIPScore")
    Select(driver.find_element("id", "diff-a")).select_by_value(a)
    Select(driver.find_element("id", "diff-b")).select_by_value(b)
    Select(driver.find_element("id", "diff-metric")).select_by_value("RefCLIPScore")
    _click(driver, "#diff-sort")
    # the page subtracts the scores it holds (rounded to 6 digits)
    assert browser.all_ids(driver) == _ordered({i: round(va[i], 6) - round(vb[i], 6) for i in va}, digits=None)
    shown = driver.find_element("css selector", "#explorer-table tbody tr td.diff").text
    first = browser.visible_ids(driver)[0]
    assert shown == f"{va[first] - vb[first]:.4f}"


def test_search_filters_rows_by_caption_text(gen: dict, driver) -> None:
    browser.open_page(driver, gen["result"].html)
    driver.find_element("id", "search").send_keys("Tropical")
    caps = [_captions(gen, r) for r in gen["names"]]
    expect = sorted(i for i in caps[0] if any("tropical" in c[i].lower() for c in caps))
    assert 0 < len(expect) < N_IMAGES
    assert browser.all_ids(driver) == expect
    assert driver.find_element("id", "count").text == f"{len(expect)} of {N_IMAGES} images"


def test_flag_filters_show_empty_and_repetitive_captions(gen: dict, driver) -> None:
    browser.open_page(driver, gen["result"].html)
    caps = [_captions(gen, r) for r in gen["names"]]
    _click(driver, "#flag-empty")
    assert browser.all_ids(driver) == sorted(i for i in caps[0] if any(not c[i].strip() for c in caps))
    _click(driver, "#flag-empty")
    _click(driver, "#flag-repetitive")
    # "tropical tropical tropical" is a word three times in a row: repetitive by the report's rule
    tropical = {i for i in caps[0] if any("tropical tropical tropical" in c[i] for c in caps)}
    assert tropical and tropical <= set(browser.all_ids(driver))


def test_hostile_caption_is_text_and_runs_no_script(gen: dict, driver) -> None:
    browser.open_page(driver, gen["result"].html)
    run = gen["names"][1]
    target = next(i for i, c in _captions(gen, run).items() if c == HOSTILE)
    driver.find_element("id", "search").send_keys("onerror")
    cell = driver.find_element("css selector", f'tr[data-image-id="{target}"] td[data-run="{run}"] .caption')
    assert cell.get_attribute("textContent") == HOSTILE
    assert driver.execute_script("return window.__benchPwned") is None
    assert driver.find_elements("css selector", "#explorer-table img[src='x']") == []
    assert driver.find_elements("css selector", "#explorer-table b, #explorer-table script") == []
    assert browser.console_messages(driver) == []


def test_url_state_restores_the_view(gen: dict, driver) -> None:
    from selenium.webdriver.support.ui import Select

    browser.open_page(driver, gen["result"].html)
    a, b = gen["names"][0], gen["names"][3]
    Select(driver.find_element("id", "diff-a")).select_by_value(a)
    Select(driver.find_element("id", "diff-b")).select_by_value(b)
    Select(driver.find_element("id", "diff-metric")).select_by_value("CLIPScore")
    _click(driver, "#diff-sort")
    _click(driver, "#page-next")
    ids = browser.visible_ids(driver)
    _click(driver, f'tr[data-image-id="{ids[3]}"] .thumb')
    url = driver.current_url
    assert "sort=diff" in url and "page=1" in url and f"img={ids[3]}" in url
    driver.get("about:blank")
    driver.get(url)  # a fresh load of the shared link
    browser.open_page(driver, Path(gen["result"].html), url.split("#", 1)[1])
    assert browser.visible_ids(driver) == ids
    assert Select(driver.find_element("id", "diff-a")).first_selected_option.get_attribute("value") == a
    assert driver.find_element("id", "page-label").text == f"page 2 of {math.ceil(N_IMAGES / PAGE)}"
    panel = driver.find_element("id", "viewer-panel")
    assert panel.is_displayed() and f"Image {ids[3]}" in panel.text


def test_full_image_view_shows_attention_maps(gen: dict, driver) -> None:
    browser.open_page(driver, gen["result"].html)
    first = browser.visible_ids(driver)[0]  # explorer_runs drew maps for the first image of run 0
    _click(driver, f'tr[data-image-id="{first}"] .thumb')
    srcs = [e.get_attribute("src") for e in driver.find_elements("css selector", "#viewer-panel img")]
    assert any(s.endswith(f"/images/{first}.jpg") for s in srcs)
    assert any(s.endswith(f"/attend/{first}.png") for s in srcs)
    loaded = driver.execute_script("return Array.from(document.querySelectorAll('#viewer-panel img')).every(i => i.naturalWidth > 0)")
    assert loaded


def test_html_numbers_equal_the_json_report(gen: dict, driver) -> None:
    browser.open_page(driver, gen["result"].html)
    report = json.loads(gen["result"].json.read_text())
    embedded = driver.execute_script("return JSON.parse(document.getElementById('bench-data').textContent).report")
    assert embedded == report
    rows = driver.execute_script(
        "const t = document.querySelector('table.report-table[data-title^=\"Leaderboard\"]');"
        "const head = Array.from(t.querySelectorAll('th')).map(h => h.textContent);"
        "return Array.from(t.querySelectorAll('tbody tr')).map(r => Object.fromEntries("
        "Array.from(r.children).map((c, k) => [head[k], c.textContent])))")
    runs = {r["run"]: r for r in report["sections"][0]["runs"]}
    assert [r["Run"] for r in rows] == list(runs)
    for row in rows:
        for metric in ("CIDEr", "CLIPScore", "BLEU-4"):
            m = runs[row["Run"]]["metrics"][metric]
            assert row[metric] == f"{m['value']:.4f} [{m['lo']:.4f}, {m['hi']:.4f}]"


def test_thumbnails_are_small_jpegs_written_once(gen: dict) -> None:
    thumbs = sorted((gen["root"] / "reports" / "gen-figures" / "thumbs").glob("*.jpg"))
    assert len(thumbs) == N_IMAGES
    for t in thumbs[:5]:
        with Image.open(t) as im:
            assert im.format == "JPEG" and max(im.size) <= 128
    before = {t: t.stat().st_mtime_ns for t in thumbs}
    # the same build again (same numbers, so the other tests may run after this one)
    build_report(gen["root"] / "runs", gen["root"] / "reports" / "gen.md", json_out=gen["result"].json, n_boot=50, now=NOW)
    assert {t: t.stat().st_mtime_ns for t in thumbs} == before  # cached by content hash


def test_screenshot_for_the_docs(gen: dict, driver) -> None:
    """docs/explorer.png: the explorer sorted by a difference, as a user sees it."""
    browser.open_page(driver, gen["result"].html, f"sort=run&run={gen['names'][1]}&m=CLIPScore&dir=desc")
    driver.set_window_size(1280, 900)
    driver.execute_script("document.getElementById('explorer').scrollIntoView()")
    png = driver.get_screenshot_as_png()
    with Image.open(io.BytesIO(png)) as im:
        small = im.convert("RGB").resize((im.width * 3 // 4, im.height * 3 // 4), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    small.quantize(colors=128).save(buf, format="PNG", optimize=True)
    if (N_IMAGES, N_RUNS) != (60, 4):
        pytest.skip("docs/explorer.png shows the suite's own 60-image report")
    out = REPO / "docs" / "explorer.png"
    if _looks_different(out, buf.getvalue()):  # anti-aliasing varies a little between runs
        out.parent.mkdir(exist_ok=True)
        out.write_bytes(buf.getvalue())
    assert out.stat().st_size < 300_000


def _looks_different(old: Path, png: bytes, tolerance: float = 1.0) -> bool:
    """True unless `old` exists with the same size and a mean pixel difference under `tolerance`."""
    import numpy as np

    if not old.is_file():
        return True
    with Image.open(old) as a, Image.open(io.BytesIO(png)) as b:
        if a.size != b.size:
            return True
        diff = np.abs(np.asarray(a.convert("RGB"), dtype=np.int16) - np.asarray(b.convert("RGB"), dtype=np.int16))
    return float(diff.mean()) >= tolerance


def test_a_machine_without_the_browser_is_told_which_debian_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(browser.shutil, "which", lambda name: None)
    reason = browser.missing()
    assert reason is not None and "chromium, chromium-driver" in reason
    assert "apt-get install -y chromium chromium-driver" in reason
    monkeypatch.undo()
    assert browser.missing() is None or "selenium" in browser.missing()


@pytest.mark.slow
def test_demo_report_has_its_html_explorer(demo_run, driver) -> None:
    """`bench demo` writes reports/demo.html beside demo.md; it loads clean and sorts as its runs say."""
    page = demo_run.out.with_suffix(".html")
    assert page.is_file() and f"explorer: {page}" in demo_run.stdout
    browser.requested_urls(driver)
    browser.console_messages(driver)
    browser.open_page(driver, page)
    assert browser.console_messages(driver) == []
    assert all(u.startswith("file://") for u in browser.requested_urls(driver))
    report = demo_run.payload
    embedded = driver.execute_script("return JSON.parse(document.getElementById('bench-data').textContent).report")
    assert embedded == report
    run = report["sections"][0]["runs"][0]["run"]
    per_image = json.loads((demo_run.runs / run / "metrics.json").read_text())["per_image"]
    _click(driver, f'button.sort-btn[data-run="{run}"][data-metric="CLIPScore"]')
    assert browser.all_ids(driver) == _ordered({i: v["CLIPScore"] for i, v in per_image.items()})
