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
    return parts.scheme in ("data", "blob") or parts.hostname == "127.0.0.1"  # blob: the labels' export


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


def _label_click(page, lat, lng):
    """Click a point in label mode and wait for the page to mark (or unmark) the cell under it."""
    before = page.evaluate("vg.labels.state.clicks")
    page.mouse.click(*_map_xy(page, lat, lng))
    page.wait_for_function(f"vg.labels.state.clicks > {before} && vg.labels.state.pending === 0")


def _classify(page):
    """Press "Classify this view" and wait for the answer (drawn, or an error shown)."""
    before = page.evaluate("vg.labels.state.classified")
    page.click("#classify")
    page.wait_for_function(
        f"!vg.labels.state.classifying && (vg.labels.state.classified > {before} || vg.state.error !== '')",
        timeout=60_000,
    )


def _classify_bodies(page):
    """The JSON bodies the page sends to POST /api/classify, as a list that fills while the test runs."""
    bodies = []
    page.on("request", lambda r: "/api/classify" in r.url and bodies.append(json.loads(r.post_data)))
    return bodies


def _view(page, pad=0.0):
    """The map's view as (west, south, east, north), shrunk by ``pad`` of its size on each side."""
    return page.evaluate("pad => { const b = vg.map.getBounds().pad(-pad); "
                         "return [b.getWest(), b.getSouth(), b.getEast(), b.getNorth()]; }", pad)  # fmt: skip


def _label_cells(data, name, n, view):
    """The centres of the ``n`` indexed cells with the most of land-cover class ``name``, inside ``view``."""
    west, south, east, north = view
    inside = (data.lng > west) & (data.lng < east) & (data.lat > south) & (data.lat < north)
    column = data.fractions[:, data.legend.names.index(name)]
    order = [i for i in np.argsort(-column) if inside[i]][:n]
    return [(h3i.int_to_str(int(data.h3[i])), *h3i.cell_to_latlng(int(data.h3[i]))) for i in order]


def test_label_mode_marks_cells_classifies_the_view_and_exports_the_labels(page, url, data):
    _open(page, url)
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('Ready')")
    assert page.get_attribute("#label-mode", "aria-pressed") == "false"
    assert page.evaluate("vg.labels.state.classes.map(c => c.name)") == ["positive", "negative"]  # the default pair
    page.click("#label-mode")
    assert page.get_attribute("#label-mode", "aria-pressed") == "true"
    assert page.inner_text("#status").startswith("Label mode")

    bodies = _classify_bodies(page)
    forest = _label_cells(data, "Tree cover", 3, _view(page, 0.1))
    water = _label_cells(data, "Permanent water bodies", 3, _view(page, 0.1))
    assert not {h for h, *_ in forest} & {h for h, *_ in water}

    page.fill("#label-new", "forest")
    page.press("#label-new", "Enter")  # a new class becomes the one a click marks
    assert page.is_checked("#label-classes input[value='forest']")
    for _, lat, lng in forest:
        _label_click(page, lat, lng)
    assert page.evaluate("vg.state.searches") == 0  # label mode: clicks mark cells, they do not search
    assert page.evaluate("vg.state.error") == ""

    _classify(page)  # one class is not enough: the API says so, the page shows it
    assert "every label is class 'forest': give at least 2 classes" in page.inner_text("#error")
    assert page.evaluate("vg.labels.state.classified") == 0

    page.get_by_label("New class name").fill("water")
    page.get_by_role("button", name="Add class").click()
    for _, lat, lng in water:
        _label_click(page, lat, lng)
    labelled = page.evaluate("Object.fromEntries([...vg.labels.state.labels.values()].map(l => [l.h3, l.class]))")
    assert labelled == {**{h: "forest" for h, *_ in forest}, **{h: "water" for h, *_ in water}}
    assert page.locator("#label-list li").count() == 6 and page.locator("path.vg-label").count() == 6
    assert page.inner_text("#label-summary") == "6 labels: forest 3 · water 3"
    assert forest[0][0] in page.inner_text("#label-list")
    assert page.inner_text("#label-classes [data-class='forest'] .count") == "3"
    assert page.is_disabled("#label-classes [data-class='forest'] .remove")

    _label_click(page, *forest[2][1:])  # a labelled cell clicked again is unmarked
    page.get_by_role("button", name=f"Remove label water {water[2][0]}").click()  # or removed from the list
    assert page.inner_text("#label-summary") == "4 labels: forest 2 · water 2"
    assert page.locator("path.vg-label").count() == 4
    page.get_by_role("button", name="Remove class negative").click()  # an empty class can go
    assert page.evaluate("vg.labels.state.classes.map(c => c.name)") == ["positive", "forest", "water"]

    page.select_option("#classifier", "knn")
    _classify(page)
    assert page.evaluate("vg.state.error") == ""
    sent = bodies[-1]  # the labels by cell, and the view as the region
    assert sent["labels"] == {h: c for h, c in labelled.items() if h not in (forest[2][0], water[2][0])}
    assert sent["classifier"] == "knn" and sent["bbox"] == pytest.approx(_view(page), abs=1e-5)
    result = page.evaluate("vg.labels.state.result")
    assert result["classifier"] == "knn" and result["n_cells"] > 20
    assert {c["name"] for c in result["classes"]} == {"forest", "water"}
    assert page.evaluate("vg.labels.predictedLayer.getLayers()[0].getLayers().length") == result["n_cells"]
    predicted = page.evaluate("vg.labels.predictedLayer.getLayers()[0].getLayers().map(l => l.feature.properties)")
    by_cell = {p["h3"]: p["class"] for p in predicted}
    assert {h: by_cell[h] for h in labelled if h in by_cell}  # the labelled cells in view are predicted too
    legend = page.inner_text("#class-legend")
    for c in result["classes"]:
        assert f"{c['name']}: {c['n_cells']:,} cells" in legend
    assert f"Classified {result['n_cells']} cells in the view" in page.inner_text("#status")

    fill = "vg.labels.predictedLayer.getLayers()[0].getLayers()[0].options.fillOpacity"
    assert page.evaluate(fill) == pytest.approx(0.7)
    page.get_by_label("Opacity of the classified cells").fill("0.3")
    assert page.evaluate(fill) == pytest.approx(0.3)
    page.get_by_label("Opacity of the classified cells").fill("0.85")
    page.mouse.move(1270, 420)  # no tooltip in the picture
    page.screenshot(path=str(ARTIFACTS / "map-label-mode.png"))  # docs/label_mode.png is one of these

    with page.expect_download() as download:
        page.click("#label-export")
    path = download.value.path()
    assert download.value.suggested_filename == "vectorgeo-labels.geojson"
    exported = json.loads(Path(path).read_text())
    assert exported["type"] == "FeatureCollection" and len(exported["features"]) == 4
    kept = {h: (lat, lng) for h, lat, lng in forest[:2] + water[:2]}
    for feature in exported["features"]:
        p = feature["properties"]
        assert feature["geometry"]["type"] == "Point" and p["class"] == labelled[p["h3"]]
        assert feature["geometry"]["coordinates"] == pytest.approx(kept[p["h3"]][::-1], abs=1e-6)  # [lng, lat]
    from vectorgeo.labels import parse_labels  # flow 06's reader takes the file as it is

    labels = parse_labels(Path(path).read_bytes(), "labels.geojson", h3_resolution=RES)
    assert labels.counts() == {"forest": 2, "water": 2}

    page.reload()  # the labels and classes stay in this browser
    page.wait_for_function("window.vg && vg.labels && vg.state.overview !== null")
    assert page.inner_text("#label-summary") == "4 labels: forest 2 · water 2"
    assert page.locator("path.vg-label").count() == 4


