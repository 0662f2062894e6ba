"""One small interface for every vector store, and the geographic filter they share.

Adapters (Qdrant, PostgreSQL + pgvector, FAISS) implement :class:`VectorStore`;
the same calls run against each and must agree. Scores are cosine
similarities of unit vectors (1 = same direction) on every store; cell ids
are H3 uint64 integers end to end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from vectorgeo.errors import InvalidInputError
from vectorgeo.geodesy import HALF_CIRCUMFERENCE_KM, haversine_m

__all__ = ["MAX_POLYGON_VERTICES", "GeoFilter", "Match", "VectorStore", "cell_ids", "in_request_order"]


MAX_POLYGON_VERTICES = 500


@dataclass(frozen=True)
class GeoFilter:
    """Where matches may lie: within ``radius_km`` of a point, inside a box, or inside a polygon.

    Give one of:

    * ``lat``, ``lng`` and ``radius_km``: great-circle distance from the point
      to the cell centre, on a sphere of radius :data:`vectorgeo.geodesy.EARTH_RADIUS_M`;
    * ``bbox`` as ``(west, south, east, north)`` degrees, edges included;
      ``west > east`` means the box crosses the antimeridian;
    * ``polygon`` as a ring of ``(lng, lat)`` vertices (GeoJSON order; closing
      it is optional), tested in the plane of longitude and latitude, as Qdrant
      and PostgreSQL do. The ring must be simple (no edges crossing or
      touching: stores count a self-crossing ring's loops differently), and no
      edge may cross the antimeridian (split such a polygon in two). A point
      exactly on an edge may fall either way, and stores may differ there.
    """

    lat: float | None = None
    lng: float | None = None
    radius_km: float | None = None
    bbox: tuple[float, float, float, float] | None = None
    polygon: tuple[tuple[float, float], ...] | None = None

    def __post_init__(self) -> None:
        radius = (self.lat, self.lng, self.radius_km)
        given = [self.bbox is not None, self.polygon is not None, any(v is not None for v in radius)]
        if sum(given) > 1:
            raise InvalidInputError("give one geographic filter: a radius, a bbox or a polygon, not several")
        if self.polygon is not None:
            object.__setattr__(self, "polygon", _check_polygon(self.polygon))
        elif self.bbox is None:
            if any(v is None for v in radius):
                raise InvalidInputError("a geographic filter needs lat, lng and radius_km, a bbox, or a polygon")
            if not (-90 <= self.lat <= 90 and -180 <= self.lng <= 180):
                raise InvalidInputError(f"filter centre must be lat -90..90, lng -180..180, got {self.lat}, {self.lng}")
            if not (math.isfinite(self.radius_km) and 0 < self.radius_km <= HALF_CIRCUMFERENCE_KM):
                raise InvalidInputError(
                    f"radius_km must be > 0 and at most half the Earth's circumference, got {self.radius_km}"
                )
        else:
            west, south, east, north = self.bbox
            if not (-90 <= south <= north <= 90 and -180 <= west <= 180 and -180 <= east <= 180):
                raise InvalidInputError(
                    f"bbox must be west,south,east,north with -90 <= south <= north <= 90 and longitudes in "
                    f"-180..180, got {self.bbox}"
                )

    @property
    def is_radius(self) -> bool:
        """True for a radius filter."""
        return self.radius_km is not None

    @property
    def is_polygon(self) -> bool:
        """True for a polygon filter."""
        return self.polygon is not None

    def contains(self, lat: np.ndarray, lng: np.ndarray) -> np.ndarray:
        """The reference semantics every adapter must reproduce (bool per point)."""
        lat, lng = np.asarray(lat, dtype=np.float64), np.asarray(lng, dtype=np.float64)
        if self.is_radius:
            return haversine_m(self.lat, self.lng, lat, lng) <= self.radius_km * 1000.0
        if self.is_polygon:
            return _in_polygon(np.asarray(self.polygon, dtype=np.float64), lng, lat)
        west, south, east, north = self.bbox
        in_lat = (lat >= south) & (lat <= north)
        in_lng = (lng >= west) & (lng <= east) if west <= east else (lng >= west) | (lng <= east)
        return in_lat & in_lng


def _check_polygon(polygon: object) -> tuple[tuple[float, float], ...]:
    """The ring as a tuple of ``(lng, lat)`` float pairs, unclosed; InvalidInputError naming what is wrong."""
    try:
        ring = np.asarray(polygon, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidInputError("polygon must be a list of [lng, lat] pairs") from None
    if ring.ndim != 2 or ring.shape[1] != 2:
        raise InvalidInputError(f"polygon must be a list of [lng, lat] pairs, got an array of shape {ring.shape}")
    if len(ring) > 1 and (ring[0] == ring[-1]).all():
        ring = ring[:-1]  # closed ring: drop the repeated first vertex
    if not 3 <= len(ring) <= MAX_POLYGON_VERTICES:
        raise InvalidInputError(f"polygon needs 3 to {MAX_POLYGON_VERTICES} vertices, got {len(ring)}")
    if not np.isfinite(ring).all():
        raise InvalidInputError("polygon vertices must be finite numbers")
    if not ((np.abs(ring[:, 0]) <= 180).all() and (np.abs(ring[:, 1]) <= 90).all()):
        raise InvalidInputError("polygon vertices must be [lng, lat] with lng in -180..180 and lat in -90..90")
    if (np.abs(np.diff(np.r_[ring[:, 0], ring[:1, 0]])) > 180).any():
        raise InvalidInputError(
            "a polygon edge spans more than 180 degrees of longitude: add vertices along it, or, if it crosses "
            "the antimeridian, split the polygon there into two"
        )
    repeated = np.flatnonzero((ring == np.roll(ring, -1, axis=0)).all(axis=1))
    if repeated.size:
        raise InvalidInputError(f"polygon repeats vertex {int(repeated[0])} right after itself; drop the copy")
    if _edges_touch(ring):
        raise InvalidInputError(
            "polygon edges cross or touch each other; give a simple ring (stores disagree on what such a ring holds)"
        )
    return tuple((float(x), float(y)) for x, y in ring)


def _edges_touch(ring: np.ndarray) -> bool:
    """True when two edges that are not neighbours meet, or two neighbours fold back over each other."""
    n = len(ring)
    a, b = ring, np.roll(ring, -1, axis=0)
    p, q = a[:, None, :], b[:, None, :]  # edge i
    r, t = a[None, :, :], b[None, :, :]  # edge j

    def orient(u, v, w):
        return np.sign(
            (v[..., 0] - u[..., 0]) * (w[..., 1] - u[..., 1]) - (v[..., 1] - u[..., 1]) * (w[..., 0] - u[..., 0])
        )

    def within(u, v, w):  # w inside the bounding box of segment uv (with orient == 0: on the segment)
        lo, hi = np.minimum(u, v), np.maximum(u, v)
        return ((lo <= w) & (w <= hi)).all(axis=-1)

    o1, o2, o3, o4 = orient(p, q, r), orient(p, q, t), orient(r, t, p), orient(r, t, q)
    cross = (o1 * o2 < 0) & (o3 * o4 < 0)
    touch = ((o1 == 0) & within(p, q, r)) | ((o2 == 0) & within(p, q, t))
    touch |= ((o3 == 0) & within(r, t, p)) | ((o4 == 0) & within(r, t, q))
    i, j = np.triu_indices(n, k=1)
    neighbours = (j == i + 1) | ((i == 0) & (j == n - 1))
    if ((cross | touch)[i, j] & ~neighbours).any():
        return True
    # neighbours share a vertex; they fold back when the far end of one lies on the other
    k = np.arange(n)
    nxt = (k + 1) % n
    far_on_next = (orient(a[nxt], b[nxt], a[k]) == 0) & within(a[nxt], b[nxt], a[k])  # edge k's start on k+1
    far_on_this = (orient(a[k], b[k], b[nxt]) == 0) & within(a[k], b[k], b[nxt])  # edge k+1's end on edge k
    return bool((far_on_next | far_on_this).any())


def _in_polygon(ring: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Even-odd rule (the same as winding for the simple rings GeoFilter accepts): a ray from each point
    towards +x crosses the ring's edges an odd number of times."""
    inside = np.zeros(np.broadcast(x, y).shape, dtype=bool)
    x1, y1 = ring[:, 0], ring[:, 1]
    x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
    for ax, ay, bx, by in zip(x1.tolist(), y1.tolist(), x2.tolist(), y2.tolist(), strict=True):
        if ay == by:
            continue  # horizontal edges never cross a horizontal ray
        spans = (ay > y) != (by > y)
        crossing_x = ax + (y - ay) * (bx - ax) / (by - ay)
        inside ^= spans & (x < crossing_x)
    return inside


@dataclass(frozen=True)
class Match:
    """One search result: a cell, its cosine similarity to the query, its centre."""

    h3: int
    score: float
    lat: float
    lng: float


@runtime_checkable
class VectorStore(Protocol):
    """What every store adapter offers. Vectors are float32 unit vectors.

    An adapter may also set a class attribute ``thread_safe = True`` when ``search``, ``fetch`` and ``count``
    may run from several threads at once (a pool of connections, a read-only memory-mapped index); the
    search service then stops serialising its calls. Without it (the default) they run one at a time.
    It is not a protocol member, so adapters without it still satisfy ``isinstance(store, VectorStore)``.
    """

    def create(self, dim: int, *, wipe: bool = False) -> None:
        """Make the collection/table for ``dim``-long vectors; ``wipe`` drops existing data first."""

    def upsert(self, h3: np.ndarray, lat: np.ndarray, lng: np.ndarray, vectors: np.ndarray) -> int:
        """Insert or replace rows keyed by H3 uint64 id (idempotent); returns rows written."""

    def finish_load(self) -> None:
        """Build or restore indexes after a bulk load (no-op where nothing is deferred)."""

    def search(
        self, vector: np.ndarray, k: int, *, geo: GeoFilter | None = None, exclude: tuple[int, ...] = ()
    ) -> list[Match]:
        """The ``k`` most similar cells (best first), optionally inside ``geo``, never those in ``exclude``.

        Returns ``k`` matches whenever at least ``k`` cells satisfy the filter.
        """

    def fetch(self, h3: int) -> tuple[np.ndarray, float, float]:
        """A cell's vector and centre ``(vector, lat, lng)``; raises ``NotFoundError`` if absent."""

    def fetch_many(self, h3: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Vectors and centres of many cells at once: ``(found_h3, vectors, lat, lng)``.

        Args:
            h3: H3 cell ids (uint64, or integers that fit it), any number: adapters split them into
                requests of a few thousand ids themselves.

        Returns:
            The ids present in the store (uint64, ``(m,)``), in the order of their first occurrence in
            ``h3`` (an id asked twice comes back once; absent ids are left out silently), their float32
            vectors ``(m, dim)`` and centres (float64 degrees, ``(m,)`` each). Nothing found: ``m = 0``.

        Raises:
            InvalidInputError: ids that are not non-negative integers.
        """

    def count(self) -> int:
        """Rows stored."""

    def close(self) -> None:
        """Release connections, files or servers."""


def cell_ids(h3: object) -> np.ndarray:
    """Cell ids as a 1-D uint64 array (the input of :meth:`VectorStore.fetch_many`).

    Raises:
        InvalidInputError: not integers, or integers outside 0..2**64-1.
    """
    if isinstance(h3, np.ndarray | np.generic):
        arr = np.asarray(h3)
    else:  # Python ints: np.asarray would turn a mix of ids above and below 2**63 into float64
        arr = np.array(list(h3) if isinstance(h3, list | tuple | range) else [h3], dtype=object)
    if arr.dtype.kind == "O" or (arr.size == 0 and arr.dtype.kind not in "iu"):
        if any(isinstance(v, bool | float | np.floating | np.bool_) for v in arr.ravel()):
            raise InvalidInputError("cell ids must be integers (uint64 H3 cells), not booleans or floats")
        try:
            values = [int(v) for v in arr.ravel()]
        except (TypeError, ValueError):
            raise InvalidInputError("cell ids must be integers (uint64 H3 cells)") from None
        if any(not 0 <= v < 2**64 for v in values):
            raise InvalidInputError("cell ids must be uint64 H3 cells, in 0..2**64-1")
        return np.array(values, dtype=np.uint64)
    if arr.dtype.kind == "i" and arr.size and arr.min() < 0:
        raise InvalidInputError(f"cell ids must be non-negative uint64 H3 cells, got {int(arr.min())}")
    if arr.dtype.kind not in "iu":
        raise InvalidInputError(f"cell ids must be integers (uint64 H3 cells), got dtype {arr.dtype}")
    return arr.astype(np.uint64).reshape(-1)


def in_request_order(
    requested: np.ndarray, found: np.ndarray, vectors: np.ndarray, lat: np.ndarray, lng: np.ndarray, dim: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What a store found, put in the order of each id's first occurrence in ``requested``, once each.

    Args:
        requested: The uint64 ids asked for.
        found: The ids the store answered (each of them in ``requested``), in any order, repeats allowed.
        vectors, lat, lng: Their rows.
        dim: Vector length (the shape of an empty answer).

    Returns:
        ``(found_h3 uint64, vectors float32 (m, dim), lat float64, lng float64)``, as ``fetch_many`` answers.
    """
    found = np.asarray(found, dtype=np.uint64).reshape(-1)
    if not len(found):
        return np.empty(0, np.uint64), np.empty((0, dim), np.float32), np.empty(0), np.empty(0)
    uniq, first = np.unique(requested, return_index=True)
    rank = first[np.searchsorted(uniq, found)]  # where each found id first appears in the request
    _, keep = np.unique(rank, return_index=True)  # sorted by that position; a repeated answer once
    return (
        found[keep],
        np.ascontiguousarray(np.asarray(vectors, dtype=np.float32).reshape(len(found), -1)[keep]),
        np.asarray(lat, dtype=np.float64)[keep],
        np.asarray(lng, dtype=np.float64)[keep],
    )
