"""Qdrant adapters: a server or cloud through ``qdrant-client``, and Qdrant Edge in-process.

Both store one point per H3 cell: the point id is the cell's uint64 id, the
vector is the embedding (cosine distance), and the payload holds the centre as
``location = {"lat": .., "lon": ..}`` (a Qdrant geo point, with a geo payload
index) and its 1-degree grid key ``geo_cell`` (:mod:`vectorgeo.stores.geogrid`,
with an integer lookup index). Duplicate ``lat``/``lng`` keys are not stored: they
cost a third of Edge's load rate and add nothing.

Every geographic filter is narrowed first to the grid keys covering it (a
``MatchAny`` on the lookup index; filters over more than :data:`MAX_GRID_CELLS`
cells skip this), then tested exactly on the geo point. Qdrant's geo index
alone reads far more points than the region holds for a large radius (it
covers the circle with a few coarse geohashes): at 1 M points a 1,000 km
radius took 36 ms at p99 with recall 0.93 through it, and 11 ms with recall
1.0 with the grid in front. A shard or collection whose points lack the key
(loaded by an earlier version) is searched by the geo index alone until its
points are loaded again.

Geographic filters follow :meth:`vectorgeo.stores.base.GeoFilter.contains`:

* radius: Qdrant's ``geo_radius``, a haversine distance on a sphere of mean
  radius 6 371 008.8 m (the ``geo`` crate's ``Haversine`` in the server and in
  Edge, ``MEAN_EARTH_RADIUS`` in qdrant-client's local mode), the same sphere
  as :data:`vectorgeo.geodesy.EARTH_RADIUS_M`. Qdrant tests ``distance <
  radius`` where GeoFilter tests ``<=``, and rounding differs, so answers may
  differ only for cells within a metre of the circle.
* polygon: Qdrant's ``geo_polygon`` on the ring, closed for it, with vertices kept 1e-7 degrees
  inside the poles and the antimeridian (see :func:`_polygon_ring`): a polygon reaching them
  misses cells within 1 cm of them.
* bbox: Qdrant's ``geo_bounding_box`` compares with strict inequalities; the
  adapter widens the box by 1e-9 degrees (0.1 mm) so that edges count as
  inside, as in GeoFilter. A box crossing the antimeridian (``west > east``)
  is sent as two boxes in a ``should``. Qdrant's geo index (qdrant-edge-py
  0.9) returns wrong answers for boxes with an edge on a pole or spanning 360
  degrees, so boxes are kept 1e-7 degrees (1 cm) off the poles and cut into
  pieces at most 90 degrees wide (see :func:`_boxes`); cells within 1 cm of a
  pole are therefore missed by boxes that reach it.

Qdrant normalises vectors of a cosine collection on write, so :meth:`fetch`
returns the unit vector in the direction of what was stored.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vectorgeo.errors import InvalidInputError, NotFoundError, StoreBusyError, StoreUnavailableError
from vectorgeo.stores.base import GeoFilter, Match, cell_ids, in_request_order
from vectorgeo.stores.geogrid import cover_ranges, geo_cells

if TYPE_CHECKING:
    from qdrant_client import QdrantClient

__all__ = ["QdrantClientStore", "QdrantEdgeStore", "connect_qdrant"]

log = logging.getLogger(__name__)

LOCATION_FIELD = "location"
"""Payload key of the geo point (``{"lat": .., "lon": ..}``) that carries the geo index."""

GRID_FIELD = "geo_cell"
"""Payload key of the cell's 1-degree grid key (:mod:`vectorgeo.stores.geogrid`), integer-indexed for lookups."""

INDEXING_THRESHOLD_KB = 20_000
"""Qdrant's optimizer indexing threshold (KB of vectors per segment) restored after a bulk load."""

_BBOX_EPS_DEG = 1e-9
_POLE_MARGIN_DEG = 1e-7
_MAX_BOX_WIDTH_DEG = 90.0


