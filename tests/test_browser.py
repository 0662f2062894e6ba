"""The web map in a real browser: Debian's Chromium, driven by playwright, against ``python -m vectorgeo.serve``.

Skipped, with the reason, where Chromium or playwright is missing (``./setup.sh`` installs both when it can).
Screenshots go to ``test-artifacts/`` at the repository root.
"""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import h3.api.basic_int as h3i
import numpy as np
import pytest
from search_data import CENTRE, RES, build_search_bucket
from test_serve import KINDS, REPO_ROOT, serve_command, start_cli, write_landcover

CHROMIUM = Path(os.environ.get("VG_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
ARTIFACTS = REPO_ROOT / "test-artifacts"

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (./setup.sh installs it)")
if not CHROMIUM.is_file():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set VG_CHROMIUM)", allow_module_level=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return build_search_bucket(tmp_path_factory.mktemp("browser"), KINDS)


@pytest.fixture(scope="module")
def url(data, tmp_path_factory):
    landcover = write_landcover(data.data_dir.parent / "landcover.tif")
    proc, url = start_cli(serve_command(data, landcover), tmp_path_factory.mktemp("cache"))
    yield url
    proc.terminate()
    proc.communicate(timeout=30)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, url):
    """A fresh page (own storage) that fails the test on a script error or a request leaving this machine."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    problems = []
    page.on("pageerror", lambda exc: problems.append(f"script error: {exc}"))
    page.on("request", lambda r: _is_local(r.url) or problems.append(f"request to {r.url}"))
    yield page
    context.close()
    assert not problems, problems


def _is_local(address: str) -> bool:
    parts = urlsplit(address)
    return parts.scheme == "data" or parts.hostname == "127.0.0.1"


def _open(page, url, query=""):
    page.goto(url + query)
    page.wait_for_function("window.vg && vg.state.overview !== null")


def _click_latlng(page, lat, lng):
    """Click the map where a point is drawn (the map's own projection places it)."""
    x, y = page.evaluate("([lat, lng]) => { const p = vg.map.latLngToContainerPoint([lat, lng]); return [p.x, p.y]; }",
                         [lat, lng])  # fmt: skip
    box = page.locator("#map").bounding_box()
    before = page.evaluate("vg.state.searches")
    page.mouse.click(box["x"] + x, box["y"] + y)
    page.wait_for_function(f"!vg.state.loading && (vg.state.searches > {before} || vg.state.error !== '')")


def _api(url, query):
    with urllib.request.urlopen(f"{url}api/search?{query}", timeout=60) as response:
        return json.loads(response.read())


def test_a_click_draws_and_lists_similar_cells_and_a_result_click_zooms(page, url, data):
    _open(page, url)
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('Ready')")
    assert "model m · res 7 · faiss" in page.inner_text("#status")
    assert page.evaluate("document.querySelector('.leaflet-pane img').naturalWidth") > 0  # the land-cover overview
    legend = page.inner_text(".legend details")
    assert all(name in legend for name in ("Tree cover", "Cropland", "Permanent water bodies", "Built-up"))

    cell = h3i.latlng_to_cell(*CENTRE, RES)
    assert np.isin(np.uint64(cell), data.h3)
    here = h3i.cell_to_latlng(cell)  # the cell's centre: a point near its edge could fall on a result later
    page.fill("#k", "12")
    _click_latlng(page, *here)
    assert page.evaluate("vg.state.error") == ""
    assert page.locator("path.vg-result").count() == 12
    assert page.locator("path.vg-query").count() == 1
    assert page.locator("#results li[data-rank]").count() == 12
    expected = _api(url, f"lat={here[0]}&lng={here[1]}&k=12")
    shown = page.evaluate("vg.state.results.map(r => r.h3)")
    assert shown == [f["properties"]["h3"] for f in expected["features"]]
    assert page.evaluate("vg.state.query.cells") == [h3i.int_to_str(cell)]
    first = page.inner_text("#results li[data-rank='1']")
    assert f"{expected['features'][0]['properties']['score']:.3f}" in first and "top " in first and " km" in first
    assert page.locator(".legend .ramp").is_visible()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "map-results.png"))

    page.fill("#radius_km", "6")  # clicking the query cell again (results are not under it) searches again
    _click_latlng(page, *here)
    assert page.locator("path.vg-radius").count() == 1
    distances = page.evaluate("vg.state.results.map(r => r.distance_km)")
    assert distances and max(distances) <= 6
    page.screenshot(path=str(ARTIFACTS / "map-radius.png"))
    page.fill("#radius_km", "")
    _click_latlng(page, *here)

    zoom = page.evaluate("vg.map.getZoom()")
    target = expected["features"][4]["properties"]
    page.click("#results li[data-rank='5']")
    page.wait_for_function(  # the map flies to the cell
        "([z, lat, lng]) => { const c = vg.map.getCenter(); "
        "return vg.map.getZoom() > z && Math.abs(c.lat - lat) < 0.01 && Math.abs(c.lng - lng) < 0.01; }",
        arg=[zoom, target["lat"], target["lng"]],
        timeout=10_000,
    )
    assert page.evaluate("vg.state.selected") == 5
    assert "active" in page.get_attribute("#results li[data-rank='5']", "class")


def test_errors_are_shown_and_the_endpoint_can_be_fixed(page, url, data):
    _open(page, url, "?api=http://127.0.0.1:9/")
    page.wait_for_selector("#error:not([hidden])")
    assert "Cannot reach the API at http://127.0.0.1:9/health" in page.inner_text("#error")
    page.screenshot(path=str(ARTIFACTS / "map-bad-endpoint.png"))
    page.goto(url)  # a ?api= link points this visit only: it is not saved
    assert page.evaluate("vg.state.api") != "http://127.0.0.1:9/"
    _open(page, url, "?api=http://127.0.0.1:9/")
    page.wait_for_selector("#error:not([hidden])")

    page.click("#endpoint-box summary")
    page.fill("#api", url + "api/")
    page.click("#api-save")
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('Ready')")
    assert page.is_hidden("#error")
    page.goto(url)  # the endpoint is remembered in this browser
    assert page.evaluate("vg.state.api") == url + "api/"

    page.wait_for_function("vg.state.overview !== null")
    page.fill("#k", "5000")
    _click_latlng(page, *CENTRE)
    assert "k must be an integer between 1 and 1000, got 5000" in page.inner_text("#error")
    page.fill("#k", "10")
    sea = int(data.missing[0])  # a cell of the disk with no embedding: "sea"
    _click_latlng(page, *h3i.cell_to_latlng(sea))
    assert f"(cell {h3i.int_to_str(sea)}) is not in the index" in page.inner_text("#error")
    assert page.locator("path.vg-result").count() == 0