def test_label_mode_asks_to_zoom_in_for_a_large_view_and_off_it_searches_again(page, url, data):
    _open(page, url)
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('Ready')")
    bodies = _classify_bodies(page)
    view = _view(page, 0.1)
    chosen = _label_cells(data, "Cropland", 2, view) + _label_cells(data, "Built-up", 2, view)
    cells = [point for _, *point in chosen]
    page.click("#label-mode")
    for point in cells[:2]:
        _label_click(page, *point)
    page.click("#label-classes input[value='negative']")
    for point in cells[2:]:
        _label_click(page, *point)
    assert page.inner_text("#label-summary") == "4 labels: positive 2 · negative 2"

    sea = int(data.missing[0])  # a cell with no embedding cannot be labelled
    _label_click(page, *h3i.cell_to_latlng(sea))
    assert f"{h3i.int_to_str(sea)}" in page.inner_text("#error") and "not in the index" in page.inner_text("#error")
    assert page.locator("#label-list li").count() == 4

    page.evaluate("vg.map.setView([44.6, -123.9], 4, {animate: false})")  # far more than 50,000 cells in view
    _classify(page)
    assert "zoom in" in page.inner_text("#error").lower()
    assert page.evaluate("vg.labels.state.classified") == 0 and page.is_hidden("#class-legend")

    page.evaluate("vg.map.setView([44.6, -123.9], 10, {animate: false})")
    page.focus("#classify")  # a real button: the keyboard works it
    page.keyboard.press("Enter")
    page.wait_for_function("!vg.labels.state.classifying && vg.labels.state.classified === 1", timeout=60_000)
    assert page.evaluate("vg.state.error") == "" and page.is_visible("#class-legend")
    sent = bodies[-1]  # only positive/negative labels: the API's positive mode
    assert sent["positive"] == [h for h, *_ in chosen[:2]] and sent["negative"] == [h for h, *_ in chosen[2:]]
    assert "labels" not in sent and sent["classifier"] == "logistic"
    assert [c["name"] for c in page.evaluate("vg.labels.state.result.classes")] == ["positive", "negative"]

    box = (-123.85, 44.55, -123.65, 44.75)
    _draw(page, "rectangle", [(box[1], box[0]), (box[3], box[2])])  # a drawn box is the region instead of the view
    assert page.locator("#label-list li").count() == 4  # drawing clicks label nothing
    _classify(page)
    assert bodies[-1]["bbox"] == pytest.approx(box, abs=1e-3) and "polygon" not in bodies[-1]
    predicted = page.evaluate("vg.labels.predictedLayer.getLayers()[0].getLayers().map(l => l.feature.properties)")
    assert predicted and len(predicted) == page.evaluate("vg.labels.state.result.n_cells")
    for p in predicted:
        lat, lng = h3i.cell_to_latlng(h3i.str_to_int(p["h3"]))
        assert box[0] <= lng <= box[2] and box[1] <= lat <= box[3]
    assert "in the drawn box" in page.inner_text("#status")

    page.click("#label-mode")  # off: a click searches as before
    assert page.get_attribute("#label-mode", "aria-pressed") == "false"
    here = h3i.cell_to_latlng(h3i.latlng_to_cell(*CENTRE, RES))
    page.fill("#k", "5")
    _click_latlng(page, *here)
    assert page.evaluate("vg.state.error") == "" and page.evaluate("vg.state.searches") == 1
    assert page.locator("path.vg-result").count() == 5 and "within the drawn box" in page.inner_text("#status")
    assert page.locator("#label-list li").count() == 4  # nothing labelled
