"""Classifying a region from labelled cells (vectorgeo.region_classify): regions, known answers, every refusal."""

from __future__ import annotations

import h3.api.basic_int as h3i
import numpy as np
import pytest

from vectorgeo import region_classify
from vectorgeo.errors import InvalidInputError, NotFoundError
from vectorgeo.region_classify import (
    MAX_CLASSIFY_CELLS,
    classify_region,
    estimate_region_cells,
    region_to_cells,
)
from vectorgeo.stores.base import GeoFilter
from vectorgeo.stores.faiss import FaissStore

RES, DIM = 6, 8
BBOX = (4.0, 44.5, 6.0, 45.5)  # about 480 res-6 cells
PATCH = (45.0, 4.5, 25.0)  # lat, lng, radius_km: the few cells of class "forest" in positive-only tests


@pytest.fixture(scope="module")
def all_res3() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every resolution-3 cell of the planet and its centre: the brute force to compare with."""
    cells = np.array(sorted(c for r in h3i.get_res0_cells() for c in h3i.cell_to_children(r, 3)), np.uint64)
    lat, lng = np.array([h3i.cell_to_latlng(int(c)) for c in cells]).T
    return cells, lat, lng


@pytest.mark.parametrize(
    "region",
    [
        GeoFilter(bbox=(-10, 35, 30, 60)),
        GeoFilter(bbox=(170, -20, -170, 10)),  # across the antimeridian
        GeoFilter(bbox=(-180, -90, 180, 90)),  # the planet
        GeoFilter(bbox=(-180, 60, 180, 90)),  # a polar cap
        GeoFilter(bbox=(0, 0, 0, 0)),  # a point: no centre on it
        GeoFilter(lat=89, lng=0, radius_km=1500),  # around the pole
        GeoFilter(lat=0, lng=179, radius_km=2000),  # across the antimeridian
        GeoFilter(lat=-60, lng=-100, radius_km=4000),
        GeoFilter(lat=10, lng=10, radius_km=20000),  # all of it
        GeoFilter(polygon=((0.0, 40.0), (20.0, 40.0), (20.0, 44.0), (6.0, 44.0), (6.0, 55.0), (0.0, 55.0))),
        GeoFilter(polygon=((-170, -80), (0, -85), (170, -80), (170, 85), (0, 80), (-170, 85))),
        GeoFilter(polygon=((5.0, 50.0), (15.0, 38.0), (25.0, 50.0), (15.0, 46.0))),
    ],
    ids=lambda g: "radius" if g.is_radius else "polygon" if g.is_polygon else f"bbox{g.bbox}",
)
def test_region_cells_are_those_whose_centres_the_filter_contains(region, all_res3):
    cells, lat, lng = all_res3
    inside = region.contains(lat, lng)
    got, got_lat, got_lng = region_to_cells(region, 3)
    np.testing.assert_array_equal(got, cells[inside])
    np.testing.assert_allclose(got_lat, lat[inside])
    np.testing.assert_allclose(got_lng, lng[inside])
    assert estimate_region_cells(region, 3) == pytest.approx(inside.sum(), rel=0.25, abs=10)


def test_small_regions_at_a_fine_resolution_match_brute_force():
    centre = h3i.latlng_to_cell(44.6, -123.9, 8)
    cells = np.array(sorted(h3i.grid_disk(centre, 40)), np.uint64)
    lat, lng = np.array([h3i.cell_to_latlng(int(c)) for c in cells]).T
    for region in (
        GeoFilter(lat=44.6, lng=-123.9, radius_km=12.5),
        GeoFilter(bbox=(-124.0, 44.55, -123.8, 44.7)),
        GeoFilter(polygon=((-124.0, 44.5), (-123.8, 44.52), (-123.85, 44.7))),
    ):
        np.testing.assert_array_equal(region_to_cells(region, 8)[0], cells[region.contains(lat, lng)])


def test_a_huge_region_is_refused_before_any_cell_is_listed(monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("filled a region that the estimate refuses")

    monkeypatch.setattr(region_classify.h3n, "polygon_to_cells_experimental", never)
    region = GeoFilter(bbox=(-10, 30, 30, 60))
    with pytest.raises(InvalidInputError, match=r"holds about [\d,]+ H3 cells at resolution 7; /classify takes at "
                       r"most 50,000: zoom in or use flow 06 for whole maps"):  # fmt: skip
        region_to_cells(region, 7)
    assert estimate_region_cells(region, 7) > 30 * MAX_CLASSIFY_CELLS
    with pytest.raises(InvalidInputError, match="outline is about"):  # a thin sliver: tiny area, endless border
        region_to_cells(GeoFilter(polygon=((0, 0), (170, 0), (170, 0.00001))), 12)


def test_the_limit_holds_on_the_actual_count_too():
    region = GeoFilter(bbox=(170, -20, -170, 10))  # its estimate (~590) is below its count (709)
    assert estimate_region_cells(region, 3) < 650
    with pytest.raises(InvalidInputError, match="holds 709 H3 cells at resolution 3; /classify takes at most 650"):
        region_to_cells(region, 3, max_cells=650)


# ------------------------------------------------------------------------------------------------ classifying


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A FAISS store of the res-6 cells in BBOX (and a ring around it): west of 5°E "forest", east "water".

    Cells near PATCH are "forest" too when ``patch`` is asked: the store ``patch`` holds forest only there.
    """
    stores = {}
    for name in ("halves", "patch"):
        cells, lat, lng = region_to_cells(GeoFilter(bbox=(3.5, 44.0, 6.5, 46.0)), RES)
        rng = np.random.default_rng(1)
        centres = rng.normal(size=(2, DIM))
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)  # cosine 0.18 apart
        if name == "halves":
            forest = lng < 5.0
        else:
            forest = GeoFilter(lat=PATCH[0], lng=PATCH[1], radius_km=PATCH[2]).contains(lat, lng)
        vectors = centres[(~forest).astype(int)] + 0.1 * rng.normal(size=(len(cells), DIM))
        store = FaissStore(tmp_path_factory.mktemp(name))
        store.create(DIM)
        keep = np.arange(len(cells)) % 17 != 5  # some cells are sea: not in the index
        store.upsert(cells[keep], lat[keep], lng[keep], vectors[keep].astype(np.float32))
        store.finish_load()
        stores[name] = (store, cells[keep], lat[keep], lng[keep], forest[keep])
    yield stores
    for store, *_ in stores.values():
        store.close()


