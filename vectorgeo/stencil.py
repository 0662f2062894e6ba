"""H3 stencil: every cell at a resolution whose centre lies on land.

Candidates come from h3's polygon fill (C) over the area of interest, cut
into tiles of at most 30 degrees so no polygon edge is ambiguous, or, for
near-global areas, from enumerating all cells; centres come from h3ronpy's
vectorised ``cells_to_coordinates``. No step loops over cells in Python.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from shapely.geometry import box, shape
from tqdm import tqdm

from vectorgeo.errors import InvalidInputError
from vectorgeo.h3_arrays import cells_to_latlng
from vectorgeo.land import is_land
from vectorgeo.legends import Legend

if TYPE_CHECKING:
    from rasterio.io import DatasetReader

__all__ = [
    "STENCIL_SCHEMA",
    "aoi_to_cells",
    "bounds_to_geometry",
    "footprint_to_geometry",
    "build_stencil",
    "cells_to_latlng",
    "check_resolution",
    "parse_aoi",
    "read_stencil",
    "write_stencil",
]

logger = logging.getLogger(__name__)

STENCIL_SCHEMA = pa.schema([("h3", pa.uint64()), ("lat", pa.float64()), ("lng", pa.float64())])

_TILE_DEG = 30
_GLOBAL_FRACTION = 0.4  # above this share of the globe's bbox area, enumerate every cell instead


def check_resolution(h3_resolution: int) -> int:
    """Return the resolution if it is a valid H3 resolution (0..15).

    Raises:
        InvalidInputError: otherwise, naming the value.
    """
    if isinstance(h3_resolution, bool) or not isinstance(h3_resolution, (int, np.integer)):
        raise InvalidInputError(f"h3_resolution must be an integer 0..15, got {h3_resolution!r}")
    if not 0 <= int(h3_resolution) <= 15:
        raise InvalidInputError(f"h3_resolution must be between 0 and 15, got {h3_resolution}")
    return int(h3_resolution)


def bounds_to_geometry(west: float, south: float, east: float, north: float) -> shapely.Geometry:
    """Turn ``(west, south, east, north)`` degrees into a polygon.

    A box with ``west > east`` crosses the antimeridian and becomes two boxes.
    """
    if not (-90 <= south < north <= 90):
        raise InvalidInputError(f"bbox south/north must satisfy -90 <= south < north <= 90, got {south}, {north}")
    if not (-180 <= west <= 180 and -180 <= east <= 180) or west == east:
        raise InvalidInputError(f"bbox west/east must lie in -180..180 and differ, got {west}, {east}")
    if west > east:
        return shapely.MultiPolygon([box(west, south, 180, north), box(-180, south, east, north)])
    return box(west, south, east, north)


def parse_aoi(text: str) -> shapely.Geometry:
    """Parse an area of interest given on the command line.

    Args:
        text: ``"west,south,east,north"`` in degrees, inline GeoJSON, or the
            path of a GeoJSON file (a geometry, Feature or FeatureCollection,
            coordinates in EPSG:4326 ``[lng, lat]`` order).

    Returns:
        A shapely (Multi)Polygon in lng/lat degrees.

    Raises:
        InvalidInputError: when the text is none of these, or has no area.
    """
    text = text.strip()
    parts = text.split(",")
    if len(parts) == 4 and not text.startswith("{"):
        try:
            west, south, east, north = (float(p) for p in parts)
        except ValueError:
            raise InvalidInputError(f"AOI bbox {text!r} must be four numbers: west,south,east,north") from None
        return bounds_to_geometry(west, south, east, north)
    if not text.startswith("{"):
        path = Path(text).expanduser()
        if not path.is_file():
            raise InvalidInputError(
                f"AOI {text!r} is neither a bbox 'west,south,east,north', inline GeoJSON, nor an existing file"
            )
        text = path.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"AOI GeoJSON is not valid JSON: {exc}") from exc
    features = data.get("features") if data.get("type") == "FeatureCollection" else [data]
    try:
        geoms = [shape(f.get("geometry", f)) for f in features]
    except (AttributeError, KeyError, TypeError, ValueError, shapely.errors.GeometryTypeError) as exc:
        raise InvalidInputError(f"AOI GeoJSON holds no usable geometry: {exc}") from exc
    geom = shapely.union_all(geoms)
    if geom.is_empty or geom.area == 0:
        raise InvalidInputError("AOI GeoJSON has no area; give a Polygon or MultiPolygon")
    return geom


def _tiles(aoi: shapely.Geometry) -> Iterator[shapely.Geometry]:
    west, south, east, north = aoi.bounds
    for lng0 in range(math.floor(west / _TILE_DEG) * _TILE_DEG, math.ceil(east), _TILE_DEG):
        for lat0 in range(math.floor(south / _TILE_DEG) * _TILE_DEG, math.ceil(north), _TILE_DEG):
            piece = _polygonal(aoi.intersection(box(lng0, lat0, lng0 + _TILE_DEG, lat0 + _TILE_DEG)))
            if piece is not None:
                yield piece


def _polygonal(geom: shapely.Geometry) -> shapely.Geometry | None:
    """The polygon parts of a geometry (a tile cut can leave stray edges and points), or None."""
    parts = [p for p in shapely.get_parts(geom) if p.geom_type in ("Polygon", "MultiPolygon") and p.area > 0]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else shapely.MultiPolygon([q for p in parts for q in shapely.get_parts(p)])


def footprint_to_geometry(west: float, south: float, east: float, north: float) -> shapely.Geometry:
    """A raster footprint in degrees as a polygon, wrapped into -180..180.

    Unlike :func:`bounds_to_geometry` (which validates what a user typed),
    this accepts what real rasters have: edges half a pixel past +-180,
    longitudes beyond 180, a box crossing the antimeridian (``west > east``).
    """
    south, north = max(south, -90.0), min(north, 90.0)
    if west > east:
        east += 360.0
    if east - west >= 360.0:
        return box(-180.0, south, 180.0, north)
    shift = 360.0 * math.floor((west + 180.0) / 360.0)
    west, east = west - shift, east - shift  # now -180 <= west < 180
    if east <= 180.0:
        return box(west, south, east, north)
    return shapely.MultiPolygon([box(west, south, 180.0, north), box(-180.0, south, east - 360.0, north)])


def _all_cells(h3_resolution: int) -> Iterator[np.ndarray]:
    import h3.api.numpy_int as h3

    parent_res = max(0, h3_resolution - 7)  # chunks of at most 7**7 cells
    parents = h3.get_res0_cells()
    if parent_res:
        parents = np.concatenate([np.asarray(h3.cell_to_children(p, parent_res)) for p in parents])
    for parent in parents:
        yield np.asarray(h3.cell_to_children(parent, h3_resolution), dtype=np.uint64)


def aoi_to_cells(aoi: shapely.Geometry | None, h3_resolution: int) -> Iterator[np.ndarray]:
    """Yield chunks of the H3 cells whose centres lie inside an AOI.

    Args:
        aoi: (Multi)Polygon in lng/lat degrees; ``None`` means the whole globe.
        h3_resolution: 0..15.

    Yields:
        uint64 arrays of cell ids; together, each cell exactly once.
    """
    import h3.api.numpy_int as h3

    check_resolution(h3_resolution)
    bbox_area = sum(part.envelope.area for part in shapely.get_parts(aoi)) if aoi is not None else 0.0
    if aoi is None or bbox_area >= _GLOBAL_FRACTION * 360 * 180:
        for cells in _all_cells(h3_resolution):
            if aoi is not None:
                lat, lng = cells_to_latlng(cells)
                cells = cells[shapely.contains_xy(aoi, lng, lat)]
            yield cells
        return
    for piece in _tiles(aoi):
        yield np.asarray(h3.geo_to_cells(piece, h3_resolution), dtype=np.uint64)


def build_stencil(
    h3_resolution: int,
    *,
    aoi: shapely.Geometry | None = None,
    dataset: DatasetReader | None = None,
    legend: Legend | None = None,
    progress: bool = True,
) -> pa.Table:
    """All H3 cells whose centre is on land, within the AOI and the raster.

    Args:
        h3_resolution: 0..15.
        aoi: Optional (Multi)Polygon in lng/lat degrees.
        dataset: Optional open land-cover raster; its footprint bounds the
            stencil and its sea/nodata pixels are not land.
        legend: The raster's legend (required with ``dataset``).
        progress: Show progress bars.

    Returns:
        Table with ``h3`` (uint64), ``lat``, ``lng`` (float64), sorted by ``h3``.

    Raises:
        InvalidInputError: bad resolution, or an AOI outside the raster.
    """
    from vectorgeo.raster import raster_bounds_latlng

    check_resolution(h3_resolution)
    region = aoi
    if dataset is not None:
        footprint = footprint_to_geometry(*raster_bounds_latlng(dataset))
        if aoi is not None:
            region = aoi.intersection(footprint)
            if region.is_empty or region.area == 0:
                raise InvalidInputError(
                    f"AOI with bounds {tuple(round(v, 4) for v in aoi.bounds)} does not overlap the raster "
                    f"footprint {tuple(round(v, 4) for v in footprint.bounds)} (west, south, east, north); "
                    "move the AOI or use another raster"
                )
        else:
            region = footprint
    kept_cells, kept_lat, kept_lng = [], [], []
    n_candidates = 0
    for cells in tqdm(
        aoi_to_cells(region, h3_resolution), disable=None if progress else True, desc="stencil", unit="chunk"
    ):
        n_candidates += cells.size
        lat, lng = cells_to_latlng(cells)
        land = is_land(lat, lng, dataset, legend)
        kept_cells.append(cells[land])
        kept_lat.append(lat[land])
        kept_lng.append(lng[land])
    cells = np.concatenate(kept_cells) if kept_cells else np.empty(0, np.uint64)
    lat = np.concatenate(kept_lat) if kept_lat else np.empty(0)
    lng = np.concatenate(kept_lng) if kept_lng else np.empty(0)
    cells, first = np.unique(cells, return_index=True)
    logger.info("stencil res %d: %d land cells of %d candidates", h3_resolution, cells.size, n_candidates)
    return pa.table([cells, lat[first], lng[first]], schema=STENCIL_SCHEMA)


def write_stencil(table: pa.Table, path: str | Path, metadata: dict | None = None) -> Path:
    """Write a stencil table to Parquet, with ``metadata`` stored as JSON."""
    schema = table.schema.with_metadata({b"vectorgeo": json.dumps(metadata or {}).encode()})
    pq.write_table(table.cast(schema), path, compression="zstd")
    return Path(path)


def read_stencil(path: str | Path) -> pa.Table:
    """Read a stencil written by :func:`write_stencil`."""
    table = pq.read_table(path)
    missing = {"h3", "lat", "lng"} - set(table.column_names)
    if missing:
        raise InvalidInputError(f"{str(path)!r} is not a stencil: columns {sorted(missing)} are missing")
    return table
