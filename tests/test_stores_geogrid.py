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
