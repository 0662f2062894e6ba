"""The search service behind every entry point: resolve a place, query a store, shape GeoJSON.

One :class:`SearchService` serves the Lambda handler and the local server alike. It opens each
store on first use and keeps it; it reads the search sidecars (score calibration, per-cell
attributes; see :mod:`vectorgeo.search_index`) once. Without sidecars it still answers plain
searches, with ``percentile`` and ``explanation`` null.

Query forms (:class:`Query`): a point (the H3 cell at the index resolution that contains it), one
or several cells (their mean vector, renormalised), positive and negative cells
(``normalise(mean(positive) - alpha * mean(negative))``, ``alpha`` = 0.5 by default: the query
leans away from the negatives without forgetting the positives), or an explicit vector.

Post-filters (``min_score``, ``min_separation_km``, ``exclude_within_km``) run on candidates from
the store, which is asked for ``k`` of them (``4 k`` with a spatial post-filter: separation or
exclusion) and then 4 times more each round until ``k`` pass,
the store runs dry, or :data:`MAX_CANDIDATES` were examined; past that cap fewer than ``k``
results come back (``n_candidates`` in the answer says how many were examined).

Imports stay light (numpy, h3, the store protocol): no TensorFlow, Keras or pyarrow, so the
Lambda zip holds none of them.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import h3.api.basic_int as h3i
import numpy as np

from vectorgeo.artifacts import collection_name, index_prefix, search_prefix
from vectorgeo.classifiers import DEFAULT_CLASSIFIER
from vectorgeo.errors import (
    BucketKeyNotFoundError,
    InvalidInputError,
    NotFoundError,
    StoreBusyError,
    StoreUnavailableError,
    VectorGeoError,
)
from vectorgeo.geodesy import HALF_CIRCUMFERENCE_KM, haversine_m
from vectorgeo.search_index import SIDECAR_FILES, SearchSidecars
from vectorgeo.stores import STORE_KINDS, GeoFilter, Match, VectorStore, open_store
from vectorgeo.transfer import Bucket

__all__ = [
    "DEFAULT_ALPHA",
    "MAX_CANDIDATES",
    "MAX_K",
    "MAX_QUERY_CELLS",
    "Query",
    "SearchOptions",
    "SearchService",
    "cell_from_string",
    "cell_rings",
    "collection_name",
    "open_search_service",
    "quoted",
]

logger = logging.getLogger(__name__)

MAX_K = 1000
"""Most results one search returns."""
MAX_CANDIDATES = 10_000
"""Most candidates one search takes from the store for its post-filters."""
MAX_QUERY_CELLS = 100
"""Most positive (and most negative) cells in one query."""
MAX_VECTOR_DIM = 4096
DEFAULT_ALPHA = 0.5
"""Weight of the negative cells' mean in ``mean(positive) - alpha * mean(negative)``."""
TOP_CLASSES = 5
"""Classes listed in each result's explanation."""
_OVERFETCH = 4
_CHUNK = 1024  # matches tested against every query cell at once by the exclusion filter


def cell_from_string(text: str, what: str = "h3") -> int:
    """An H3 cell id from its hex string (``8728f5990ffffff``), as the uint64 integer.

    Raises:
        InvalidInputError: not the string of a valid H3 cell.
    """
    cell = 0
    if isinstance(text, str) and re.fullmatch(r"[0-9a-fA-F]{1,16}", text.strip()):
        cell = int(text.strip(), 16)
    if not cell or not h3i.is_valid_cell(cell):
        raise InvalidInputError(f"{what} must be an H3 cell id string like '8728f5990ffffff', got {quoted(text)}")
    return cell


