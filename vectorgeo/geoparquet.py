"""GeoParquet 1.1 files for any table of H3 cells.

Each row keeps its ``h3`` id (uint64, for joins) and gains a WKB ``geometry``
column (the cell's centre point or its hexagon, lon/lat degrees) and a
``bbox`` covering column (struct of xmin, ymin, xmax, ymax), so GeoPandas,
DuckDB, GDAL and friends can read the file as a layer and filter it by area
without decoding geometries. Rows are sorted by h3 id: H3 order is spatially
local, so row groups cover compact areas and their ``bbox`` statistics prune
well.

CRS: the ``crs`` key is omitted on purpose. GeoParquet defines an absent
``crs`` as OGC:CRS84 (WGS 84, longitude then latitude), which is exactly what
H3 uses; omitting it avoids embedding a PROJJSON blob (and a pyproj
dependency) that every reader would only map back to the same default.

Hexagons crossing the antimeridian are cut along it into a valid
``MultiPolygon`` in [-180, 180] (the GeoJSON RFC 7946 convention); cells
around a pole become polygons closed along the pole's latitude. Edges are
declared ``planar``: straight in lon/lat, which departs from H3's
great-circle edges by a negligible amount at the resolutions VectorGeo uses.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from vectorgeo.errors import InvalidInputError
from vectorgeo.h3_arrays import cells_to_latlng, check_cells

__all__ = [
    "GEOPARQUET_VERSION",
    "GEOMETRY_KINDS",
    "VECTORGEO_METADATA_KEY",
    "cells_geometry_wkb",
    "read_geoparquet_metadata",
    "write_cells_geoparquet",
]

logger = logging.getLogger(__name__)

GEOPARQUET_VERSION = "1.1.0"
"""Version of the GeoParquet specification the files follow."""

GEOMETRY_KINDS = ("point", "hexagon")
"""Geometries a cell can be written as: its centre, or its boundary polygon."""

VECTORGEO_METADATA_KEY = b"vectorgeo"
"""Parquet schema-metadata key holding the caller's extra metadata (JSON)."""

_POINT_WKB = np.dtype([("order", "u1"), ("type", "<u4"), ("x", "<f8"), ("y", "<f8")])  # packed: 21 bytes
_BINARY_MAX_BYTES = 2**31 - 1


def cells_geometry_wkb(
    h3: np.ndarray,
    *,
    lat: np.ndarray | None = None,
    lng: np.ndarray | None = None,
    geometry: str = "point",
) -> pa.Array:
    """WKB geometries of H3 cells, in the order given (vectorised).

    Args:
        h3: uint64 H3 cell ids.
        lat: Centre latitudes, degrees, to use for points instead of computing them from ``h3``.
        lng: Centre longitudes, degrees; given together with ``lat``.
        geometry: ``"point"`` (cell centre) or ``"hexagon"`` (cell boundary polygon).

    Returns:
        A binary (or large_binary past 2 GiB) Arrow array of little-endian WKB in lon/lat degrees
        (OGC:CRS84). Hexagons crossing the antimeridian are MultiPolygons split along it.

    Raises:
        InvalidInputError: ``h3`` is not uint64 or holds invalid cells, ``lat``/``lng`` are
            unusable, or ``geometry`` is unknown.
    """
    return _cells_geometry(h3, lat, lng, geometry)[0]


