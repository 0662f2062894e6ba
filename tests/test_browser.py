"""The web map in a real browser: Debian's Chromium, driven by playwright, against ``python -m vectorgeo.serve``.

Skipped, with the reason, where Chromium or playwright is missing (``./setup.sh`` installs both when it can).
Screenshots go to ``test-artifacts/`` at the repository root.
"""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

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


def _map_xy(page, lat, lng):
    """The page coordinates (px) where the map draws a point."""
    x, y = page.evaluate("([lat, lng]) => { const p = vg.map.latLngToContainerPoint([lat, lng]); return [p.x, p.y]; }",
                         [lat, lng])  # fmt: skip
    box = page.locator("#map").bounding_box()
    return box["x"] + x, box["y"] + y


def _draw(page, tool, vertices):
    """Draw an area with the map's own tool by mouse: pick ``tool`` (rectangle, polygon), click each (lat, lng).

    A box takes two opposite corners; close a polygon by repeating its first vertex. Waits for the new area and
    for the search the page runs again with it (when it has searched before).
    """
    before = page.evaluate("[JSON.stringify(vg.state.area), vg.state.searches, vg.state.results.length]")
    page.click(f".vg-draw-{tool}")
    for lat, lng in vertices:
        x, y = _map_xy(page, lat, lng)
        page.mouse.move(x, y, steps=4)  # the tool's hint marker follows the mouse; the click drops it
        page.mouse.click(x, y)
    page.wait_for_function("a => JSON.stringify(vg.state.area) !== a && !vg.state.drawing", arg=before[0])
    if before[2]:
        page.wait_for_function(f"!vg.state.loading && vg.state.searches > {before[1]}")


def _inside_ring(lng, lat, ring):
    """Even-odd test of a point against a ring of (lng, lat) vertices."""
    inside = False
    for (x1, y1), (x2, y2) in zip(ring, ring[1:] + ring[:1], strict=True):
        if (y1 > lat) != (y2 > lat) and lng < x1 + (lat - y1) * (x2 - x1) / (y2 - y1):
            inside = not inside
    return inside


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


def test_a_drawn_box_or_polygon_filters_the_search_and_clearing_drops_it(page, url, data):
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    _open(page, url)
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('Ready')")
    assert page.get_attribute(".vg-draw-rectangle", "aria-label") == "Draw a box filter"
    assert page.get_attribute(".vg-draw-polygon", "aria-label") == "Draw a polygon filter"
    assert page.is_hidden("#area-clear")
    page.fill("#k", "25")
    page.fill("#radius_km", "50")  # a drawn area replaces the radius (the API takes one of them)

    def last_search():
        query = parse_qs(urlsplit([u for u in requests if "/api/search?" in u][-1]).query)
        return {key: values[0] for key, values in query.items()}

    here = h3i.cell_to_latlng(h3i.latlng_to_cell(*CENTRE, RES))
    _draw(page, "rectangle", [(44.55, -123.85), (44.75, -123.65)])  # north-east of the click
    assert page.locator("path.vg-area").count() == 1
    assert page.is_disabled("#radius_km") and page.input_value("#radius_km") == ""
    assert page.inner_text("#area") == "within the drawn box (123.85°W to 123.65°W, 44.55°N to 44.75°N)"
    _click_latlng(page, *here)
    sent = last_search()
    assert "radius_km" not in sent and "polygon" not in sent
    west, south, east, north = map(float, sent["bbox"].split(","))
    assert (west, south, east, north) == pytest.approx((-123.85, 44.55, -123.65, 44.75), abs=1e-3)
    results = page.evaluate("vg.state.results")
    assert results and page.locator("path.vg-result").count() == len(results)
    assert all(west <= r["lng"] <= east and south <= r["lat"] <= north for r in results)
    assert "within the drawn box" in page.inner_text("#status")
    page.screenshot(path=str(ARTIFACTS / "map-area-box.png"))

    corners = [(44.45, -124.05), (44.45, -123.85), (44.62, -123.78), (44.72, -124.0)]
    _draw(page, "polygon", [*corners, corners[0]])  # the page searches again from the same click
    assert page.locator("path.vg-area").count() == 1  # one area at a time: the polygon replaced the box
    assert page.inner_text("#area") == "within the drawn polygon (4 vertices)"
    sent = last_search()
    assert "bbox" not in sent and "radius_km" not in sent
    numbers = list(map(float, sent["polygon"].split(",")))
    assert numbers == pytest.approx([v for lat, lng in corners for v in (lng, lat)], abs=1e-3)  # click order
    ring = list(zip(numbers[::2], numbers[1::2], strict=True))
    results = page.evaluate("vg.state.results")
    assert results and all(_inside_ring(r["lng"], r["lat"], ring) for r in results)
    assert "within the drawn polygon" in page.inner_text("#status")
    page.screenshot(path=str(ARTIFACTS / "map-area-polygon.png"))

    before = page.evaluate("vg.state.searches")
    page.click("#area-clear")  # clearing searches again, everywhere
    page.wait_for_function(f"!vg.state.loading && vg.state.searches > {before}")
    sent = last_search()
    assert "bbox" not in sent and "polygon" not in sent
    assert page.evaluate("vg.state.area") is None and page.locator("path.vg-area").count() == 0
    assert not page.is_disabled("#radius_km") and page.is_hidden("#area-clear")
    assert "within" not in page.inner_text("#status")
    assert any(not _inside_ring(r["lng"], r["lat"], ring) for r in page.evaluate("vg.state.results"))
    assert requests and all(_is_local(u) for u in requests)  # the drawing tools are vendored: nothing leaves