def quoted(value: object, limit: int = 60) -> str:
    """``repr`` of a client's value for an error message, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _finite(value: float, what: str, lo: float, hi: float, unit: str = "") -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise InvalidInputError(f"{what} must be a number, got {quoted(value)}")
    try:
        value = float(value)
    except OverflowError:  # an int too large for a float
        raise InvalidInputError(f"{what} must be between {lo:g} and {hi:g}{unit}, got {quoted(value)}") from None
    if not (math.isfinite(value) and lo <= value <= hi):
        raise InvalidInputError(f"{what} must be between {lo:g} and {hi:g}{unit}, got {quoted(value)}")
    return value


@dataclass(frozen=True)
class Query:
    """What to look for: exactly one of a point, cells (with optional negatives), or a vector.

    Attributes:
        lat: Latitude of a point, degrees WGS84 (with ``lng``).
        lng: Longitude of a point, degrees WGS84.
        cells: H3 cells (uint64) at the index resolution; their mean vector is the query.
        negative: H3 cells to lean away from (needs ``cells``).
        vector: An explicit embedding (any length-``dim`` non-zero finite vector; normalised here).
        alpha: Weight of the negatives' mean, 0..1.
    """

    lat: float | None = None
    lng: float | None = None
    cells: tuple[int, ...] = ()
    negative: tuple[int, ...] = ()
    vector: tuple[float, ...] | None = None
    alpha: float = DEFAULT_ALPHA

    def __post_init__(self) -> None:
        point = self.lat is not None or self.lng is not None
        if point + bool(self.cells) + (self.vector is not None) != 1:
            raise InvalidInputError("give exactly one query: lat and lng, H3 cell(s), or a vector")
        if point:
            if self.lat is None or self.lng is None:
                raise InvalidInputError("a point query needs both lat and lng")
            _finite(self.lat, "lat", -90, 90, " degrees")
            _finite(self.lng, "lng", -180, 180, " degrees")
        for what, cells in (("cells", self.cells), ("negative cells", self.negative)):
            if len(cells) > MAX_QUERY_CELLS:
                raise InvalidInputError(f"at most {MAX_QUERY_CELLS} {what} per query, got {len(cells)}")
            if not all(isinstance(c, int | np.integer) and not isinstance(c, bool) for c in cells):
                raise InvalidInputError(f"{what} must be H3 cell ids (uint64 integers), got {quoted(cells)}")
        if self.negative and not self.cells:
            raise InvalidInputError("negative cells need positive cells to lean away from")
        _finite(self.alpha, "alpha", 0, 1)
        if self.vector is not None:
            if not 1 <= len(self.vector) <= MAX_VECTOR_DIM:
                raise InvalidInputError(f"vector must hold 1..{MAX_VECTOR_DIM} numbers, got {len(self.vector)}")
            v = np.array([_finite(x, "every vector element", -1e30, 1e30) for x in self.vector])
            if not np.any(v):
                raise InvalidInputError("vector is all zeros; cosine similarity needs a direction")


@dataclass(frozen=True)
class SearchOptions:
    """How many results, where, and which to drop.

    Attributes:
        k: Results wanted, 1..:data:`MAX_K`.
        radius_km: Only cells whose centre lies within this great-circle distance of the query centre.
        bbox: Only cells inside ``(west, south, east, north)`` degrees (``west > east`` crosses the antimeridian).
        polygon: Only cells inside this ring of ``(lng, lat)`` vertices (see :class:`GeoFilter`).
        min_score: Only cells at least this cosine-similar to the query (-1..1).
        min_separation_km: No two results closer than this (greedy, best first).
        exclude_within_km: No result closer than this to any query cell.
        include_query: Let the query cells themselves be results.
    """

    k: int = 10
    radius_km: float | None = None
    bbox: tuple[float, float, float, float] | None = None
    polygon: tuple[tuple[float, float], ...] | None = None
    min_score: float | None = None
    min_separation_km: float = 0.0
    exclude_within_km: float = 0.0
    include_query: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int | np.integer) or not 1 <= self.k <= MAX_K:
            raise InvalidInputError(f"k must be an integer between 1 and {MAX_K}, got {quoted(self.k)}")
        if sum(v is not None for v in (self.radius_km, self.bbox, self.polygon)) > 1:
            raise InvalidInputError("give one of radius_km, bbox and polygon, not several")
        if self.radius_km is not None and _finite(self.radius_km, "radius_km", 0, HALF_CIRCUMFERENCE_KM, " km") == 0:
            raise InvalidInputError("radius_km must be greater than 0")
        if self.polygon is not None:
            object.__setattr__(self, "polygon", GeoFilter(polygon=self.polygon).polygon)
        if self.bbox is not None:
            if len(self.bbox) != 4:
                raise InvalidInputError(f"bbox must be 4 numbers west,south,east,north; got {len(self.bbox)}")
            GeoFilter(bbox=tuple(_finite(v, "bbox values", -180, 180, " degrees") for v in self.bbox))
        if self.min_score is not None:
            _finite(self.min_score, "min_score", -1, 1)
        _finite(self.min_separation_km, "min_separation_km", 0, HALF_CIRCUMFERENCE_KM, " km")
        _finite(self.exclude_within_km, "exclude_within_km", 0, HALF_CIRCUMFERENCE_KM, " km")
        if not isinstance(self.include_query, bool):
            raise InvalidInputError(f"include_query must be true or false, got {quoted(self.include_query)}")


_OPTION_NAMES = tuple(f.name for f in fields(SearchOptions) if f.name != "k")
"""The options an answer echoes (``k`` has its own member)."""


@dataclass(frozen=True)
class _Resolved:
    """A query made concrete: its unit vector, its cells and their centres, its centre."""

    vector: np.ndarray
    cells: tuple[int, ...]
    negative: tuple[int, ...]
    cell_lat: np.ndarray
    cell_lng: np.ndarray
    centre: tuple[float, float] | None


class SearchService:
    """Similarity search over one model's embeddings at one resolution, on any of several stores.

    Args:
        stores: Store kind -> a function that opens it (called once, on first use; the store is kept).
        model: Model name (``demo``), reported in answers.
        h3_resolution: Resolution of the indexed cells.
        default_store: Store used when a request names none; default the first of ``stores``.
        sidecars: Calibration and attributes; None answers without percentiles and explanations.
    """

    def __init__(
        self,
        stores: Mapping[str, Callable[[], VectorStore]],
        *,
        model: str,
        h3_resolution: int,
        default_store: str | None = None,
        sidecars: SearchSidecars | None = None,
    ) -> None:
        if not stores:
            raise InvalidInputError("a search service needs at least one store")
        self._openers = dict(stores)
        self.default_store = default_store or next(iter(self._openers))
        if self.default_store not in self._openers:
            raise InvalidInputError(f"default store {self.default_store!r} is not one of {', '.join(self._openers)}")
        self.model = model
        self.h3_resolution = int(h3_resolution)
        self.sidecars = sidecars
        self._open: dict[str, VectorStore] = {}
        # one lock per store kind: held while opening it, and around every call of a store that is not thread-safe
        self._locks = {kind: threading.Lock() for kind in self._openers}

    @property
    def stores(self) -> tuple[str, ...]:
        """The store kinds this service may query."""
        return tuple(self._openers)

    # ------------------------------------------------------------------ public

    def search(self, query: Query, options: SearchOptions | None = None, *, store: str | None = None) -> dict:
        """The cells most similar to ``query``, as a GeoJSON FeatureCollection (best first).

        Raises:
            InvalidInputError: a bad query, option or store name.
            NotFoundError: a query cell is not in the index.
            StoreUnavailableError: the store cannot be reached.
        """
        options = options or SearchOptions()
        kind = self._kind(store)
        resolved = self._resolve(kind, query)
        matches, examined = self._nearest(kind, resolved, options)
        # one vectorised pass per answer over all matches, then plain Python to build the features
        n = len(matches)
        cells = [m.h3 for m in matches]
        scores = np.fromiter((m.score for m in matches), np.float64, n)
        lat = np.fromiter((m.lat for m in matches), np.float64, n)
        lng = np.fromiter((m.lng for m in matches), np.float64, n)
        percentiles = self.sidecars.percentile(scores) if self.sidecars else None
        query_attrs = self._mean_attributes(np.array(resolved.cells, np.uint64)) if resolved.cells else None
        explanations = self._explanations(np.array(cells, np.uint64), query_attrs)
        distances = [None] * n
        if resolved.centre is not None and n:
            distances = np.round(haversine_m(resolved.centre[0], resolved.centre[1], lat, lng) / 1000, 3).tolist()
        rounded_scores = np.round(scores, 6).tolist()
        rounded_percentiles = [None] * n if percentiles is None else np.round(percentiles, 3).tolist()
        features = []
        rings = cell_rings(cells)
        for rank, (cell, la, ln) in enumerate(zip(cells, lat.tolist(), lng.tolist(), strict=True)):
            name = h3i.int_to_str(cell)
            properties = {
                "h3": name,
                "rank": rank + 1,
                "score": rounded_scores[rank],
                "percentile": rounded_percentiles[rank],
                "distance_km": distances[rank],
                "lat": la,
                "lng": ln,
                "explanation": explanations[rank],
            }
            features.append(_feature(name, rings[rank], properties))
        return {
            "type": "FeatureCollection",
            "features": features,
            "query": self._query_member(query, resolved, query_attrs),
            "store": kind,
            "model": self.model,
            "resolution": self.h3_resolution,
            "k": int(options.k),
            "options": {key: getattr(options, key) for key in _OPTION_NAMES},
            "n_candidates": examined,
        }

    def cell(
        self, h3: int | None = None, *, lat: float | None = None, lng: float | None = None, store: str | None = None
    ) -> dict:
        """One cell (by id, or the cell containing a point): its embedding, centre, hexagon and explanation.

        Returns:
            A GeoJSON Feature.

        Raises:
            InvalidInputError: neither or both of ``h3`` and a point, or bad values.
            NotFoundError: the cell is not in the index.
        """
        if (h3 is None) == (lat is None and lng is None):
            raise InvalidInputError("give an h3 cell, or lat and lng")
        query = Query(cells=(h3,)) if h3 is not None else Query(lat=lat, lng=lng)
        kind = self._kind(store)
        resolved = self._resolve(kind, query)
        cell = resolved.cells[0]
        attrs = self._mean_attributes(np.array([cell], np.uint64))
        properties = {
            "h3": h3i.int_to_str(cell),
            "resolution": self.h3_resolution,
            "lat": float(resolved.cell_lat[0]),
            "lng": float(resolved.cell_lng[0]),
            "embedding": [round(float(v), 7) for v in resolved.vector],
            "explanation": None if attrs is None else _explain(*attrs, self.sidecars, top=None),
            "store": kind,
            "model": self.model,
        }
        return _feature(properties["h3"], cell_rings([cell])[0], properties)

    def classify(
        self,
        labels: Mapping[int, str] | None,
        region: GeoFilter,
        *,
        positive: Sequence[int] = (),
        negative: Sequence[int] = (),
        classifier: str = DEFAULT_CLASSIFIER,
        geometry: bool = True,
        store: str | None = None,
    ) -> dict:
        """Train a light classifier on labelled cells and predict every indexed cell of ``region``.

        See :func:`vectorgeo.region_classify.classify_region` (the arguments and the answer); the store is
        read through ``fetch_many`` a chunk at a time, under its lock when it is not thread-safe.

        Raises:
            InvalidInputError: bad labels, a region too large, an unknown classifier or store.
            NotFoundError: a labelled cell is not in the index.
            StoreUnavailableError: the store cannot be reached.
        """
        from vectorgeo.region_classify import classify_region  # it builds on this module's GeoJSON helpers

        kind = self._kind(store)
        return classify_region(
            lambda ids: self._call(kind, lambda vs: vs.fetch_many(ids)),
            labels,
            region,
            h3_resolution=self.h3_resolution,
            positive=positive,
            negative=negative,
            classifier=classifier,
            geometry=geometry,
            model=self.model,
            store=kind,
        )

    def health(self, store: str | None = None) -> dict:
        """Whether a store answers, how many cells it holds, and whether calibration and attributes are loaded.

        Never raises for an unreachable store: ``reachable`` is false and ``error`` says why.

        Raises:
            InvalidInputError: an unknown store name.
        """
        kind = self._kind(store)
        report = {
            "status": "ok",
            "store": kind,
            "reachable": True,
            "count": None,
            "model": self.model,
            "resolution": self.h3_resolution,
            "calibration": bool(self.sidecars and self.sidecars.quantiles is not None),
            "attributes": self.sidecars is not None,
            "stores": list(self.stores),
            "default_store": self.default_store,
        }
        try:
            report["count"] = self._call(kind, lambda vs: vs.count())
        except StoreUnavailableError as exc:
            report.update(status="unavailable", reachable=False, error=str(exc))
        return report

    def close(self) -> None:
        """Close every store opened so far (an embedded PostgreSQL is stopped)."""
        for kind in list(self._open):
            self._drop(kind)

    # ------------------------------------------------------------------ stores

    def _kind(self, store: str | None) -> str:
        kind = self.default_store if store is None else store
        if kind not in self._openers:
            served = ", ".join(self._openers)
            known = f"unknown store {quoted(kind)}" if kind not in STORE_KINDS else f"store {kind!r} is not served here"
            raise InvalidInputError(f"{known}; use one of {served}")
        return kind

    def _store(self, kind: str) -> VectorStore:
        """The open store of this kind, opened now (once, under its lock) if need be.

        Any failure to open is the deployment's, not the request's: a 503, logged in full here.
        """
        vs = self._open.get(kind)
        if vs is not None:
            return vs
        with self._locks[kind]:
            if kind in self._open:  # another thread opened it while this one waited
                return self._open[kind]
            return self._open_store(kind)

    def _open_store(self, kind: str) -> VectorStore:
        vs = None
        try:
            vs = self._openers[kind]()
            vs.count()
        except Exception as exc:
            if vs is not None:
                vs.close()
            logger.warning("cannot open store %s: %r", kind, exc)
            if isinstance(exc, StoreBusyError):  # the store's own reason, with its fix (and no address)
                raise
            if isinstance(exc, NotFoundError):
                raise StoreUnavailableError(
                    f"store {kind!r} holds no index of model {self.model!r} at resolution {self.h3_resolution}; "
                    "run flows/04_upload_flow.py"
                ) from exc
            raise StoreUnavailableError(f"store {kind!r} cannot be reached now; try again later") from exc
        self._open[kind] = vs
        return vs

    def _call(self, kind: str, fn: Callable[[VectorStore], object]):
        """Run ``fn`` on the store; a failure of the store itself (not of the request) is a 503.

        A store that says it is ``thread_safe`` (a pool of connections, read-only FAISS) is called by many
        threads at once; any other is called under its lock, one thread at a time (a connection or an
        engine handle is not shared by two threads at once). The lock covers the store call only:
        resolving, post-filtering and shaping the answer run outside it.
        """
        vs = self._store(kind)
        shared = getattr(vs, "thread_safe", False)
        try:
            if shared:
                return fn(vs)
            with self._locks[kind]:
                return fn(vs)
        except VectorGeoError:
            raise
        except Exception as exc:
            if shared:  # other threads are inside it; it heals itself (the pool replaces dead connections)
                logger.exception("store %s failed to answer", kind)
            else:
                logger.exception("store %s failed; it will be reopened on the next request", kind)
                self._drop(kind, vs)
            raise StoreUnavailableError(f"store {kind!r} failed to answer; try again") from exc

    def _drop(self, kind: str, vs: VectorStore | None = None) -> None:
        """Close the open store of this kind (only if it is still ``vs``: another thread may have reopened it)."""
        with self._locks[kind]:
            current = self._open.get(kind)
            if current is None or (vs is not None and current is not vs):
                return
            del self._open[kind]
            try:
                current.close()
            except Exception:
                logger.exception("closing store %s failed", kind)

    # ----------------------------------------------------------------- queries

    def _resolve(self, kind: str, query: Query) -> _Resolved:
        if query.vector is not None:
            v = np.asarray(query.vector, np.float64)
            dim = self.sidecars.dim if self.sidecars else None
            if dim is not None and len(v) != dim:
                raise InvalidInputError(f"vector must hold {dim} numbers (the embedding length), got {len(v)}")
            empty = np.empty(0)
            v = v / np.abs(v).max()  # first scale to 1: the norm of a tiny vector underflows to zero
            return _Resolved((v / np.linalg.norm(v)).astype(np.float32), (), (), empty, empty, None)
        if query.lat is not None:
            cells = (h3i.latlng_to_cell(query.lat, query.lng, self.h3_resolution),)
        else:
            cells = tuple(dict.fromkeys(int(c) for c in query.cells))
        negative = tuple(dict.fromkeys(int(c) for c in query.negative))
        pos, lat, lng = self._fetch(kind, cells, point=query.lat is not None and (query.lat, query.lng))
        vector = pos.mean(axis=0)
        if negative:
            vector = vector - query.alpha * self._fetch(kind, negative)[0].mean(axis=0)
        norm = float(np.linalg.norm(vector))
        if norm < 1e-6:
            raise InvalidInputError("the query cells cancel out (their mean vector is zero); change the cells")
        return _Resolved((vector / norm).astype(np.float32), cells, negative, lat, lng, _centre(lat, lng))

    def _fetch(self, kind: str, cells: tuple[int, ...], point=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Vectors (float64) and centres of cells; any cell missing from the index is a NotFoundError."""
        vectors, lats, lngs = [], [], []
        for cell in cells:
            if not h3i.is_valid_cell(cell):
                raise InvalidInputError(f"{cell} is not a valid H3 cell id")
            name = h3i.int_to_str(cell)
            if h3i.get_resolution(cell) != self.h3_resolution:
                raise InvalidInputError(
                    f"H3 cell {name} is at resolution {h3i.get_resolution(cell)}; this index holds resolution-"
                    f"{self.h3_resolution} cells"
                )
            try:
                v, la, ln = self._call(kind, lambda vs, c=cell: vs.fetch(c))
            except NotFoundError as exc:
                where = f"the point {point[0]}, {point[1]} (cell {name})" if point else f"H3 cell {name}"
                raise NotFoundError(
                    f"{where} is not in the index of model {self.model!r}: it is sea, or outside the embedded area"
                ) from exc
            vectors.append(np.asarray(v, np.float64))
            lats.append(la)
            lngs.append(ln)
        return np.array(vectors), np.array(lats, np.float64), np.array(lngs, np.float64)

    def _nearest(self, kind: str, q: _Resolved, options: SearchOptions) -> tuple[list[Match], int]:
        """The best ``k`` matches passing every filter, and how many candidates were examined."""
        geo = None
        if options.radius_km is not None:
            if q.centre is None:
                raise InvalidInputError("radius_km needs a place to measure from: query by lat/lng or h3, or use bbox")
            geo = GeoFilter(lat=q.centre[0], lng=q.centre[1], radius_km=float(options.radius_km))
        elif options.bbox is not None:
            geo = GeoFilter(bbox=tuple(float(v) for v in options.bbox))
        elif options.polygon is not None:
            geo = GeoFilter(polygon=options.polygon)
        if options.exclude_within_km and not q.cells:
            raise InvalidInputError("exclude_within_km needs query cells: query by lat/lng or h3, not by a vector")
        exclude = () if options.include_query else q.cells + q.negative
        spatial = options.min_separation_km > 0 or options.exclude_within_km > 0
        fetch = min(options.k * _OVERFETCH, MAX_CANDIDATES) if spatial else options.k
        while True:
            matches = self._call(kind, lambda s, n=fetch: s.search(q.vector, n, geo=geo, exclude=exclude))
            kept = _post_filter(matches, q, options, geo)
            dry = len(matches) < fetch or fetch >= MAX_CANDIDATES
            below = options.min_score is not None and matches and matches[-1].score < options.min_score
            if len(kept) >= options.k or dry or below:
                return kept[: options.k], len(matches)
            fetch = min(fetch * _OVERFETCH, MAX_CANDIDATES)

    # ------------------------------------------------------------ explanations

    def _mean_attributes(self, cells: np.ndarray) -> tuple[np.ndarray, float] | None:
        """Mean class fractions and mean elevation over the cells that have attributes; None if none has."""
        if self.sidecars is None:
            return None
        pos = self.sidecars.positions(cells)
        pos = pos[pos >= 0]
        if not len(pos):
            return None
        rows = np.sort(pos)  # memory-mapped arrays: read the rows in file order
        fractions = np.asarray(self.sidecars.fractions[rows], np.float64)
        elevation = np.asarray(self.sidecars.mean_elevation_m[rows], np.float64)
        if len(rows) == 1:  # the common query: one cell, its own attributes
            return fractions[0], float(elevation[0])
        return fractions.mean(axis=0), float(np.nanmean(elevation)) if np.isfinite(elevation).any() else math.nan

    def _explanations(self, h3: np.ndarray, query_attrs) -> list[dict | None]:
        if self.sidecars is None or not len(h3):
            return [None] * len(h3)
        pos = self.sidecars.positions(h3)
        found = np.flatnonzero(pos >= 0)
        rows = np.sort(pos[found])  # memory-mapped arrays: read the rows once, in file order
        fractions = np.asarray(self.sidecars.fractions[rows], np.float64)
        elevation = np.asarray(self.sidecars.mean_elevation_m[rows], np.float64)
        back = np.searchsorted(rows, pos[found])
        explained = _explain_rows(fractions[back], elevation[back], self.sidecars, top=TOP_CLASSES, query=query_attrs)
        out: list[dict | None] = [None] * len(h3)
        for i, explanation in zip(found.tolist(), explained, strict=True):
            out[i] = explanation
        return out

    def _query_member(self, query: Query, q: _Resolved, attrs) -> dict:
        polygons = [[ring] for ring in cell_rings(q.cells)]
        return {
            "cells": [h3i.int_to_str(c) for c in q.cells],
            "negative": [h3i.int_to_str(c) for c in q.negative],
            "alpha": query.alpha if q.negative else None,
            "point": None if query.lat is None else {"lat": query.lat, "lng": query.lng},
            "center": None if q.centre is None else {"lat": q.centre[0], "lng": q.centre[1]},
            "vector": query.vector is not None,
            "geometry": {"type": "MultiPolygon", "coordinates": polygons} if q.cells else None,
            "explanation": None if attrs is None else _explain(*attrs, self.sidecars, top=TOP_CLASSES),
        }


