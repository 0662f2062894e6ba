"""H3 cells drawn onto a regular lon/lat grid, written as Cloud-Optimised GeoTIFFs.

Each pixel takes the value of the H3 cell (at the cells' resolution) that
contains the pixel's centre, or nodata where that cell is not in the set.
The grid is EPSG:4326, north-up, with square pixels in degrees, by default
``pixels_per_edge`` pixels to a cell edge east-west at the cells' mean
latitude, so hexagons stay recognisable on a map.

Rows are processed in blocks of about :data:`BLOCK_PIXELS` pixels: pixel
centres go through h3ronpy's vectorised ``coordinates_to_cells`` and the ids
are looked up in the sorted input ids with ``np.searchsorted``. Memory is
bounded by one block (about 50 bytes a pixel) plus the input cells, whatever
the size of the grid.
"""

from __future__ import annotations

import logging
import math
import os
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from vectorgeo.errors import InvalidInputError, RasterAccessError
from vectorgeo.geodesy import EARTH_RADIUS_M
from vectorgeo.h3_arrays import cells_to_latlng, check_cells

if TYPE_CHECKING:
    from affine import Affine

__all__ = [
    "BLOCK_PIXELS",
    "COG_TILE_PX",
    "MAX_GRID_PIXELS",
    "GridSpec",
    "grid_for_cells",
    "rasterise_cells",
    "validate_cog",
    "write_cells_cog",
]

logger = logging.getLogger(__name__)

MAX_GRID_PIXELS = 400_000_000
"""Default ceiling on a grid's pixel count (400 MB as uint8, before compression)."""

BLOCK_PIXELS = 2**21
"""Pixels rasterised at once (about 100 MB of working memory)."""

COG_TILE_PX = 512
"""Internal tile size of the COGs, pixels; overviews go down until the image fits one tile."""

_METRES_PER_DEGREE = EARTH_RADIUS_M * math.pi / 180.0
_AREA_SAMPLE = 1000  # cells whose mean area sets the default pixel size
_MIN_COS_LAT = 0.05  # keeps the default pixel finite near the poles (lat ~87°)


