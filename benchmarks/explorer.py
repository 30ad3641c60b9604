"""The HTML explorer at scale: 5,000 images x 10 runs in headless Chromium.

Data: generated runs over generated images (bench.testing.explorer_runs: seeded template
captions scored by pycocoevalcap, seeded per-image CLIPScore stand-ins), one `bench compare`
report (build_report, few resamples: the page does not depend on their number).

Measured, in the same browser (Debian's chromium through selenium, from file://):
- first render: navigation start to the explorer's first page of rows drawn (the page's own
  `performance.now()` after its first render), median of `repeats` fresh loads;
- re-sort: a click on a run's metric header, the difference sort, and a search, each timed
  from the click to the rows redrawn (`performance.now()` around the synchronous handler),
  median over the runs x metrics tried;
- the HTML's size and the thumbnails' total size and count.
Checked on the big page too: no console message, no request that is not file://, and the
sorted order equals the run's metrics.json.

    python benchmarks/explorer.py [--images N] [--runs N] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

TARGET_S = 1.0
_SORT_JS = """
const b = document.querySelector(arguments[0]);
const t0 = performance.now(); b.click(); return performance.now() - t0;
"""
_SEARCH_JS = """
const s = document.getElementById('search'); s.value = arguments[0];
const t0 = performance.now(); s.dispatchEvent(new Event('input')); return performance.now() - t0;
"""


def _build(root: Path, n_images: int, n_runs: int) -> tuple[Path, list[str], float]:
    from bench.report import build_report
    from bench.testing.explorer_runs import explorer_runs

    t0 = time.perf_counter()
    names = explorer_runs(root / "runs", root / "images", n_images, n_runs)
    result = build_report(root / "runs", root / "reports" / "explorer.md", n_boot=10)
    return result.html, names, time.perf_counter() - t0


def _browser_figures(page: Path, names: list[str], root: Path, repeats: int) -> dict[str, Any]:
    from bench.testing import browser

    first, sorts, diffs, searches = [], [], [], []
    with browser.chromium() as d:
        browser.requested_urls(d)
        for _ in range(repeats):
            browser.open_page(d, page)
            first.append(d.execute_script("return window.benchExplorer.firstRenderMs"))
        if browser.console_messages(d):
            raise RuntimeError(f"console messages on the big page: {browser.console_messages(d)[:2]}")
        bad = [u for u in browser.requested_urls(d) if not u.startswith("file://")]
        if bad:
            raise RuntimeError(f"the big page requested {bad[:3]}")
        for run in names:
            for metric in ("CLIPScore", "CIDEr"):
                sorts.append(d.execute_script(_SORT_JS, f'button.sort-btn[data-run="{run}"][data-metric="{metric}"]'))
        scores = json.loads((root / "runs" / names[-1] / "metrics.json").read_text())["per_image"]
        d.execute_script(_SORT_JS, f'button.sort-btn[data-run="{names[-1]}"][data-metric="CLIPScore"]')
        # the page holds scores rounded to 6 digits: equal ones keep the image order
        clip = sorted(sorted(scores), key=lambda i: -round(scores[i]["CLIPScore"], 6))
        if browser.all_ids(d) != clip:
            raise RuntimeError("the big page's sort differs from metrics.json")
        for k in range(min(5, len(names) - 1)):
            d.execute_script(f"document.getElementById('diff-a').value = {json.dumps(names[k])};"
                             f"document.getElementById('diff-b').value = {json.dumps(names[k + 1])};")
            diffs.append(d.execute_script(_SORT_JS, "#diff-sort"))
        for q in ("dog", "tropical", "a white cat", "zzz", ""):
            searches.append(d.execute_script(_SEARCH_JS, q))
    med = lambda xs: round(statistics.median(xs) / 1000, 4)  # noqa: E731 - ms -> s
    return {
        "explorer_first_render_s": med(first), "explorer_first_render_runs_s": [round(x / 1000, 4) for x in first],
        "explorer_resort_s": med(sorts), "explorer_resort_max_s": round(max(sorts) / 1000, 4),
        "explorer_diff_sort_s": med(diffs), "explorer_search_s": med(searches),
    }


def run(n_images: int = 5000, n_runs: int = 10, repeats: int = 3) -> dict[str, Any]:
    from bench.testing import browser

    reason = browser.missing()
    if reason is not None:
        raise RuntimeError(reason)
    with tempfile.TemporaryDirectory(prefix="bench-explorer-") as tmp:
        root = Path(tmp)
        page, names, build_s = _build(root, n_images, n_runs)
        figures = _browser_figures(page, names, root, repeats)
        thumbs = list((page.parent / f"{page.stem}-figures" / "thumbs").glob("*.jpg"))
        return {
            **figures,
            "explorer_images": n_images, "explorer_runs": n_runs,
            "explorer_html_mb": round(page.stat().st_size / 2**20, 2),
            "explorer_thumbs_mb": round(sum(t.stat().st_size for t in thumbs) / 2**20, 2),
            "explorer_thumbs": len(thumbs),
            "explorer_build_s": round(build_s, 1),
            "explorer_target_s": TARGET_S,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(run(args.images, args.runs, args.repeats), indent=2))


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