def connect_qdrant(url: str | None, api_key: str | None = None) -> QdrantClient | None:
    """A Qdrant client for ``url``, or None when no URL is set (the caller then uses Qdrant Edge).

    Args:
        url: Server URL (``QDRANT_URL``, read by the caller), or ``":memory:"`` for
            qdrant-client's in-process mode; None or empty means no server.
        api_key: API key (``QDRANT_API_KEY``), or None.

    Returns:
        A ``QdrantClient`` that has answered once, or None.

    Raises:
        StoreUnavailableError: the server does not answer (the message names the URL, not the key).
    """
    if not url:
        return None
    from qdrant_client import QdrantClient

    if url == ":memory:":
        return QdrantClient(":memory:")
    client = QdrantClient(url=url, api_key=api_key, timeout=10)
    try:
        client.get_collections()
    except Exception as exc:
        raise StoreUnavailableError(
            f"cannot reach Qdrant at {url}: {type(exc).__name__}: {exc}; check QDRANT_URL / QDRANT_API_KEY, "
            "or unset QDRANT_URL to use the embedded Qdrant Edge"
        ) from exc
    return client


# --- validation and filters shared by both adapters -------------------------------------------------------------


def _validate_rows(
    h3: np.ndarray, lat: np.ndarray, lng: np.ndarray, vectors: np.ndarray, dim: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Check shapes, ranges and dims; return (uint64 ids, float64 lat, float64 lng, float32 vectors)."""
    h3 = np.asarray(h3).reshape(-1)
    lat = np.asarray(lat, dtype=np.float64).reshape(-1)
    lng = np.asarray(lng, dtype=np.float64).reshape(-1)
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise InvalidInputError(f"vectors must be a 2-D (rows, dim) array, got shape {vectors.shape}")
    if not len(h3) == len(lat) == len(lng) == len(vectors):
        raise InvalidInputError(
            f"h3, lat, lng and vectors must have the same length, got {len(h3)}, {len(lat)}, {len(lng)}, {len(vectors)}"
        )
    if vectors.shape[1] != dim:
        raise InvalidInputError(
            f"vector dimension {vectors.shape[1]} does not match the collection's dimension {dim}; "
            "recreate the collection with create(dim, wipe=True) or pass vectors of that length"
        )
    if not np.issubdtype(h3.dtype, np.integer):
        raise InvalidInputError(f"h3 ids must be integers (uint64 H3 cell ids), got dtype {h3.dtype}")
    if np.issubdtype(h3.dtype, np.signedinteger) and len(h3) and h3.min() < 0:
        raise InvalidInputError(f"h3 ids must be non-negative uint64 cell ids, got {int(h3.min())}")
    h3 = h3.astype(np.uint64)
    bad = ~((lat >= -90) & (lat <= 90) & (lng >= -180) & (lng <= 180))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InvalidInputError(f"cell {int(h3[i])} has lat, lng {lat[i]}, {lng[i]} outside -90..90, -180..180")
    norms = np.linalg.norm(vectors, axis=1)
    bad = ~np.isfinite(norms) | (norms == 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InvalidInputError(f"cell {int(h3[i])} has a zero or non-finite vector; cosine needs a direction")
    return h3, lat, lng, vectors


def _validate_query(vector: np.ndarray, k: int, dim: int) -> list[float]:
    """Check the query vector and ``k``; return the vector as a list of floats."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise InvalidInputError(f"k must be an integer >= 1, got {k!r}")
    vector = np.asarray(vector, dtype=np.float32).reshape(-1)
    if vector.shape[0] != dim:
        raise InvalidInputError(
            f"query vector dimension {vector.shape[0]} does not match the collection's dimension {dim}"
        )
    norm = float(np.linalg.norm(vector))
    if not math.isfinite(norm) or norm == 0:
        raise InvalidInputError("the query vector is zero or non-finite; cosine needs a direction")
    return vector.tolist()


def _boxes(bbox: tuple[float, float, float, float]) -> list[tuple[float, float, float, float]]:
    """``(west, south, east, north)`` as boxes ``(top, left, bottom, right)`` that Qdrant's geo index handles.

    Each box is widened by 1e-9 degrees so edges count as inside. Qdrant's geo
    index (seen in Edge 0.9) drops points for boxes whose edge lies on a pole
    or that span the full 360 degrees of longitude, so latitudes are kept
    ``_POLE_MARGIN_DEG`` off the poles and the box is cut into pieces at most
    90 degrees wide; a box crossing the antimeridian (``west > east``) is cut there.
    """
    west, south, east, north = bbox
    top = min(north + _BBOX_EPS_DEG, 90.0 - _POLE_MARGIN_DEG)
    bottom = max(south - _BBOX_EPS_DEG, -90.0 + _POLE_MARGIN_DEG)
    spans = [(west, east)] if west <= east else [(west, 180.0), (-180.0, east)]
    pieces = []
    for lo, hi in spans:
        edges = np.linspace(lo, hi, max(1, math.ceil((hi - lo) / _MAX_BOX_WIDTH_DEG)) + 1)
        pieces += [(a, b) for a, b in zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True)]
    return [(top, max(lo - _BBOX_EPS_DEG, -180.0), bottom, min(hi + _BBOX_EPS_DEG, 180.0)) for lo, hi in pieces]


