"""The 1-degree grid the stores index geographic filters by: keys and coverings that never miss a point."""

from __future__ import annotations

import numpy as np
import pytest

from vectorgeo.stores import GeoFilter
from vectorgeo.stores.geogrid import cover_ranges, filter_bbox, geo_cells


def _covered(keys: np.ndarray, geo: GeoFilter) -> np.ndarray:
    lo, hi = cover_ranges(geo)
    idx = np.searchsorted(lo, keys, side="right") - 1
    return (idx >= 0) & (keys <= hi[np.maximum(idx, 0)])


def test_keys_at_the_edges():
    lat = np.array([-90.0, -89.5, 0.0, 89.999, 90.0, 0.0, 0.0, 0.0])
    lng = np.array([-180.0, -179.5, 0.0, 179.999, 180.0, -0.5, 179.9999999, -180.0])
    keys = geo_cells(lat, lng)
    assert keys.dtype == np.int32
    assert keys.tolist() == [0, 0, 90 * 360 + 180, 179 * 360 + 359, 179 * 360 + 359, 90 * 360 + 179, 90 * 360 + 359,
                             90 * 360]  # fmt: skip


FILTERS = [
    GeoFilter(lat=45.0, lng=10.0, radius_km=50.0),
    GeoFilter(lat=45.0, lng=10.0, radius_km=1000.0),
    GeoFilter(lat=-10.0, lng=179.8, radius_km=300.0),  # crosses the antimeridian
    GeoFilter(lat=88.0, lng=0.0, radius_km=500.0),  # reaches over the pole
    GeoFilter(lat=0.0, lng=0.0, radius_km=19_000.0),  # nearly the whole Earth
    GeoFilter(lat=-89.5, lng=-179.9, radius_km=40.0),  # holds the south pole
    GeoFilter(lat=70.0, lng=-179.5, radius_km=2500.0),  # wide at high latitude, across the antimeridian
    GeoFilter(lat=12.0, lng=0.0, radius_km=0.05),  # 50 m, on a row and column edge
    GeoFilter(bbox=(170.0, -5.0, -170.0, 5.0)),  # box across the antimeridian
    GeoFilter(bbox=(-180.0, -90.0, 180.0, 90.0)),
    GeoFilter(bbox=(3.0, 3.0, 3.0, 3.0)),  # a point
]


@pytest.mark.parametrize("geo", FILTERS, ids=range(len(FILTERS)))
def test_cover_never_misses_an_accepted_point(geo):
    rng = np.random.default_rng(0)
    lat = np.concatenate([rng.uniform(-90, 90, 200_000), np.round(rng.uniform(-90, 90, 20_000))])
    lng = np.concatenate([rng.uniform(-180, 180, 200_000), np.round(rng.uniform(-180, 180, 20_000))])
    west, south, east, north = filter_bbox(geo)  # plus points on the box's corners and around its centre
    lat = np.r_[lat, south, south, north, north]
    lng = np.r_[lng, west, east, west, east]
    if geo.is_radius:
        lat = np.r_[lat, geo.lat, np.clip(geo.lat + rng.normal(0, 1, 5000), -90, 90)]
        lng = np.r_[lng, geo.lng, ((geo.lng + rng.normal(0, 1, 5000) + 180) % 360) - 180]
    inside = geo.contains(lat, lng)
    assert inside.any()
    covered = _covered(geo_cells(lat, lng), geo)
    assert covered[inside].all()


@pytest.mark.parametrize("geo", FILTERS, ids=range(len(FILTERS)))
def test_ranges_sorted_disjoint_and_within_the_grid(geo):
    lo, hi = cover_ranges(geo)
    assert len(lo) == len(hi) > 0
    assert (lo <= hi).all() and (lo[1:] > hi[:-1] + 1).all()  # sorted, disjoint, merged when touching
    assert lo.min() >= 0 and hi.max() < 180 * 360


def test_cover_is_small_for_a_small_filter():
    lo, hi = cover_ranges(GeoFilter(lat=60.0, lng=25.0, radius_km=50.0))
    assert int((hi - lo + 1).sum()) <= 6  # a handful of grid cells, wherever on the planet


