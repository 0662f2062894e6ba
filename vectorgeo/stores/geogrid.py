"""A 1-degree latitude/longitude grid: the spatial key the stores index geographic filters by.

Every row gets ``geo_cell = row * 360 + col`` with ``row = floor(lat + 90)`` and
``col = floor(lng + 180)`` (clamped to 0..179 and 0..359, so the poles and 180°
fall in the last cell). A filter is first narrowed to the grid cells it can
touch — a few contiguous key ranges, one or two per grid row (a box or
polygon: its bounding box; a circle: per row, the longitudes it reaches in
that row) — and the exact test (great-circle distance, box edges or polygon)
then runs on those rows only.
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
    if geo.is_polygon:
        lng, lat = np.asarray(geo.polygon).T
        return float(lng.min()), float(lat.min()), float(lng.max()), float(lat.max())
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

    One or two ranges per grid row; rows spanning all longitudes merge into
    one range. Sorted and disjoint. A box covers the same columns in every
    row; a circle covers, in each row, only the columns its own latitude band
    of the circle reaches (a fifth fewer cells than its bounding box at
    1,000 km).
    """
    west, south, east, north = filter_bbox(geo)
    row_lo, row_hi = _clip_index(south, 90.0, _ROWS), _clip_index(north, 90.0, _ROWS)
    col_lo, col_hi = _clip_index(west, 180.0, _COLS), _clip_index(east, 180.0, _COLS)
    # across the antimeridian: from -180 to east, and from west to 180
    box_spans = [(col_lo, col_hi)] if west <= east else [(0, col_hi), (col_lo, _COLS - 1)]
    full_width = west == -180.0 and east == 180.0
    lo, hi = [], []
    for row in range(row_lo, row_hi + 1):
        spans = box_spans if full_width or not geo.is_radius else _circle_row_spans(geo, row)
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


_ROW_MARGIN_DEG = 1e-5  # covers acos's rounding where a row just touches the circle


def _circle_row_spans(geo: GeoFilter, row: int) -> list[tuple[int, int]]:
    """Column spans of grid row ``row`` holding every point of a radius filter whose cap misses both poles.

    On a parallel at latitude p the circle spans ``lng ± w`` with, by the haversine formula,
    ``sin²(w/2) = (sin²(d/2) - sin²((p - p0)/2)) / (cos p0 cos p)`` (this form keeps its precision
    for centimetre radii next to a pole, where the cosine form loses it). The half-width grows up to
    the latitude ``asin(sin p0 / cos d)`` and shrinks after it, so its largest value over the row's
    band is at that latitude clamped into the band.
    """
    delta = geo.radius_km * 1000.0 / EARTH_RADIUS_M
    p0 = math.radians(geo.lat)
    band_lo = max(math.radians(row - 90.0), p0 - delta)
    band_hi = min(math.radians(row - 89.0), p0 + delta)
    widest = math.asin(max(-1.0, min(1.0, math.sin(p0) / math.cos(delta))))
    p = min(max(widest, band_lo), band_hi) if band_lo <= band_hi else (band_lo + band_hi) / 2
    hav = (math.sin(delta / 2) ** 2 - math.sin((p - p0) / 2) ** 2) / (math.cos(p0) * math.cos(p))
    half_rad = 2 * math.asin(math.sqrt(max(0.0, min(1.0, hav))))
    half = math.degrees(half_rad) * (1 + 1e-9) + _ROW_MARGIN_DEG
    first = math.floor(geo.lng - half + 180.0)
    last = math.floor(geo.lng + half + 180.0)
    if last - first >= _COLS - 1:
        return [(0, _COLS - 1)]
    if first < 0:  # wraps west over the antimeridian
        return [(0, last), (first + _COLS, _COLS - 1)]
    if last > _COLS - 1:  # wraps east
        return [(0, last - _COLS), (first, _COLS - 1)]
    return [(first, last)]