def _post_filter(matches: list[Match], q: _Resolved, options: SearchOptions, geo: GeoFilter | None) -> list[Match]:
    """Greedy, best first: keep matches above ``min_score``, in ``geo``, far enough from the query and each other.

    The tests of each match alone run on all matches at once; only the separation, which depends on the
    matches kept before, runs match by match.
    """
    n = len(matches)
    if not n:
        return []
    lat = np.fromiter((m.lat for m in matches), np.float64, n)
    lng = np.fromiter((m.lng for m in matches), np.float64, n)
    keep = np.ones(n, bool)
    if options.min_score is not None:
        keep &= ~(np.fromiter((m.score for m in matches), np.float64, n) < options.min_score)
    if geo is not None:
        keep &= geo.contains(lat, lng)
    if options.exclude_within_km > 0 and len(q.cell_lat):
        for start in range(0, n, _CHUNK):  # a chunk of matches against every query cell
            part = slice(start, start + _CHUNK)
            near = haversine_m(lat[part, None], lng[part, None], q.cell_lat[None, :], q.cell_lng[None, :])
            keep[part] &= ~(near.min(axis=1) < options.exclude_within_km * 1000)
    passing = np.flatnonzero(keep).tolist()
    if options.min_separation_km <= 0:
        return [matches[i] for i in passing[: options.k]]
    kept: list[int] = []
    kept_lat, kept_lng = np.empty(options.k), np.empty(options.k)  # centres of the kept matches, in order
    separation_m = options.min_separation_km * 1000
    for i in passing:
        k = len(kept)
        if k and float(haversine_m(lat[i], lng[i], kept_lat[:k], kept_lng[:k]).min()) < separation_m:
            continue
        kept_lat[k], kept_lng[k] = lat[i], lng[i]
        kept.append(i)
        if len(kept) == options.k:
            break
    return [matches[i] for i in kept]


