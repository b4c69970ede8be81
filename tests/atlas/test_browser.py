"""The atlas page in headless Chromium: no console errors, one cell per head, a click opens that head's numbers.

Skipped when selenium, Chromium or chromedriver is absent (.ci/run tries to install them).
"""

from __future__ import annotations

import csv

import pytest

from apmae.atlas.run import build_atlas
from apmae.atlas.synthetic import SyntheticCache, write_synthetic_run
from tests.atlas import browser

pytestmark = pytest.mark.skipif(bool(browser.available()), reason=browser.available() or "browser available")

LAYERS, HEADS = 3, 5


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("atlas")
    root = write_synthetic_run(tmp / "run", n_layers=LAYERS, n_heads=HEADS, n_rows=6)
    report = build_atlas([root], tmp / "out", cache=SyntheticCache(LAYERS, HEADS, seq_len=64, n_rows=6))
    with open(report.files["atlas/heads.csv"], newline="") as f:
        heads = {(int(r["layer"]), int(r["head"])): r for r in csv.DictReader(f)}
    return report.page, heads


@pytest.fixture(scope="module")
def driver():
    d = browser.headless_chromium()
    yield d
    d.quit()


def _shown(value: str) -> str:
    """How the page writes a heads.csv cell: 4 decimals, whole numbers as they are, a dash for no value."""
    if value == "":
        return "\u2014"
    number = float(value)
    return str(int(number)) if number.is_integer() else f"{number:.4f}"


def test_page_opens_without_console_errors_and_draws_every_head(page, driver):
    from selenium.webdriver.common.by import By  # optional dependency (the dev extra)

    load = browser.open_page(driver, page[0])
    assert load.ready_ms > 0
    assert [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")] == []
    assert len(driver.find_elements(By.CSS_SELECTOR, "#grid .cell")) == LAYERS * HEADS
    assert len(driver.find_elements(By.CSS_SELECTOR, "#table tr[data-i]")) == LAYERS * HEADS


def test_clicking_a_cell_opens_that_heads_panel_with_its_numbers(page, driver):
    from selenium.webdriver.common.by import By  # optional dependency (the dev extra)

    browser.open_page(driver, page[0])
    layer, head = 2, 3
    driver.find_element(By.CSS_SELECTOR, f'#grid .cell[data-i="{layer * HEADS + head}"]').click()
    assert driver.find_element(By.ID, "panel-head").text == f"L{layer}H{head}"
    shown = {}
    for row in driver.find_elements(By.CSS_SELECTOR, "#panel-table tr"):
        cells = row.find_elements(By.TAG_NAME, "td")
        if cells:
            shown[cells[0].text] = cells[1].text
    expected = {k: v for k, v in page[1][(layer, head)].items() if k not in ("layer", "head")}
    assert shown == {k: (v if k == "head_type" else _shown(v)) for k, v in expected.items()}
    assert len(driver.find_elements(By.CSS_SELECTOR, "#panel canvas.pat")) >= 2  # mean pattern and >= 1 medoid
    assert [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")] == []


def test_table_sorts_and_filters(page, driver):
    from selenium.webdriver.common.by import By  # optional dependency (the dev extra)

    browser.open_page(driver, page[0])
    driver.find_element(By.CSS_SELECTOR, '#table th[data-c="importance"]').click()  # descending first
    first = driver.find_element(By.CSS_SELECTOR, "#table tr[data-i] td").text
    best = max(page[1].values(), key=lambda r: float(r["importance"]))
    assert first == f"L{best['layer']}H{best['head']}"
    driver.find_element(By.ID, "filter").send_keys("importance>0")
    kept = len(driver.find_elements(By.CSS_SELECTOR, "#table tr[data-i]"))
    assert kept == sum(float(r["importance"]) > 0 for r in page[1].values())
