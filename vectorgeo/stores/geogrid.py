"""A 1-degree latitude/longitude grid: the spatial key the stores index geographic filters by.

Every row gets ``geo_cell = row * 360 + col`` with ``row = floor(lat + 90)`` and
``col = floor(lng + 180)`` (clamped to 0..179 and 0..359, so the poles and 180°
fall in the last cell). A filter is first narrowed to the grid cells its
bounding box touches — a few contiguous key ranges, one per grid row — and the
exact test (great-circle distance or box edges) then runs on those rows only.
The key is plain arithmetic, so PostgreSQL can compute it as a generated column
with the same IEEE double operations and the covering never misses a row. It
needs no PostGIS and scales to a planet: a 50 km query touches a handful of
grid cells wherever it is.
"""

from __future__ import annotations

import math

import numpy as np

from vectorgeo.geodesy import EARTH_RADIUS_M
from vectorgeo.stores.base import GeoFilter

__all__ = ["GEO_CELL_SQL", "cover_ranges", "filter_bbox", "geo_cells"]

_ROWS, _COLS = 180, 360
_BBOX_MARGIN_DEG = 1e-6  # a radius's box is padded; the exact haversine decides

GEO_CELL_SQL = (
    "(least(179, greatest(0, floor(lat + 90)))::integer * 360 + least(359, greatest(0, floor(lng + 180)))::integer)"
)
"""The same key as :func:`geo_cells`, as a PostgreSQL expression over columns ``lat`` and ``lng``."""


def geo_cells(lat: np.ndarray, lng: np.ndarray) -> np.ndarray:
    """The grid key (int32) of each point; degrees in, the same values PostgreSQL's :data:`GEO_CELL_SQL` gives."""
    row = np.clip(np.floor(np.asarray(lat, dtype=np.float64) + 90.0), 0, _ROWS - 1).astype(np.int32)
    col = np.clip(np.floor(np.asarray(lng, dtype=np.float64) + 180.0), 0, _COLS - 1).astype(np.int32)
    return row * _COLS + col


def filter_bbox(geo: GeoFilter) -> tuple[float, float, float, float]:
    """``(west, south, east, north)`` holding every point ``geo`` accepts; ``west > east`` crosses 180°."""
    if not geo.is_radius:
        return geo.bbox
    delta = geo.radius_km * 1000.0 / EARTH_RADIUS_M
    delta_deg = math.degrees(delta) + _BBOX_MARGIN_DEG
    south, north = geo.lat - delta_deg, geo.lat + delta_deg
    if south <= -90 or north >= 90:
        return -180.0, max(south, -90.0), 180.0, min(north, 90.0)
    ratio = math.sin(delta) / math.cos(math.radians(geo.lat))
    if ratio >= 1:
        return -180.0, south, 180.0, north
    half = math.degrees(math.asin(ratio)) + _BBOX_MARGIN_DEG
    if half >= 180:
        return -180.0, south, 180.0, north
    west, east = geo.lng - half, geo.lng + half
    if west < -180:
        west += 360.0
    if east > 180:
        east -= 360.0
    return west, south, east, north


def cover_ranges(geo: GeoFilter) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive key ranges ``(lo, hi)`` whose grid cells hold every point ``geo`` accepts.

    One or two ranges per grid row of the filter's box; rows spanning all
    longitudes merge into one range. Sorted and disjoint.
    """
    west, south, east, north = filter_bbox(geo)
    row_lo, row_hi = _clip_index(south, 90.0, _ROWS), _clip_index(north, 90.0, _ROWS)
    col_lo, col_hi = _clip_index(west, 180.0, _COLS), _clip_index(east, 180.0, _COLS)
    # across the antimeridian: from -180 to east, and from west to 180
    spans = [(col_lo, col_hi)] if west <= east else [(0, col_hi), (col_lo, _COLS - 1)]
    lo, hi = [], []
    for row in range(row_lo, row_hi + 1):
        for a, b in spans:
            start, end = row * _COLS + a, row * _COLS + b
            if lo and start == hi[-1] + 1:
                hi[-1] = end  # contiguous with the previous range (whole rows): merge
            else:
                lo.append(start)
                hi.append(end)
    return np.asarray(lo, dtype=np.int32), np.asarray(hi, dtype=np.int32)


def _clip_index(value: float, offset: float, n: int) -> int:
    return int(min(n - 1, max(0, math.floor(value + offset))))