def _pick(cells, mask, n, seed=0):
    return [int(c) for c in np.random.default_rng(seed).choice(cells[mask], n, replace=False)]


@pytest.mark.parametrize("classifier", ["logistic", "knn", "random_forest"])
def test_two_areas_two_classes_known_answer(world, classifier):
    store, cells, lat, lng, forest = world["halves"]
    labels = dict.fromkeys(_pick(cells, forest, 5), "forest") | dict.fromkeys(_pick(cells, ~forest, 5), "water")
    region = GeoFilter(bbox=BBOX)
    answer = classify_region(store, labels, region, h3_resolution=RES, classifier=classifier, model="m", store="faiss")
    inside = region.contains(lat, lng)
    assert answer["n_cells"] == inside.sum() == len(answer["features"])
    assert answer["n_candidates"] == len(region_to_cells(region, RES)[0]) > answer["n_cells"]  # the sea is missing
    got = {f["properties"]["h3"]: f["properties"] for f in answer["features"]}
    expected = {
        h3i.int_to_str(int(c)): "forest" if f else "water" for c, f in zip(cells[inside], forest[inside], strict=True)
    }
    assert {h: p["class"] for h, p in got.items()} == expected
    probabilities = np.array([p["probability"] for p in got.values()])
    assert np.median(probabilities) > 0.85 and (probabilities > 0.6).mean() > 0.95 and (probabilities <= 1).all()
    for p in got.values():
        assert set(p["probabilities"]) == {"forest", "water"}
        assert p["probability"] == max(p["probabilities"].values())
        assert abs(sum(p["probabilities"].values()) - 1) < 1e-3
    assert answer["classes"] == [
        {"name": "forest", "n_labels": 5, "n_cells": int(forest[inside].sum())},
        {"name": "water", "n_labels": 5, "n_cells": int((~forest[inside]).sum())},
    ]
    assert answer["training"] == {"n_labels": 10, "n_background": 0, "accuracy_on_labels": 1.0}
    assert (answer["classifier"], answer["model"], answer["store"], answer["resolution"]) == (
        classifier, "m", "faiss", RES,
    )  # fmt: skip
    assert answer["region"] == {"bbox": list(BBOX)} and answer["truncated"] is False
    in_region = [c for c in labels if h3i.int_to_str(c) in got]
    assert in_region and all(got[h3i.int_to_str(c)]["labelled"] == labels[c] for c in in_region)
    assert sum("labelled" in p for p in got.values()) == len(in_region)
    first = answer["features"][0]
    assert first["type"] == "Feature" and first["id"] == first["properties"]["h3"]
    ring = first["geometry"]["coordinates"][0]
    assert first["geometry"]["type"] == "Polygon" and ring[0] == ring[-1] and len(ring) == 7
    assert [f["id"] for f in answer["features"]] == sorted(got)  # id order


def test_one_example_per_class_is_enough_and_geometry_can_be_left_out(world):
    store, cells, _, _, forest = world["halves"]
    labels = {_pick(cells, forest, 1)[0]: "forest", _pick(cells, ~forest, 1)[0]: "water"}
    answer = classify_region(store.fetch_many, labels, GeoFilter(lat=45, lng=5, radius_km=30), h3_resolution=RES,
                             geometry=False)  # fmt: skip
    assert answer["features"] and all(f["geometry"] is None for f in answer["features"])
    right = [f["properties"]["class"] == ("forest" if h3i.cell_to_latlng(int(f["id"], 16))[1] < 5 else "water")
             for f in answer["features"]]  # fmt: skip
    assert np.mean(right) > 0.95