def _explain(
    fractions: np.ndarray,
    elevation: float,
    sidecars: SearchSidecars,
    *,
    top: int | None,
    query: tuple[np.ndarray, float] | None = None,
) -> dict:
    """Top classes by share (name, colour, fraction; the query's share beside it) and mean elevation."""
    return _explain_rows(fractions[None, :], np.array([elevation]), sidecars, top=top, query=query)[0]


def _explain_rows(
    fractions: np.ndarray,
    elevation: np.ndarray,
    sidecars: SearchSidecars,
    *,
    top: int | None,
    query: tuple[np.ndarray, float] | None = None,
) -> list[dict]:
    """:func:`_explain` of each row of ``fractions`` ``(n, C)`` and ``elevation`` ``(n,)``: one numpy pass for all."""
    order = np.argsort(-fractions, axis=1, kind="stable")[:, :top]  # positive shares first, then zeros (or NaN)
    shares = np.take_along_axis(fractions, order, axis=1)
    n_positive = (shares > 0).sum(axis=1).tolist()
    rounded = np.round(shares, 4).tolist()
    names, colors = sidecars.class_names, sidecars.class_colors
    out = []
    if query is None:
        for classes, row, n, elevation_m in zip(order.tolist(), rounded, n_positive, elevation.tolist(), strict=True):
            listed = [
                {"name": names[i], "color": colors[i], "fraction": share}
                for i, share in zip(classes[:n], row[:n], strict=True)
            ]
            out.append({"classes": listed, "mean_elevation_m": _round(elevation_m, 1)})
        return out
    query_rows = np.round(query[0][order], 4).tolist()
    query_elevation = _round(query[1], 1)
    for classes, row, query_row, n, elevation_m in zip(
        order.tolist(), rounded, query_rows, n_positive, elevation.tolist(), strict=True
    ):
        listed = [
            {"name": names[i], "color": colors[i], "fraction": share, "query_fraction": query_share}
            for i, share, query_share in zip(classes[:n], row[:n], query_row[:n], strict=True)
        ]
        out.append(
            {"classes": listed, "mean_elevation_m": _round(elevation_m, 1), "query_mean_elevation_m": query_elevation}
        )
    return out


