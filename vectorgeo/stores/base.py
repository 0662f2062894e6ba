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

__all__ = ["GeoFilter", "Match", "VectorStore"]


@dataclass(frozen=True)
class GeoFilter:
    """Where matches may lie: within ``radius_km`` of a point, or inside a box.

    Give either ``lat``, ``lng`` and ``radius_km`` (great-circle distance from
    the point to the cell centre, on a sphere of radius
    :data:`vectorgeo.geodesy.EARTH_RADIUS_M`), or ``bbox`` as
    ``(west, south, east, north)`` degrees, edges included; ``west > east``
    means the box crosses the antimeridian.
    """

    lat: float | None = None
    lng: float | None = None
    radius_km: float | None = None
    bbox: tuple[float, float, float, float] | None = None

    def __post_init__(self) -> None:
        radius = (self.lat, self.lng, self.radius_km)
        if self.bbox is None:
            if any(v is None for v in radius):
                raise InvalidInputError("a geographic filter needs lat, lng and radius_km, or a bbox")
            if not (-90 <= self.lat <= 90 and -180 <= self.lng <= 180):
                raise InvalidInputError(f"filter centre must be lat -90..90, lng -180..180, got {self.lat}, {self.lng}")
            if not (math.isfinite(self.radius_km) and 0 < self.radius_km <= HALF_CIRCUMFERENCE_KM):
                raise InvalidInputError(
                    f"radius_km must be > 0 and at most half the Earth's circumference, got {self.radius_km}"
                )
        else:
            if any(v is not None for v in radius):
                raise InvalidInputError("give either a radius filter or a bbox, not both")
            west, south, east, north = self.bbox
            if not (-90 <= south <= north <= 90 and -180 <= west <= 180 and -180 <= east <= 180):
                raise InvalidInputError(
                    f"bbox must be west,south,east,north with -90 <= south <= north <= 90 and longitudes in "
                    f"-180..180, got {self.bbox}"
                )

    @property
    def is_radius(self) -> bool:
        """True for a radius filter, False for a bbox."""
        return self.bbox is None

    def contains(self, lat: np.ndarray, lng: np.ndarray) -> np.ndarray:
        """The reference semantics every adapter must reproduce (bool per point)."""
        lat, lng = np.asarray(lat, dtype=np.float64), np.asarray(lng, dtype=np.float64)
        if self.is_radius:
            return haversine_m(self.lat, self.lng, lat, lng) <= self.radius_km * 1000.0
        west, south, east, north = self.bbox
        in_lat = (lat >= south) & (lat <= north)
        in_lng = (lng >= west) & (lng <= east) if west <= east else (lng >= west) | (lng <= east)
        return in_lat & in_lng


@dataclass(frozen=True)
class Match:
    """One search result: a cell, its cosine similarity to the query, its centre."""

    h3: int
    score: float
    lat: float
    lng: float


@runtime_checkable
class VectorStore(Protocol):
    """What every store adapter offers. Vectors are float32 unit vectors."""

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

    def count(self) -> int:
        """Rows stored."""

    def close(self) -> None:
        """Release connections, files or servers."""