@pytest.mark.parametrize("seed", range(6))
def test_circle_cover_holds_points_on_and_inside_the_circle(seed):
    """Points at exactly the radius (the tightest case for the per-row widths) and inside it are all covered."""
    from vectorgeo.geodesy import destination_points

    rng = np.random.default_rng(seed)
    for _ in range(40):
        centre_lat, centre_lng = float(rng.uniform(-85, 85)), float(rng.uniform(-180, 180))
        radius_km = float(10 ** rng.uniform(-1.5, 3.8))
        geo = GeoFilter(lat=centre_lat, lng=centre_lng, radius_km=radius_km)
        n = 4000
        fraction = np.r_[np.ones(n // 2), rng.uniform(0, 1, n // 2) ** 0.5]
        lat, lng = destination_points(
            np.full(n, centre_lat), np.full(n, centre_lng), rng.uniform(0, 2 * np.pi, n), radius_km * 1000 * fraction
        )
        inside = geo.contains(lat, lng)
        assert inside.sum() > n // 2 - 100
        assert _covered(geo_cells(lat, lng), geo)[inside].all(), geo


def test_circle_cover_is_tighter_than_its_box():
    geo = GeoFilter(lat=45.0, lng=10.0, radius_km=1000.0)
    lo, hi = cover_ranges(geo)
    circle_cells = int((hi - lo + 1).sum())
    west, south, east, north = filter_bbox(geo)
    box_cells = (int(north + 90) - int(south + 90) + 1) * (int(east + 180) - int(west + 180) + 1)
    assert circle_cells < 0.9 * box_cells


ARROWHEAD = ((5.0, 50.0), (15.0, 38.0), (25.0, 50.0), (15.0, 46.0))  # concave: the notch at (15, 46)


def test_polygon_contains_even_odd_and_its_cover():
    geo = GeoFilter(polygon=(*ARROWHEAD, ARROWHEAD[0]))  # a closed ring is accepted too
    assert geo.polygon == ARROWHEAD and geo.is_polygon and not geo.is_radius
    lat = np.array([44.0, 47.0, 49.0, 44.0, 37.0, 44.0])
    lng = np.array([15.0, 15.0, 6.0, 10.0, 15.0, 30.0])
    #             centre  notch  tip   left wing  below  outside east
    assert geo.contains(lat, lng).tolist() == [True, False, True, True, False, False]
    assert filter_bbox(geo) == (5.0, 38.0, 25.0, 50.0)
    rng = np.random.default_rng(3)
    lat, lng = rng.uniform(30, 60, 50_000), rng.uniform(0, 30, 50_000)
    inside = geo.contains(lat, lng)
    assert inside.any() and _covered(geo_cells(lat, lng), geo)[inside].all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"polygon": ((0, 0), (1, 1))}, "3 to 500 vertices"),
        ({"polygon": ((0, 0), (1, 1), (2, 2))}, "cross or touch"),  # no area: its edges fold back
        ({"polygon": ((0, 0), (1, 1), (1, 0), (0, 1))}, "cross or touch"),  # a bowtie
        ({"polygon": ((0, 0), (2, 0), (2, 2), (1, 0), (0, 2))}, "cross or touch"),  # a vertex on an edge
        ({"polygon": ((0, 0), (1, 0), (1, 0), (1, 1))}, "repeats vertex 1"),
        ({"polygon": ((170, 0), (-170, 0), (-170, 5))}, "more than 180 degrees of longitude"),
        ({"polygon": ((0, 0), (1, 95), (2, 0))}, "lat in -90..90"),
        ({"polygon": ((0, 0), (1, float("nan")), (2, 0))}, "finite"),
        ({"polygon": "not a ring"}, "pairs"),
        ({"polygon": ((0, 0, 0), (1, 1, 1), (2, 0, 0))}, "pairs"),
        ({"polygon": ((0, 0), (1, 1), (2, 0)), "bbox": (0, 0, 1, 1)}, "not several"),
        ({"polygon": ((0, 0), (1, 1), (2, 0)), "lat": 1.0, "lng": 1.0, "radius_km": 5.0}, "not several"),
    ],
)
def test_bad_polygons_get_one_clear_error(kwargs, message):
    from vectorgeo.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match=message):
        GeoFilter(**kwargs)
