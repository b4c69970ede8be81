"""Headless Chromium through selenium, for the atlas page's browser test and its load-time benchmark."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
DRIVER = "chromedriver"


def chromium_binary() -> str | None:
    """The first Chromium on PATH, or None."""
    return next((found for name in CHROMIUM if (found := shutil.which(name))), None)


def available() -> str:
    """Why the browser cannot run ('' when it can): selenium, Chromium and chromedriver are all needed."""
    try:
        import selenium  # noqa: F401  optional dependency (the dev extra)
    except ImportError:
        return "selenium is not installed (pip install -e .[dev])"
    if chromium_binary() is None or shutil.which(DRIVER) is None:
        return "Chromium or chromedriver is absent (apt-get install chromium chromium-driver)"
    return ""


def headless_chromium(*, width: int = 1400, height: int = 900) -> Any:
    """A headless Chromium WebDriver that keeps the page's console messages (``driver.get_log('browser')``)."""
    from selenium import webdriver  # optional dependency (the dev extra)
    from selenium.webdriver.chrome.service import Service  # optional dependency, as above

    options = webdriver.ChromeOptions()
    options.binary_location = chromium_binary()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(shutil.which(DRIVER)))


@dataclass
class PageLoad:
    """How long a page took to open."""

    wall_seconds: float  # from the request to the page's script having drawn everything
    ready_ms: float  # navigation start to the page's 'atlas-ready' mark, measured by the browser


def open_page(driver: Any, path: str | Path, *, timeout: float = 60.0) -> PageLoad:
    """Load ``path`` and wait until its script set ``body[data-ready]``."""
    start = time.perf_counter()
    driver.get(Path(path).resolve().as_uri())
    while driver.execute_script("return document.body && document.body.dataset.ready") != "1":
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"{path} did not finish drawing in {timeout} s")
        time.sleep(0.01)
    wall = time.perf_counter() - start
    ready = driver.execute_script("return performance.getEntriesByName('atlas-ready')[0].startTime")
    return PageLoad(wall_seconds=wall, ready_ms=float(ready))