def _round(value: float, digits: int = 4) -> float | None:
    return round(float(value), digits) if math.isfinite(value) else None


def _centre(lat: np.ndarray, lng: np.ndarray) -> tuple[float, float]:
    """The spherical centroid of points (the point itself for one)."""
    if len(lat) == 1:
        return float(lat[0]), float(lng[0])
    phi, lam = np.radians(lat), np.radians(lng)
    x, y, z = (np.cos(phi) * np.cos(lam)).mean(), (np.cos(phi) * np.sin(lam)).mean(), np.sin(phi).mean()
    return float(np.degrees(np.arctan2(z, math.hypot(x, y)))), float(np.degrees(np.arctan2(y, x)))


def cell_rings(cells: Sequence[int]) -> list[list[list[float]]]:
    """Each cell's hexagon as a closed GeoJSON ring of ``[lng, lat]``, unwrapped across the antimeridian.

    The vertices of all the cells are rounded in one numpy call (a call per cell cost more than the rest of
    building an answer's features).
    """
    boundaries = [h3i.cell_to_boundary(cell) for cell in cells]
    chain = itertools.chain.from_iterable
    flat = np.fromiter(chain(chain(boundaries)), np.float64)
    points = np.round(flat.reshape(-1, 2)[:, ::-1], 7).tolist()
    rings, start = [], 0
    for boundary in boundaries:
        ring = points[start : start + len(boundary)]
        start += len(boundary)
        first = ring[0][0]
        for point in ring[1:]:
            if point[0] - first > 180:
                point[0] -= 360
            elif point[0] - first < -180:
                point[0] += 360
        ring.append(list(ring[0]))
        rings.append(ring)
    return rings