@dataclass(frozen=True)
class GridSpec:
    """A north-up EPSG:4326 pixel grid.

    Attributes:
        transform: Affine pixel → lon/lat transform; ``transform.e`` is ``-pixel_size_deg``.
        width: Columns.
        height: Rows.
        pixel_size_deg: Pixel side, degrees, the same in lon and lat.
        crs: Always ``"EPSG:4326"``.
    """

    transform: Affine
    width: int
    height: int
    pixel_size_deg: float
    crs: str = "EPSG:4326"

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(west, south, east, north)``, degrees."""
        t = self.transform
        return t.c, t.f + t.e * self.height, t.c + t.a * self.width, t.f


def grid_for_cells(
    h3: np.ndarray,
    *,
    pixels_per_edge: float = 4.0,
    pixel_size_deg: float | None = None,
    margin_px: int = 2,
    max_pixels: int = MAX_GRID_PIXELS,
) -> GridSpec:
    """The grid covering the cells' hexagons plus a margin, aligned to multiples of the pixel size.

    Args:
        h3: uint64 H3 ids, all at one resolution.
        pixels_per_edge: Pixels to a cell edge (east-west, at the cells' mean latitude) when
            ``pixel_size_deg`` is not given. The edge is that of the cells' mean actual area; north-south
            an edge gets ``pixels_per_edge * cos(lat)`` pixels. The size is rounded down to 90/N degrees.
        pixel_size_deg: Pixel side in degrees, overriding ``pixels_per_edge``; a divisor of 90 lets the grid
            reach the antimeridian and the poles exactly.
        margin_px: Nodata pixels around the cells.
        max_pixels: Largest grid accepted.

    Returns:
        The grid, clipped to [-180, 180] x [-90, 90]. A cell crossing the antimeridian is covered only
        on its centre's side of it.

    Raises:
        InvalidInputError: Bad cells or sizes, or a grid of more than ``max_pixels`` pixels.
    """
    from affine import Affine
    from h3ronpy import cells_area_m2
    from h3ronpy.vector import cells_bounds_arrays

    h3, _ = check_cells(h3, one_resolution=True)
    arrow_cells = pa.array(h3, type=pa.uint64())
    bounds = pa.record_batch(cells_bounds_arrays(arrow_cells))
    west, south, east, north = (np.array(bounds.column(k), dtype=np.float64) for k in ("minx", "miny", "maxx", "maxy"))
    lat, lng = cells_to_latlng(h3)
    wrapped = east - west > 180.0  # crosses the antimeridian: keep the centre's side
    if wrapped.any():
        half = (north - south)[wrapped] / np.maximum(np.cos(np.radians(lat[wrapped])), _MIN_COS_LAT)
        west[wrapped], east[wrapped] = lng[wrapped] - half, lng[wrapped] + half

    if pixel_size_deg is None:
        if not pixels_per_edge > 0:
            raise InvalidInputError(f"pixels_per_edge must be positive, got {pixels_per_edge}")
        sample = arrow_cells[:: max(1, len(arrow_cells) // _AREA_SAMPLE)]  # exact areas are slow (~9 µs a cell)
        area_m2 = float(np.mean(np.asarray(pa.array(cells_area_m2(sample)))))
        edge_m = math.sqrt(2.0 * area_m2 / (3.0 * math.sqrt(3.0)))  # regular hexagon of that area
        cos_lat = max(math.cos(math.radians(float(np.mean(lat)))), _MIN_COS_LAT)
        pixel_size_deg = edge_m / pixels_per_edge / (_METRES_PER_DEGREE * cos_lat)
        pixel_size_deg = 90.0 / math.ceil(90.0 / pixel_size_deg)  # divides 90 and 180: grids can meet ±180, ±90
    elif not (math.isfinite(pixel_size_deg) and 0 < pixel_size_deg <= 360):
        raise InvalidInputError(f"pixel_size_deg must be in (0, 360], got {pixel_size_deg}")
    px = float(pixel_size_deg)

    col0 = max(math.floor(west.min() / px) - margin_px, math.ceil(-180.0 / px - 1e-9))
    col1 = min(math.ceil(east.max() / px) + margin_px, math.floor(180.0 / px + 1e-9))
    row0 = max(math.floor(south.min() / px) - margin_px, math.ceil(-90.0 / px - 1e-9))
    row1 = min(math.ceil(north.max() / px) + margin_px, math.floor(90.0 / px + 1e-9))
    width, height = col1 - col0, row1 - row0
    if width * height > max_pixels:
        needed = px * math.sqrt(width * height / max_pixels)
        raise InvalidInputError(
            f"a grid of {width} x {height} = {width * height:,} pixels at {px:.3g}° exceeds max_pixels={max_pixels:,}; "
            f"pass pixel_size_deg >= {needed:.3g} (or fewer pixels_per_edge), split the cells, or raise max_pixels"
        )
    return GridSpec(Affine(px, 0.0, col0 * px, 0.0, -px, row1 * px), width, height, px)


def rasterise_cells(
    h3: np.ndarray,
    values: np.ndarray,
    grid: GridSpec,
    *,
    nodata: float,
    rows_per_block: int | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """The grid's pixels in row blocks, each the value of the cell holding its centre.

    Args:
        h3: uint64 H3 ids, all at one resolution, no duplicates.
        values: One value per cell; the blocks have its dtype.
        grid: The grid to fill (see :func:`grid_for_cells`).
        nodata: Value of pixels whose cell is not in ``h3``.
        rows_per_block: Rows per block; default about :data:`BLOCK_PIXELS` pixels, in multiples of
            :data:`COG_TILE_PX` rows when the grid is narrow enough.

    Returns:
        An iterator of ``(row_offset, block)`` with ``block`` of shape ``(rows, grid.width)``, top to bottom.

    Raises:
        InvalidInputError: Bad or duplicate cells, or ``values`` not one per cell (checked at the call).
    """
    h3, res = check_cells(h3, one_resolution=True)
    values = np.asarray(values).ravel()
    if values.shape != h3.shape:
        raise InvalidInputError(f"{values.size} values for {h3.size} cells; give one value per cell")
    order = np.argsort(h3, kind="stable")
    cells, values = h3[order], values[order]
    duplicated = cells[1:] == cells[:-1]
    if duplicated.any():
        raise InvalidInputError(f"{int(duplicated.sum())} duplicate cells, first {int(cells[1:][duplicated][0]):#x}")
    if rows_per_block is None:
        rows_per_block = max(1, BLOCK_PIXELS // grid.width)
        if rows_per_block >= COG_TILE_PX:
            rows_per_block -= rows_per_block % COG_TILE_PX
    elif rows_per_block < 1:
        raise InvalidInputError(f"rows_per_block must be at least 1, got {rows_per_block}")
    return _blocks(cells, values, res, grid, values.dtype.type(nodata), rows_per_block)


def _blocks(
    cells: np.ndarray, values: np.ndarray, res: int, grid: GridSpec, nodata, rows: int
) -> Iterator[tuple[int, np.ndarray]]:
    from h3ronpy.vector import coordinates_to_cells

    t = grid.transform
    lng = t.c + t.a * (np.arange(grid.width) + 0.5)
    lat_rows = t.f + t.e * (np.arange(grid.height) + 0.5)
    for row0 in range(0, grid.height, rows):
        lat = lat_rows[row0 : row0 + rows]
        n = lat.size
        found = np.asarray(
            pa.array(coordinates_to_cells(np.repeat(lat, grid.width), np.tile(lng, n), res)), dtype=np.uint64
        )
        idx = np.searchsorted(cells, found)
        np.minimum(idx, cells.size - 1, out=idx)
        hit = cells[idx] == found
        block = np.full(found.size, nodata, dtype=values.dtype)
        block[hit] = values[idx[hit]]
        yield row0, block.reshape(n, grid.width)


def write_cells_cog(
    path: str | os.PathLike,
    h3: np.ndarray,
    values: np.ndarray,
    grid: GridSpec,
    *,
    dtype: str | np.dtype,
    nodata: float,
    colormap: dict[int, tuple[int, int, int, int]] | None = None,
    band_description: str = "",
    tags: dict[str, str] | None = None,
    resampling: str = "nearest",
    rows_per_block: int | None = None,
) -> Path:
    """Rasterise cells onto a grid and write a one-band COG, atomically.

    The grid goes block by block into a temporary tiled GeoTIFF, which GDAL's COG driver copies to a
    COG with 512 x 512 deflate tiles and internal overviews, then the COG replaces ``path``.

    Args:
        path: Destination ``.tif``.
        h3: uint64 H3 ids, all at one resolution, no duplicates.
        values: One value per cell, representable in ``dtype``.
        grid: From :func:`grid_for_cells`.
        dtype: Band dtype, e.g. ``"uint8"`` for classes, ``"float32"`` for probabilities.
        nodata: Value outside the cells (e.g. 255 for classes, NaN for probabilities).
        colormap: Class → RGBA colour table (uint8/uint16 bands only).
        band_description: Band name shown by GIS tools.
        tags: Dataset metadata (str → str).
        resampling: Overview resampling: ``"nearest"`` or ``"mode"`` for classes, ``"average"`` for values.
        rows_per_block: See :func:`rasterise_cells`.

    Returns:
        The path written.

    Raises:
        InvalidInputError: Bad cells, values that ``dtype`` cannot hold, a colormap on a non-integer band,
            or an unknown resampling.
    """
    import rasterio
    from rasterio.shutil import copy
    from rasterio.windows import Window

    dtype = np.dtype(dtype)
    values = _check_values(values, dtype, nodata)
    resampling = resampling.lower()
    if resampling not in _OVERVIEW_RESAMPLING:
        raise InvalidInputError(f"unknown resampling {resampling!r}; use one of {sorted(_OVERVIEW_RESAMPLING)}")
    if colormap and dtype not in (np.uint8, np.uint16):
        raise InvalidInputError(f"a colormap needs a uint8 or uint16 band, got {dtype}")
    blocks = rasterise_cells(h3, values, grid, nodata=nodata, rows_per_block=rows_per_block)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stem = path.parent / f".{path.name}.{uuid.uuid4().hex}"
    tiled, cog = stem.with_name(stem.name + ".tiled.tif"), stem.with_name(stem.name + ".cog.tif")
    profile = {
        "driver": "GTiff",
        "width": grid.width,
        "height": grid.height,
        "count": 1,
        "dtype": dtype.name,
        "crs": grid.crs,
        "transform": grid.transform,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": COG_TILE_PX,
        "blockysize": COG_TILE_PX,
        "compress": "deflate",
        "zlevel": 1,  # temporary file: speed over size
        "bigtiff": "if_safer",
    }
    try:
        with rasterio.open(tiled, "w", **profile) as dst:
            for row0, block in blocks:
                dst.write(block, 1, window=Window(0, row0, grid.width, block.shape[0]))
            if colormap:
                dst.write_colormap(1, colormap)
            dst.set_band_description(1, band_description)
            dst.update_tags(**(tags or {}), OVERVIEW_RESAMPLING=resampling.upper())  # read by rio-tiler
        predictor = "3" if dtype.kind == "f" else "2"
        # GDAL stops at one tile; a map smaller than a tile still gets one overview level, so every class map
        # a user opens has the same structure (and QGIS shows it the same way at every zoom)
        longest = max(grid.width, grid.height)
        overviews = {"overview_count": max(1, math.ceil(math.log2(longest / COG_TILE_PX)))} if longest > 1 else {}
        copy(
            tiled,
            cog,
            driver="COG",
            blocksize=COG_TILE_PX,
            compress="DEFLATE",
            predictor=predictor,
            overview_resampling=resampling.upper(),
            bigtiff="IF_SAFER",
            num_threads="ALL_CPUS",
            **overviews,
        )
        os.replace(cog, path)
    finally:
        tiled.unlink(missing_ok=True)
        cog.unlink(missing_ok=True)
    logger.info("wrote %d x %d COG (%s) to %s", grid.width, grid.height, dtype.name, path)
    return path


def validate_cog(path: str | os.PathLike) -> None:
    """Check that a file is a valid Cloud-Optimised GeoTIFF (rio-cogeo's rules).

    Raises:
        InvalidInputError: Not a valid COG; the message lists rio-cogeo's errors.
        RasterAccessError: The file cannot be opened.
    """
    from rasterio.errors import RasterioIOError
    from rio_cogeo.cogeo import cog_validate

    try:
        is_valid, errors, cog_warnings = cog_validate(str(path), quiet=True)
    except RasterioIOError as exc:
        raise RasterAccessError(f"cannot open {path} to validate it as a COG: {exc}") from exc
    for message in cog_warnings:
        logger.warning("%s: %s", path, message)
    if not is_valid:
        raise InvalidInputError(f"{path} is not a valid COG: {'; '.join(errors)}; rewrite it with write_cells_cog")


_OVERVIEW_RESAMPLING = frozenset({"nearest", "mode", "average", "rms", "bilinear", "cubic", "cubicspline", "lanczos"})


def _check_values(values: np.ndarray, dtype: np.dtype, nodata: float) -> np.ndarray:
    values = np.asarray(values)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if not (np.isfinite(nodata) and float(nodata).is_integer() and info.min <= nodata <= info.max):
            raise InvalidInputError(f"nodata {nodata} does not fit {dtype}; use e.g. 255 for uint8")
        if values.size and (
            not np.isfinite(values).all()
            or values.min() < info.min
            or values.max() > info.max
            or not np.array_equal(values, np.round(values))
        ):
            raise InvalidInputError(f"values in [{values.min()}, {values.max()}] do not fit {dtype} as integers")
        if (values == nodata).any():
            warnings.warn(f"{int((values == nodata).sum())} cells have the nodata value {nodata}", stacklevel=3)
    elif dtype.kind != "f":
        raise InvalidInputError(f"dtype must be an integer or float type, got {dtype}")
    return values.astype(dtype, copy=False)