def test_positive_cells_alone_are_contrasted_with_background(world):
    store, cells, _, _, forest = world["patch"]
    positive = _pick(cells, forest, 3)
    answer = classify_region(store, None, GeoFilter(bbox=BBOX), h3_resolution=RES, positive=positive)
    assert [c["name"] for c in answer["classes"]] == ["positive", "negative"]
    assert answer["classes"][0]["n_labels"] == 3 and answer["classes"][1]["n_labels"] == 0
    assert answer["training"]["n_background"] == 15  # 5 per positive
    p = {int(f["id"], 16): f["properties"] for f in answer["features"]}
    truth = dict(zip(cells.tolist(), forest.tolist(), strict=True))
    for props in p.values():
        assert props["probability"] == props["probabilities"]["positive"]
        assert props["class"] == ("positive" if props["probability"] >= 0.5 else "negative")
    on = np.array([props["probability"] for c, props in p.items() if truth[c]])
    off = np.array([props["probability"] for c, props in p.items() if not truth[c]])
    assert (on > 0.5).mean() > 0.9 and np.median(on) > 0.8 and np.median(off) < 0.1
    assert all(p[c]["labelled"] == "positive" for c in positive if c in p)
    again = classify_region(store, None, GeoFilter(bbox=BBOX), h3_resolution=RES, positive=positive)
    assert again == answer  # the background sample is seeded
    negative = _pick(cells, ~forest, 4)
    both = classify_region(store, None, GeoFilter(bbox=BBOX), h3_resolution=RES, positive=positive, negative=negative)
    assert both["training"] == {"n_labels": 7, "n_background": 0, "accuracy_on_labels": 1.0}
    assert both["classes"][1]["n_labels"] == 4


def test_refusals_name_the_bad_value(world):
    store, cells, _, _, forest = world["halves"]
    region = GeoFilter(bbox=BBOX)
    a, b = _pick(cells, forest, 2), _pick(cells, ~forest, 2)
    sea = int(region_to_cells(GeoFilter(bbox=(3.5, 44.0, 6.5, 46.0)), RES)[0][5])  # left out of the index
    coarse = h3i.cell_to_parent(a[0], 4)

    def run(labels=None, **kwargs):
        return classify_region(store, labels, region, h3_resolution=RES, **kwargs)

    with pytest.raises(NotFoundError, match=f"labelled H3 cell {h3i.int_to_str(sea)} is not in the index"):
        run({a[0]: "x", sea: "y"})
    with pytest.raises(InvalidInputError, match="every label is class 'x': give at least 2 classes"):
        run({a[0]: "x", a[1]: "x"})
    with pytest.raises(InvalidInputError, match="at resolution 4; this index holds resolution-6 cells"):
        run({a[0]: "x", coarse: "y"})
    with pytest.raises(InvalidInputError, match="not both"):
        run({a[0]: "x", b[0]: "y"}, positive=a)
    with pytest.raises(InvalidInputError, match="not both"):
        run()
    with pytest.raises(InvalidInputError, match="need positive cells"):
        run(negative=b)
    with pytest.raises(InvalidInputError, match="is both positive and negative"):
        run(positive=a, negative=[a[1], b[0]])
    with pytest.raises(InvalidInputError, match="unknown classifier 'svm'"):
        run({a[0]: "x", b[0]: "y"}, classifier="svm")
    with pytest.raises(InvalidInputError, match="class names must be non-empty strings of at most 64"):
        run({a[0]: "x", b[0]: "y" * 65})
    with pytest.raises(InvalidInputError, match="class names must be non-empty"):
        run({a[0]: " ", b[0]: "y"})
    many = _pick(cells, np.ones(len(cells), bool), 21)
    with pytest.raises(InvalidInputError, match="at most 20 classes, got 21"):
        run({c: f"class {i}" for i, c in enumerate(many)})
    with pytest.raises(InvalidInputError, match="give 1 to 1,000 labelled cells, got 1,001"):
        run(positive=region_to_cells(GeoFilter(bbox=(0, 40, 10, 50)), RES)[0][:1001].tolist())
    with pytest.raises(InvalidInputError, match="must be H3 cell ids"):
        run({a[0]: "x", 12345: "y"})
    with pytest.raises(InvalidInputError, match="labelled more than once"):
        run(positive=[a[0], a[0]])
    with pytest.raises(InvalidInputError, match="no indexed cells of the region are left"):
        classify_region(store, None, GeoFilter(lat=0, lng=0, radius_km=50), h3_resolution=RES, positive=a)