def _feature(name: str, ring: list[list[float]], properties: dict) -> dict:
    return {"type": "Feature", "id": name, "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": properties}  # fmt: skip


def open_search_service(
    bucket: Bucket,
    *,
    model: str,
    h3_resolution: int,
    stores: Sequence[str] = STORE_KINDS,
    default_store: str | None = None,
    collection: str | None = None,
    data_dir: str | Path,
    qdrant_url: str | None = None,
    qdrant_api_key: str | None = None,
    database_url: str | None = None,
    openers: Mapping[str, Callable[[], VectorStore]] | None = None,
) -> SearchService:
    """A :class:`SearchService` over flow 04's output: stores opened on first use, sidecars read now.

    Qdrant and pgvector open ``collection`` (default :func:`collection_name`) on their server, or the
    embedded store in ``data_dir``; FAISS loads the index files from the bucket (through its cache).
    ``openers`` replaces how some kinds open (``vectorgeo serve`` hands its workers a client of the one
    process that holds the Qdrant Edge shard).

    Raises:
        InvalidInputError: an unknown store kind.
        BucketAccessError: the bucket cannot be read.
    """
    unknown = [kind for kind in stores if kind not in STORE_KINDS]
    if unknown or not stores:
        raise InvalidInputError(f"search stores must be some of {', '.join(STORE_KINDS)}, got {list(stores)}")
    name = collection or collection_name(model, h3_resolution)
    servers = {"qdrant_url": qdrant_url, "qdrant_api_key": qdrant_api_key, "database_url": database_url}

    def opener(kind: str) -> Callable[[], VectorStore]:
        if kind == "faiss":
            return lambda: _open_faiss(bucket, model, h3_resolution)
        return lambda: open_store(kind, name, data_dir=data_dir, **servers)

    chosen = dict(openers or {})  # a caller's own way to open a kind: the server's shared Qdrant shard, say
    return SearchService(
        {kind: chosen.get(kind) or opener(kind) for kind in dict.fromkeys(stores)},
        model=model,
        h3_resolution=h3_resolution,
        default_store=default_store,
        sidecars=_load_sidecars(bucket, model, h3_resolution),
    )