def _polygon_ring(polygon: tuple[tuple[float, float], ...]) -> list[tuple[float, float]]:
    """The ring closed, as Qdrant wants it, with vertices kept ``_POLE_MARGIN_DEG`` inside the poles and 180°.

    Qdrant's geo index (seen in Edge 0.9) returns a fraction of the points, or none, for a polygon
    reaching a pole or spanning the full 360 degrees, as it does for such boxes.
    """
    limit_lng, limit_lat = 180.0 - _POLE_MARGIN_DEG, 90.0 - _POLE_MARGIN_DEG
    ring = [(min(max(x, -limit_lng), limit_lng), min(max(y, -limit_lat), limit_lat)) for x, y in polygon]
    return [*ring, ring[0]]


_FILTERED_HNSW_EF = 128  # filtered graph searches visit more candidates; exact fallback covers the rest


def _search_params(api: Any, hnsw_ef: int | None, *, filtered: bool) -> Any:
    """Search parameters for qdrant-client's ``models`` or ``qdrant_edge`` (same names in both).

    Filtered searches raise ``hnsw_ef`` and allow ACORN, which keeps recall up when a filter
    removes most of the graph's neighbours.
    """
    if not filtered:
        return api.SearchParams(hnsw_ef=hnsw_ef) if hnsw_ef else None
    ef = max(hnsw_ef or 0, _FILTERED_HNSW_EF)
    return api.SearchParams(hnsw_ef=ef, acorn=api.AcornSearchParams(enable=True))


def _search_falling_back(run: Callable[[Any], list], api: Any, hnsw_ef: int | None, k: int, *, filtered: bool):
    """Run a query; a filtered graph search that comes back short of ``k`` is redone as an exact scan."""
    points = run(_search_params(api, hnsw_ef, filtered=filtered))
    if filtered and len(points) < k:
        points = run(api.SearchParams(exact=True))
    return [
        Match(
            h3=int(p.id),
            score=float(p.score),
            lat=p.payload[LOCATION_FIELD]["lat"],
            lng=p.payload[LOCATION_FIELD]["lon"],
        )
        for p in points
    ]


def _ids(exclude: tuple[int, ...]) -> list[int]:
    return [int(i) for i in exclude]


def _build_filter(
    api: Any,
    geo: GeoFilter | None,
    cells: list[int] | None,
    exclude: tuple[int, ...],
    *,
    has_id: Callable[[list[int]], Any],
    exterior: Callable[[list[Any]], Any],
) -> Any:
    """The filter for ``geo`` (after the grid cells ``cells``, if any) and ``exclude``, or None for no filter.

    ``api`` is qdrant-client's ``models`` or ``qdrant_edge``: their condition classes share names and
    keywords except for an id condition and a polygon's outer ring, which ``has_id`` and ``exterior`` build.
    """
    must, should = [], None
    if cells is not None:
        must.append(api.FieldCondition(key=GRID_FIELD, match=api.MatchAny(any=cells)))
    if geo is not None and geo.is_radius:
        radius = api.GeoRadius(center=api.GeoPoint(lat=geo.lat, lon=geo.lng), radius=geo.radius_km * 1000.0)
        must.append(api.FieldCondition(key=LOCATION_FIELD, geo_radius=radius))
    elif geo is not None and geo.is_polygon:
        ring = [api.GeoPoint(lat=y, lon=x) for x, y in _polygon_ring(geo.polygon)]
        must.append(api.FieldCondition(key=LOCATION_FIELD, geo_polygon=api.GeoPolygon(exterior=exterior(ring))))
    elif geo is not None:
        boxes = [
            api.FieldCondition(
                key=LOCATION_FIELD,
                geo_bounding_box=api.GeoBoundingBox(
                    top_left=api.GeoPoint(lat=top, lon=left), bottom_right=api.GeoPoint(lat=bottom, lon=right)
                ),
            )
            for top, left, bottom, right in _boxes(geo.bbox)
        ]
        if len(boxes) == 1:
            must.extend(boxes)
        else:
            should = boxes
    must_not = [has_id(_ids(exclude))] if exclude else None
    if not must and should is None and must_not is None:
        return None
    return api.Filter(must=must or None, should=should, must_not=must_not)


