"""The service's search page (``GET /``) in a real headless Chromium, driven by Selenium,
against the real server of ``test_serve`` (conftest's ``built`` and ``server``: a tiny
run's index served by ``python -m multiret_jax.serve`` in a subprocess): a query typed into
the box and a task selected, the rendered results (passage ids, titles, scores as shown,
order, texts) equal ``POST /search``'s for the same query, task and k; the query's words
are marked in the texts, which are shown as text, never as HTML; a 4xx is shown in the page.

Needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install chromium
chromium-driver``), used as installed (no Selenium Manager download); skipped without them.
``MULTIRET_JAX_SCREENSHOT=docs/search_page.png`` saves a screenshot of the page with results.
"""

from __future__ import annotations

import os
import re
import shutil
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait


CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
QUERY, TASK, K = "Selburg is on the Drihol River.", "fever", 10
WINDOW = (1000, 700)

pytestmark = pytest.mark.usefixtures("clean_gin")
needs_chromium = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="headless Chromium not installed (chromium and chromedriver on PATH); on "
           "Debian/Ubuntu: apt-get install chromium chromium-driver")


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium through the system chromedriver, a 1000x700 viewport."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=%d,%d" % WINDOW):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:  # the viewport itself 1000x700 (--window-size counts the browser's own bars too)
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": WINDOW[0], "height": WINDOW[1], "deviceScaleFactor": 1, "mobile": False})
        yield driver
    finally:
        driver.quit()


def _open(browser, url):
    """The page, once its task selector lists the served tasks; the selector."""
    browser.get(f"{url}/")
    WebDriverWait(browser, 30).until(
        lambda d: Select(d.find_element(By.ID, "task")).options
        or d.find_element(By.ID, "error").is_displayed())
    return Select(browser.find_element(By.ID, "task"))


def _submit(browser, query, task):
    """Types ``query``, selects ``task``, submits; the results' state once this search
    ended ("done" or "error")."""
    results = browser.find_element(By.ID, "results")
    searches = int(results.get_attribute("data-searches")) + 1
    box = browser.find_element(By.ID, "query")
    box.clear()
    box.send_keys(query)
    Select(browser.find_element(By.ID, "task")).select_by_value(task)
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 120).until(
        lambda d: int(results.get_attribute("data-searches")) == searches
        and results.get_attribute("data-state") in ("done", "error"))
    return results.get_attribute("data-state")


def _shown(score: float) -> str:
    """``score.toFixed(4)`` as JavaScript writes it (the exact value, ties away from 0)."""
    return str(Decimal(score).quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP))


def _marked(text: str, query: str):
    """The query's words in ``text``: whole words (letters and digits), any case."""
    words = sorted({w.lower() for w in re.findall(r"[^\W_]+", query)}, key=len, reverse=True)
    pattern = r"(?<![^\W_])(?:%s)(?![^\W_])" % "|".join(map(re.escape, words))
    return re.findall(pattern, text, re.IGNORECASE)


def test_the_page_is_served_self_contained(server):
    r = httpx.get(f"{server['url']}/", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert 'id="task"' in page and 'id="query"' in page and 'id="submit"' in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # no external assets
    assert "innerHTML" not in page


@needs_chromium
def test_the_page_shows_the_api_results_with_query_words_marked(server, browser):
    url = server["url"]
    tasks = _open(browser, url)
    health = httpx.get(f"{url}/health", timeout=10).json()
    assert [o.get_attribute("value") for o in tasks.options] == health["tasks"]
    assert TASK != tasks.first_selected_option.get_attribute("value")  # selecting matters
    state = _submit(browser, QUERY, TASK)
    assert state == "done", browser.find_element(By.ID, "error").text

    want = httpx.post(f"{url}/search", json={"queries": [QUERY], "task": TASK, "k": K},
                      timeout=60)
    assert want.status_code == 200, want.text
    want = want.json()["results"][0]
    items = browser.find_elements(By.CSS_SELECTOR, "#results > li.result")
    got = [{"passage_id": li.get_attribute("data-passage-id"),
            "title": li.find_element(By.CLASS_NAME, "title").text,
            "score": li.find_element(By.CLASS_NAME, "score").text,
            "text": li.find_element(By.CLASS_NAME, "text").get_attribute("textContent"),
            "marks": [m.text for m in li.find_elements(By.CSS_SELECTOR, ".text mark")],
            "tags": [e.tag_name for e in li.find_elements(By.CSS_SELECTOR, ".text *")]}
           for li in items]
    assert len(got) == len(want) == K
    assert [g["passage_id"] for g in got] == [h["passage_id"] for h in want]
    assert [g["title"] for g in got] == [h["title"] for h in want]
    assert [g["score"] for g in got] == [_shown(h["score"]) for h in want]
    assert [g["text"] for g in got] == [h["text"] for h in want]
    # the query's words, and only they, marked (as text: only <mark> elements in a text)
    assert [g["marks"] for g in got] == [_marked(h["text"], QUERY) for h in want]
    assert sum(len(g["marks"]) for g in got) > 0
    assert all(t == "mark" for g in got for t in g["tags"])
    assert f"{K} passages" in browser.find_element(By.ID, "status").text

    screenshot = os.environ.get("MULTIRET_JAX_SCREENSHOT")
    if screenshot:
        Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(screenshot), screenshot


@needs_chromium
def test_the_page_shows_errors_and_never_renders_html(server, browser):
    url = server["url"]
    _open(browser, url)
    # a task the server does not serve (a stale page): the 422's detail in the page
    browser.execute_script("document.getElementById('task').add(new Option('msmarco', 'msmarco'));")
    assert _submit(browser, "who wrote it", "msmarco") == "error"
    error = browser.find_element(By.ID, "error")
    assert error.is_displayed()
    assert "422" in error.text and "unknown task 'msmarco'" in error.text and "nq" in error.text
    assert not browser.find_elements(By.CSS_SELECTOR, "#results > li")
    # markup in the query is shown as text; the page searches again after the error
    query = "<img src=x onerror=\"document.title='pwned'\"> Selburg <b>river</b>"
    assert _submit(browser, query, TASK) == "done"
    assert not error.is_displayed()
    assert query in browser.find_element(By.ID, "status").text
    assert not browser.find_elements(By.CSS_SELECTOR, "img, b")
    assert browser.title == "multiret_jax search"
    assert len(browser.find_elements(By.CSS_SELECTOR, "#results > li.result")) == K