def _open_faiss(bucket: Bucket, model: str, h3_resolution: int) -> VectorStore:
    """The FAISS index flow 04 put in the bucket, from the bucket's local cache."""
    from vectorgeo.stores.faiss import INDEX_FILES, METADATA_FILE, FaissStore

    prefix = index_prefix(model, h3_resolution)
    if not bucket.exists(prefix + METADATA_FILE):
        raise NotFoundError(f"no FAISS index under {prefix!r}")
    paths = [bucket.download(prefix + file) for file in INDEX_FILES]
    return FaissStore(paths[0].parent)


def _load_sidecars(bucket: Bucket, model: str, h3_resolution: int) -> SearchSidecars | None:
    """The search sidecars from the bucket (through its cache), or None when flow 04 has not written them."""
    prefix = search_prefix(model, h3_resolution)
    try:
        paths = [bucket.download(prefix + file) for file in SIDECAR_FILES]
        sidecars = SearchSidecars.load(paths[0].parent)
    except (BucketKeyNotFoundError, InvalidInputError) as exc:
        logger.warning("no search sidecars under %s (%s): answers carry no percentile or explanation", prefix, exc)
        return None
    if (sidecars.model, sidecars.h3_resolution) != (model, h3_resolution):
        logger.warning("search sidecars under %s are for another model or resolution; ignored", prefix)
        return None
    return sidecars