def _log_created(what: str, where: object, dim: int, on_disk: bool, quantization: bool) -> None:
    log.info("created %s %s (dim %d, on_disk=%s, int8=%s)", what, where, dim, on_disk, quantization)


def _batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _payloads(lat: np.ndarray, lng: np.ndarray) -> list[dict[str, Any]]:
    cells = geo_cells(lat, lng).tolist()
    return [
        {LOCATION_FIELD: {"lat": a, "lon": o}, GRID_FIELD: c}
        for a, o, c in zip(lat.tolist(), lng.tolist(), cells, strict=True)
    ]


MAX_GRID_CELLS = 4000
"""Filters covering more grid cells than this (a third of the land) skip the grid prefilter: they are
large enough for Qdrant to search its graph, checking the geo condition as it goes."""


def _grid_cells(geo: GeoFilter) -> list[int] | None:
    """The grid keys covering ``geo``, or None when there are more than :data:`MAX_GRID_CELLS`."""
    lo, hi = cover_ranges(geo)
    if int((hi - lo + 1).sum()) > MAX_GRID_CELLS:
        return None
    return np.concatenate([np.arange(a, b + 1) for a, b in zip(lo.tolist(), hi.tolist(), strict=True)]).tolist()


def _fetched(records: list, missing: str) -> tuple[np.ndarray, float, float]:
    """``(vector, lat, lng)`` of the one retrieved record; NotFoundError(``missing``) when there is none."""
    if not records:
        raise NotFoundError(missing)
    rec = records[0]
    location = rec.payload[LOCATION_FIELD]
    return _vector_of(rec.vector), float(location["lat"]), float(location["lon"])


RETRIEVE_CHUNK = 2_000
"""Ids per ``retrieve`` call of :meth:`QdrantClientStore.fetch_many` and :meth:`QdrantEdgeStore.fetch_many`."""


