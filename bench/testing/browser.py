"""Headless Chromium through selenium, for the HTML explorer's tests and benchmark.

Debian's `chromium` and `chromium-driver` packages provide the browser and its driver;
`missing()` names what is absent so a test can skip with one clear line.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BROWSER_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser")
DRIVER_CANDIDATES = ("/usr/bin/chromedriver", "chromedriver")
PACKAGES = {"browser": "chromium", "driver": "chromium-driver", "selenium": "selenium (pip, the test extra)"}


def _which(candidates: tuple[str, ...]) -> str | None:
    for c in candidates:
        found = shutil.which(c)
        if found:
            return found
    return None


def missing() -> str | None:
    """None when the browser, its driver and selenium are there; else a one-line reason."""
    absent = []
    if _which(BROWSER_CANDIDATES) is None:
        absent.append(PACKAGES["browser"])
    if _which(DRIVER_CANDIDATES) is None:
        absent.append(PACKAGES["driver"])
    try:
        import selenium  # noqa: F401
    except ImportError:
        absent.append(PACKAGES["selenium"])
    if not absent:
        return None
    return f"headless browser tests need {', '.join(absent)}: apt-get install -y chromium chromium-driver"


@contextmanager
def chromium(width: int = 1400, height: int = 1000) -> Iterator[Any]:
    """A headless Chromium WebDriver that records console messages and network requests."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = _which(BROWSER_CANDIDATES) or BROWSER_CANDIDATES[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--hide-scrollbars", "--force-device-scale-factor=1"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(_which(DRIVER_CANDIDATES) or DRIVER_CANDIDATES[0]), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def open_page(driver: Any, page: Path, state: str = "") -> None:
    """Load the page from its file:// URL (with `state` as the hash) and wait for the explorer."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get("about:blank")
    driver.get(Path(page).resolve().as_uri() + (f"#{state}" if state else ""))
    WebDriverWait(driver, 30).until(lambda d: d.execute_script("return !!(window.benchExplorer && window.benchExplorer.firstRenderMs)"))


def console_messages(driver: Any) -> list[dict[str, Any]]:
    return list(driver.get_log("browser"))


def requested_urls(driver: Any) -> list[str]:
    """Every URL the page asked the network stack for since the last call (Chrome's log)."""
    urls = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    return urls


def visible_ids(driver: Any) -> list[str]:
    """The image ids of the explorer's rows on the current page, top to bottom."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#explorer-table tbody tr')).map(r => r.dataset.imageId)")


def all_ids(driver: Any) -> list[str]:
    """The image ids of the whole filtered, sorted view (every page)."""
    return driver.execute_script("return window.benchExplorer.visibleIds()")