def write_cells_geoparquet(
    table: pa.Table,
    path: str | os.PathLike,
    *,
    geometry: str = "point",
    metadata: dict[str, Any] | None = None,
    row_group_size: int = 65536,
) -> Path:
    """Write a table of H3 cells as a GeoParquet 1.1 file, atomically.

    Args:
        table: Any columns plus ``h3`` (uint64, kept). Optional float ``lat``/``lng`` columns (degrees)
            give the point geometries; otherwise centres are computed from ``h3``.
        path: Destination ``.parquet`` file; its directory is created if missing.
        geometry: ``"point"`` (cell centres) or ``"hexagon"`` (cell polygons).
        metadata: Extra JSON-serialisable metadata, stored under the ``vectorgeo`` schema-metadata key.
        row_group_size: Rows per Parquet row group.

    Returns:
        The path written. Rows are sorted by h3; ``geometry`` (WKB) and ``bbox`` (covering struct)
        are appended; the file is zstd-compressed.

    Raises:
        InvalidInputError: No ``h3`` column, a non-uint64 or invalid h3, an existing ``geometry`` or
            ``bbox`` column, only one of ``lat``/``lng``, an unknown ``geometry`` kind, or metadata
            that is not JSON-serialisable.
    """
    import pyarrow.parquet as pq

    table = _check_table(table)
    if row_group_size < 1:
        raise InvalidInputError(f"row_group_size must be at least 1, got {row_group_size}")
    extra = None
    if metadata is not None:
        try:
            extra = json.dumps(metadata, allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(
                f"metadata must be JSON-serialisable: {exc}; convert values to str/int/float"
            ) from exc

    table = table.sort_by("h3")
    cells = table.column("h3").to_numpy()
    lat = lng = None
    if "lat" in table.column_names and geometry == "point":
        lat, lng = (table.column(name).to_numpy() for name in ("lat", "lng"))
    wkb, bounds, geometry_types = _cells_geometry(cells, lat, lng, geometry)
    bbox = pa.StructArray.from_arrays(
        [pa.array(b, type=pa.float64()) for b in bounds], ["xmin", "ymin", "xmax", "ymax"]
    )
    table = table.append_column("geometry", wkb).append_column("bbox", bbox)

    geo = {
        "version": GEOPARQUET_VERSION,
        "primary_column": "geometry",
        "columns": {
            "geometry": {
                "encoding": "WKB",
                "geometry_types": geometry_types,
                "edges": "planar",
                "covering": {"bbox": {k: ["bbox", k] for k in ("xmin", "ymin", "xmax", "ymax")}},
            }
        },
    }
    if table.num_rows:
        geo["columns"]["geometry"]["bbox"] = _file_bbox(bounds)
    schema_metadata = dict(table.schema.metadata or {})
    schema_metadata[b"geo"] = json.dumps(geo).encode()
    if extra is not None:
        schema_metadata[VECTORGEO_METADATA_KEY] = extra
    table = table.replace_schema_metadata(schema_metadata)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        pq.write_table(table, tmp, compression="zstd", row_group_size=row_group_size)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("wrote %d cells (%s) to %s", table.num_rows, geometry, path)
    return path


def read_geoparquet_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``geo`` metadata of a GeoParquet file, parsed from JSON.

    Raises:
        InvalidInputError: The file has no ``geo`` metadata (it is plain Parquet).
    """
    import pyarrow.parquet as pq

    metadata = pq.read_schema(path).metadata or {}
    if b"geo" not in metadata:
        raise InvalidInputError(f"{path} has no 'geo' metadata; it is not a GeoParquet file")
    return json.loads(metadata[b"geo"])


def _check_table(table: pa.Table) -> pa.Table:
    if not isinstance(table, pa.Table):
        raise InvalidInputError(f"table must be a pyarrow.Table, got {type(table).__name__}")
    if "h3" not in table.column_names:
        raise InvalidInputError(f"table has no 'h3' column (columns: {table.column_names}); add the uint64 cell ids")
    h3_type = table.schema.field("h3").type
    if h3_type != pa.uint64():
        raise InvalidInputError(f"column 'h3' must be uint64, got {h3_type}; cast it (h3 ids are uint64 end to end)")
    if table.column("h3").null_count:
        raise InvalidInputError(f"column 'h3' has {table.column('h3').null_count} nulls; drop those rows")
    for name in ("geometry", "bbox"):
        if name in table.column_names:
            raise InvalidInputError(f"table already has a '{name}' column; drop or rename it, it is written here")
    if ("lat" in table.column_names) != ("lng" in table.column_names):
        raise InvalidInputError("table has only one of 'lat'/'lng'; give both (degrees) or neither")
    return table


def _cells_geometry(
    h3: np.ndarray, lat: np.ndarray | None, lng: np.ndarray | None, geometry: str
) -> tuple[pa.Array, tuple[np.ndarray, ...], list[str]]:
    """WKB array, per-row (xmin, ymin, xmax, ymax) and the geometry types present."""
    if geometry not in GEOMETRY_KINDS:
        raise InvalidInputError(f"unknown geometry kind {geometry!r}; use one of {GEOMETRY_KINDS}")
    h3, _ = check_cells(h3)
    if geometry == "hexagon":
        return _hexagons(h3)
    if (lat is None) != (lng is None):
        raise InvalidInputError("give both lat and lng (degrees) or neither")
    if lat is None:
        lat, lng = cells_to_latlng(h3)
    lat = np.asarray(lat, dtype=np.float64).ravel()
    lng = np.asarray(lng, dtype=np.float64).ravel()
    if lat.shape != h3.shape or lng.shape != h3.shape:
        raise InvalidInputError(f"lat/lng have {lat.size}/{lng.size} values for {h3.size} cells; give one per cell")
    if not (np.isfinite(lat).all() and np.isfinite(lng).all()):
        raise InvalidInputError("lat/lng hold NaN or infinite values; drop the columns to compute centres from h3")
    return _points_wkb(lat, lng), (lng, lat, lng, lat), ["Point"]


def _points_wkb(lat: np.ndarray, lng: np.ndarray) -> pa.Array:
    """Little-endian WKB points built as one packed numpy buffer (no per-point Python)."""
    records = np.empty(lat.size, dtype=_POINT_WKB)
    records["order"], records["type"], records["x"], records["y"] = 1, 1, lng, lat
    size = _POINT_WKB.itemsize
    large = lat.size * size > _BINARY_MAX_BYTES
    offsets = np.arange(lat.size + 1, dtype=np.int64 if large else np.int32) * size
    kind = pa.large_binary() if large else pa.binary()
    return pa.Array.from_buffers(kind, lat.size, [None, pa.py_buffer(offsets), pa.py_buffer(records.tobytes())])


def _hexagons(h3: np.ndarray) -> tuple[pa.Array, tuple[np.ndarray, ...], list[str]]:
    from h3ronpy.vector import cells_bounds_arrays, cells_to_wkb_polygons

    if not h3.size:
        empty = np.empty(0)
        return pa.array([], type=pa.binary()), (empty, empty, empty, empty), ["Polygon"]
    arrow_cells = pa.array(h3, type=pa.uint64())
    wkb = pa.array(cells_to_wkb_polygons(arrow_cells))
    bounds_table = pa.record_batch(cells_bounds_arrays(arrow_cells))
    bounds = [np.array(bounds_table.column(k), dtype=np.float64) for k in ("minx", "miny", "maxx", "maxy")]
    types = ["Polygon"]
    wrapped = np.flatnonzero(bounds[2] - bounds[0] > 180.0)
    if wrapped.size:
        import shapely

        fixed = np.array([_unwrapped_polygon(int(c)) for c in h3[wrapped]], dtype=object)
        fixed = shapely.union_all(
            np.stack(
                [
                    _shift(shapely.intersection(fixed, shapely.box(360 * k - 180, -90, 360 * k + 180, 90)), -360 * k)
                    for k in (-1, 0, 1)
                ]
            ),
            axis=0,
        )
        for i, values in enumerate(shapely.bounds(fixed).T):
            bounds[i][wrapped] = values
        take = np.arange(h3.size)
        take[wrapped] = h3.size + np.arange(wrapped.size)  # swap in the cut geometries, in place
        fixed_wkb = pa.array(shapely.to_wkb(fixed, byte_order=1), type=pa.large_binary())
        wkb = pa.concat_arrays([wkb.cast(pa.large_binary()), fixed_wkb]).take(pa.array(take))
        if (shapely.get_type_id(fixed) == 6).any():
            types = ["MultiPolygon", "Polygon"]
        logger.debug("cut %d cells along the antimeridian or around a pole", wrapped.size)
    return _to_binary(wkb), tuple(bounds), types


def _unwrapped_polygon(cell: int):
    """A cell's polygon with continuous longitudes (maybe past ±180); a polar cell is closed along its pole."""
    import h3 as h3lib
    import shapely

    ring = np.array(h3lib.api.basic_int.cell_to_boundary(cell), dtype=np.float64)  # (lat, lng) pairs
    lat, lng = ring[:, 0], ring[:, 1]
    steps = (np.diff(lng, append=lng[0]) + 180.0) % 360.0 - 180.0
    if abs(steps.sum()) > 180.0:  # the ring winds round a pole
        return _polar_polygon(lat, lng, ascending=steps.sum() > 0)
    unwrapped = lng[0] + np.concatenate([[0.0], np.cumsum(steps[:-1])])
    return shapely.make_valid(shapely.polygons(np.column_stack([unwrapped, lat])))


def _polar_polygon(lat: np.ndarray, lng: np.ndarray, *, ascending: bool):
    """The polygon of a cell holding a pole, spanning [-180, 180] exactly (no seam to merge)."""
    import shapely

    if not ascending:
        lat, lng = lat[::-1], lng[::-1]
    start = int(np.argmin(lng))  # rotate so longitudes rise from the western edge to the eastern
    lat, lng = np.roll(lat, -start), np.roll(lng, -start)
    t = (180.0 - lng[-1]) / (lng[0] + 360.0 - lng[-1])
    seam_lat = lat[-1] + t * (lat[0] - lat[-1])
    pole = 90.0 if lat.mean() > 0 else -90.0
    xs = np.concatenate([[-180.0], lng, [180.0, 180.0, -180.0]])
    ys = np.concatenate([[seam_lat], lat, [seam_lat, pole, pole]])
    return shapely.make_valid(shapely.polygons(np.column_stack([xs, ys])))


def _shift(geoms: np.ndarray, dx: float) -> np.ndarray:
    import shapely

    return shapely.transform(geoms, lambda xy: xy + np.array([dx, 0.0]))


def _to_binary(wkb: pa.Array) -> pa.Array:
    if pa.types.is_large_binary(wkb.type) and wkb.nbytes <= _BINARY_MAX_BYTES:
        return wkb.cast(pa.binary())
    return wkb


def _file_bbox(bounds: tuple[np.ndarray, ...]) -> list[float]:
    return [float(bounds[0].min()), float(bounds[1].min()), float(bounds[2].max()), float(bounds[3].max())]