def _fetch_many(
    h3: np.ndarray, dim: int, retrieve: Callable[[list[int]], list]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``fetch_many`` over a ``retrieve(ids) -> records`` call, :data:`RETRIEVE_CHUNK` ids at a time."""
    ids = cell_ids(h3)
    _, first = np.unique(ids, return_index=True)
    ids = ids[np.sort(first)]
    records = []
    for part in _batches(len(ids), RETRIEVE_CHUNK):
        records += retrieve(ids[part].tolist())
    n = len(records)
    found = np.fromiter((r.id for r in records), np.uint64, n)
    locations = [r.payload[LOCATION_FIELD] for r in records]
    lat = np.fromiter((p["lat"] for p in locations), np.float64, n)
    lng = np.fromiter((p["lon"] for p in locations), np.float64, n)
    raw = [r.vector for r in records]
    if raw and isinstance(raw[0], dict):  # named vectors: the default one
        raw = [v.get("", next(iter(v.values()))) for v in raw]
    vectors = np.fromiter(itertools.chain.from_iterable(raw), np.float32, n * dim).reshape(n, dim)
    return in_request_order(ids, found, vectors, lat, lng, dim)


def _vector_of(raw: Any) -> np.ndarray:
    """The default (unnamed) vector of a record, whichever shape the engine returns."""
    if isinstance(raw, dict):
        raw = raw.get("", next(iter(raw.values())))
    return np.asarray(raw, dtype=np.float32)


# --- qdrant-client ---------------------------------------------------------------------------------------------


class QdrantClientStore:
    """A Qdrant collection on a server, in Qdrant Cloud, or in qdrant-client's local mode.

    Args:
        client: A ``QdrantClient`` (see :func:`connect_qdrant`).
        collection: Collection name.
        on_disk: Keep original vectors on disk (memory-mapped) instead of in RAM.
        quantization: Add int8 scalar quantisation (kept in RAM; search rescoring on originals).
        batch_size: Points per upsert request.
        hnsw_ef: HNSW search breadth; None uses the collection's default.
    """

    def __init__(
        self,
        client: QdrantClient,
        collection: str,
        *,
        on_disk: bool = False,
        quantization: bool = False,
        batch_size: int = 1000,
        hnsw_ef: int | None = None,
    ) -> None:
        self.client = client
        self.collection = collection
        self.on_disk = on_disk
        self.quantization = quantization
        self.batch_size = batch_size
        self.hnsw_ef = hnsw_ef
        self._dim: int | None = None
        self._loading = False
        self._grid_ready: bool | None = None  # known after the first filtered search; reset by writes

    def _optimizers(self, threshold_kb: int) -> Any:
        from qdrant_client import models

        return models.OptimizersConfigDiff(indexing_threshold=threshold_kb)

    def _existing_dim(self) -> int | None:
        if not self.client.collection_exists(self.collection):
            return None
        vectors = self.client.get_collection(self.collection).config.params.vectors
        if isinstance(vectors, dict):
            vectors = vectors.get("", next(iter(vectors.values())))
        return int(vectors.size)

    def _require_dim(self) -> int:
        if self._dim is None:
            self._dim = self._existing_dim()
            if self._dim is None:
                raise NotFoundError(f"Qdrant collection {self.collection!r} does not exist; call create(dim) first")
        return self._dim

    def create(self, dim: int, *, wipe: bool = False) -> None:
        """Make the collection for ``dim``-long vectors (cosine); ``wipe`` drops it first.

        Raises:
            InvalidInputError: The collection exists with another dimension and ``wipe`` is False.
        """
        from qdrant_client import models

        if dim < 1:
            raise InvalidInputError(f"dim must be >= 1, got {dim}")
        existing = self._existing_dim()
        if existing is not None and wipe:
            log.info("dropping Qdrant collection %s", self.collection)
            self.client.delete_collection(self.collection)
            existing = None
        if existing is not None:
            if existing != dim:
                raise InvalidInputError(
                    f"Qdrant collection {self.collection!r} holds {existing}-long vectors, asked for {dim}; "
                    "pass wipe=True to recreate it"
                )
            self._dim = dim
            return
        quantization = (
            models.ScalarQuantization(
                scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8, quantile=0.99, always_ram=True)
            )
            if self.quantization
            else None
        )
        self.client.create_collection(
            self.collection,
            vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE, on_disk=self.on_disk),
            optimizers_config=self._optimizers(0),
            quantization_config=quantization,
        )
        self.client.create_payload_index(self.collection, LOCATION_FIELD, field_schema=models.PayloadSchemaType.GEO)
        self._create_grid_index()
        self._dim, self._loading, self._grid_ready = dim, True, None
        _log_created("Qdrant collection", self.collection, dim, self.on_disk, self.quantization)

    def upsert(self, h3: np.ndarray, lat: np.ndarray, lng: np.ndarray, vectors: np.ndarray) -> int:
        """Insert or replace points keyed by H3 id; indexing stays off until :meth:`finish_load`.

        Returns:
            Rows written.
        """
        from qdrant_client import models

        h3, lat, lng, vectors = _validate_rows(h3, lat, lng, vectors, self._require_dim())
        if not self._loading:
            self.client.update_collection(self.collection, optimizers_config=self._optimizers(0))
            self._loading = True
        for part in _batches(len(h3), self.batch_size):
            batch = models.Batch(
                ids=h3[part].tolist(), vectors=vectors[part].tolist(), payloads=_payloads(lat[part], lng[part])
            )
            self.client.upsert(self.collection, points=batch, wait=True)
        self._grid_ready = None
        return len(h3)

    def _grid_indexed(self) -> bool:
        """True when the server indexes the grid key of every point (collections made before it existed do not)."""
        if self._grid_ready is None:
            info = self.client.get_collection(self.collection)
            grid = (info.payload_schema or {}).get(GRID_FIELD)
            self._grid_ready = grid is not None and grid.points == info.points_count
        return self._grid_ready

    def _create_grid_index(self) -> None:
        from qdrant_client import models

        grid_index = models.IntegerIndexParams(
            type=models.IntegerIndexType.INTEGER, lookup=True, range=False, enable_hnsw=False
        )
        self.client.create_payload_index(self.collection, GRID_FIELD, field_schema=grid_index)

    def finish_load(self) -> None:
        """Restore the indexing threshold so Qdrant builds the HNSW index (asynchronously on a server).

        Also indexes the grid key of a collection made before it existed (once its points carry the key).
        """
        self._require_dim()
        if GRID_FIELD not in (self.client.get_collection(self.collection).payload_schema or {}):
            self._create_grid_index()
        self._grid_ready = None
        self.client.update_collection(self.collection, optimizers_config=self._optimizers(INDEXING_THRESHOLD_KB))
        self._loading = False

    def _filter(self, geo: GeoFilter | None, exclude: tuple[int, ...]) -> Any:
        from qdrant_client import models

        cells = _grid_cells(geo) if geo is not None and self._grid_indexed() else None
        return _build_filter(
            models,
            geo,
            cells,
            exclude,
            has_id=lambda ids: models.HasIdCondition(has_id=ids),
            exterior=lambda ring: models.GeoLineString(points=ring),
        )

    def search(
        self, vector: np.ndarray, k: int, *, geo: GeoFilter | None = None, exclude: tuple[int, ...] = ()
    ) -> list[Match]:
        """The ``k`` most similar cells by cosine (best first), optionally inside ``geo``, never in ``exclude``."""
        from qdrant_client import models

        query = _validate_query(vector, k, self._require_dim())
        query_filter = self._filter(geo, exclude)

        def run(params: Any) -> list:
            return self.client.query_points(
                self.collection, query=query, limit=int(k), query_filter=query_filter, search_params=params,
                with_payload=[LOCATION_FIELD],
            ).points  # fmt: skip

        return _search_falling_back(run, models, self.hnsw_ef, k, filtered=query_filter is not None)

    def fetch(self, h3: int) -> tuple[np.ndarray, float, float]:
        """A cell's unit vector (float32) and centre ``(vector, lat, lng)``.

        Raises:
            NotFoundError: No point has this id.
        """
        self._require_dim()
        records = self.client.retrieve(self.collection, [int(h3)], with_payload=[LOCATION_FIELD], with_vectors=True)
        return _fetched(records, f"cell {int(h3)} is not in Qdrant collection {self.collection!r}")

    def fetch_many(self, h3: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Unit vectors and centres of the cells present: ``(found_h3, vectors, lat, lng)``, in request order.

        One ``retrieve`` per :data:`RETRIEVE_CHUNK` ids; see :meth:`~vectorgeo.stores.base.VectorStore.fetch_many`.
        """
        dim = self._require_dim()

        def retrieve(ids: list[int]) -> list:
            return self.client.retrieve(self.collection, ids, with_payload=[LOCATION_FIELD], with_vectors=True)

        return _fetch_many(h3, dim, retrieve)

    def count(self) -> int:
        """Points stored (exact count)."""
        self._require_dim()
        return int(self.client.count(self.collection, exact=True).count)

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()


# --- Qdrant Edge -----------------------------------------------------------------------------------------------


class QdrantEdgeStore:
    """A Qdrant Edge shard: the Qdrant engine in-process, stored in a local directory.

    The shard is opened if ``path`` already holds one, else made by :meth:`create`.
    Only one process may hold a shard at a time. Edge runs no background
    optimizer: points go to plain (exactly searched) segments, and
    :meth:`finish_load` builds the geo payload index (deferred from
    :meth:`create`: loading with it in place is ~30 % slower) and the HNSW index
    for segments above Qdrant's indexing threshold. Geo filters work before
    that too, by scanning payloads.

    Args:
        path: Shard directory (in the local data dir).
        on_disk: Keep original vectors on disk (memory-mapped) instead of in RAM.
        quantization: Add int8 scalar quantisation (kept in RAM; rescoring on originals).
        batch_size: Points per update operation.
        hnsw_ef: HNSW search breadth; None uses the default.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        on_disk: bool = False,
        quantization: bool = False,
        batch_size: int = 2_000,
        hnsw_ef: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.on_disk = on_disk
        self.quantization = quantization
        self.batch_size = batch_size
        self.hnsw_ef = hnsw_ef
        self._shard: Any = None
        self._dim: int | None = None
        self._grid_ready: bool | None = None  # known after the first filtered search; reset by writes
        if self._config_file.exists():
            self._open()

    @property
    def _config_file(self) -> Path:
        return self.path / "edge_config.json"

    def _open(self) -> None:
        from qdrant_edge import EdgeShard

        try:
            self._shard = EdgeShard.load(str(self.path))
        except Exception as exc:  # the binding raises plain exceptions; this one has a fix the user can apply
            if "WouldBlock" in str(exc):
                raise StoreBusyError(
                    "the Qdrant Edge shard is open in another process (a running `vectorgeo serve`, or flow 04 "
                    "loading it): stop that process, or ask another store"
                ) from exc
            raise
        vectors = json.loads(self._config_file.read_text()).get("vectors", {})
        params = vectors.get("", next(iter(vectors.values()), None))
        self._dim = int(params["size"]) if params else None
        log.info("opened Qdrant Edge shard %s (dim %s)", self.path, self._dim)

    def _require(self) -> tuple[Any, int]:
        if self._shard is None or self._dim is None:
            if self._config_file.exists():
                raise NotFoundError(f"the Qdrant Edge store at {self.path} is closed; open a new QdrantEdgeStore")
            raise NotFoundError(f"no Qdrant Edge shard at {self.path}; call create(dim) first")
        return self._shard, self._dim

    def create(self, dim: int, *, wipe: bool = False) -> None:
        """Make the shard for ``dim``-long vectors (cosine); ``wipe`` deletes the shard directory first.

        Raises:
            InvalidInputError: The shard exists with another dimension and ``wipe`` is False, or ``path``
                holds files that are not a Qdrant Edge shard.
        """
        from qdrant_edge import (
            Distance,
            EdgeConfig,
            EdgeShard,
            EdgeVectorParams,
            ScalarQuantizationConfig,
            ScalarType,
        )

        if dim < 1:
            raise InvalidInputError(f"dim must be >= 1, got {dim}")
        if wipe and self.path.exists():
            if not self._config_file.exists() and any(self.path.iterdir()):
                raise InvalidInputError(f"{self.path} holds files but no Qdrant Edge shard; refusing to delete it")
            self.close()
            log.info("deleting Qdrant Edge shard %s", self.path)
            shutil.rmtree(self.path)
            self._dim = None
        if self._shard is None and self._config_file.exists():
            self._open()
        if self._shard is not None:
            if self._dim != dim:
                raise InvalidInputError(
                    f"Qdrant Edge shard {self.path} holds {self._dim}-long vectors, asked for {dim}; "
                    "pass wipe=True to recreate it"
                )
            return
        if self.path.exists() and any(self.path.iterdir()):
            raise InvalidInputError(f"{self.path} holds files but no Qdrant Edge shard; choose an empty directory")
        quantization = (
            ScalarQuantizationConfig(type=ScalarType.Int8, quantile=0.99, always_ram=True)
            if self.quantization
            else None
        )
        config = EdgeConfig(
            vectors=EdgeVectorParams(size=dim, distance=Distance.Cosine, on_disk=self.on_disk),
            quantization_config=quantization,
        )
        self.path.mkdir(parents=True, exist_ok=True)
        self._shard = EdgeShard.create(str(self.path), config)
        self._dim = dim
        _log_created("Qdrant Edge shard", self.path, dim, self.on_disk, self.quantization)

    def upsert(self, h3: np.ndarray, lat: np.ndarray, lng: np.ndarray, vectors: np.ndarray) -> int:
        """Insert or replace points keyed by H3 id (written to the WAL; searchable at once).

        Returns:
            Rows written.
        """
        from qdrant_edge import Point, UpdateOperation

        shard, dim = self._require()
        h3, lat, lng, vectors = _validate_rows(h3, lat, lng, vectors, dim)
        cells = geo_cells(lat, lng)
        for part in _batches(len(h3), self.batch_size):
            # one comprehension, payloads built inline: converting Points is the load's cost, not the engine
            points = [
                Point(i, v, {LOCATION_FIELD: {"lat": a, "lon": o}, GRID_FIELD: c})
                for i, v, a, o, c in zip(
                    h3[part].tolist(),
                    vectors[part].tolist(),
                    lat[part].tolist(),
                    lng[part].tolist(),
                    cells[part].tolist(),
                    strict=True,
                )
            ]
            shard.update(UpdateOperation.upsert_points(points))
        self._grid_ready = None
        return len(h3)

    def finish_load(self) -> None:
        """Build the geo and grid payload indexes if missing, run Edge's optimizers (HNSW where large enough), flush.

        The grid index skips Qdrant's extra per-value HNSW links, which would double the build.
        """
        from qdrant_edge import IntegerIndexParams, PayloadSchemaType, UpdateOperation

        shard, _ = self._require()
        schema = shard.info().payload_schema
        if LOCATION_FIELD not in schema:
            shard.update(UpdateOperation.create_field_index(LOCATION_FIELD, PayloadSchemaType.Geo))
        if GRID_FIELD not in schema:
            grid_index = IntegerIndexParams(lookup=True, range=False, enable_hnsw=False)
            shard.update(UpdateOperation.create_field_index(GRID_FIELD, grid_index))
        optimized = shard.optimize()
        shard.flush()
        self._grid_ready = None
        log.info("optimized Qdrant Edge shard %s (changed: %s)", self.path, optimized)

    def _filter(self, geo: GeoFilter | None, exclude: tuple[int, ...]) -> Any:
        import qdrant_edge

        cells = _grid_cells(geo) if geo is not None and self._grid_indexed() else None
        return _build_filter(
            qdrant_edge,
            geo,
            cells,
            exclude,
            has_id=lambda ids: qdrant_edge.HasIdCondition(set(ids)),
            exterior=lambda ring: ring,
        )

    def _grid_indexed(self) -> bool:
        """True when every point carries an indexed grid key (shards loaded before it existed do not)."""
        if self._grid_ready is None:
            info = self._shard.info()
            grid = info.payload_schema.get(GRID_FIELD)
            self._grid_ready = grid is not None and grid.points == info.points_count
        return self._grid_ready

    def search(
        self, vector: np.ndarray, k: int, *, geo: GeoFilter | None = None, exclude: tuple[int, ...] = ()
    ) -> list[Match]:
        """The ``k`` most similar cells by cosine (best first), optionally inside ``geo``, never in ``exclude``."""
        import qdrant_edge
        from qdrant_edge import Query, QueryRequest

        shard, dim = self._require()
        query = _validate_query(vector, k, dim)
        query_filter = self._filter(geo, exclude)

        def run(params: Any) -> list:
            request = QueryRequest(
                limit=int(k), query=Query.Nearest(query), filter=query_filter, params=params,
                with_payload=[LOCATION_FIELD],
            )  # fmt: skip
            return shard.query(request)

        return _search_falling_back(run, qdrant_edge, self.hnsw_ef, k, filtered=query_filter is not None)

    def fetch(self, h3: int) -> tuple[np.ndarray, float, float]:
        """A cell's unit vector (float32) and centre ``(vector, lat, lng)``.

        Raises:
            NotFoundError: No point has this id.
        """
        shard, _ = self._require()
        records = shard.retrieve([int(h3)], with_payload=[LOCATION_FIELD], with_vector=True)
        return _fetched(records, f"cell {int(h3)} is not in Qdrant Edge shard {self.path}")

    def fetch_many(self, h3: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Unit vectors and centres of the cells present: ``(found_h3, vectors, lat, lng)``, in request order.

        One ``retrieve`` per :data:`RETRIEVE_CHUNK` ids; see :meth:`~vectorgeo.stores.base.VectorStore.fetch_many`.
        """
        shard, dim = self._require()
        return _fetch_many(h3, dim, lambda ids: shard.retrieve(ids, with_payload=[LOCATION_FIELD], with_vector=True))

    def count(self) -> int:
        """Points stored (exact count)."""
        from qdrant_edge import CountRequest

        shard, _ = self._require()
        return int(shard.count(CountRequest(exact=True)))

    def close(self) -> None:
        """Flush and close the shard; a new store on the same path reopens it with its data."""
        if self._shard is not None:
            self._shard.flush()
            self._shard.close()
            self._shard = None
