"""Open rasters of any CRS and cut many square patches from them at once.

Extraction is block-ordered: points are grouped into regions aligned to the
raster's internal tiling, and each region is read once, however many patches
it holds. Per-point window reads (the prototype's way) decompress the same
COG tile dozens of times; this reads it once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import RasterioIOError
from rasterio.warp import transform as warp_transform
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from tqdm import tqdm

from vectorgeo.errors import InvalidInputError, RasterAccessError
from vectorgeo.geodesy import haversine_m
from vectorgeo.legends import NODATA_INDEX, Legend

__all__ = [
    "Patches",
    "extract_patches",
    "latlng_to_pixels",
    "open_raster",
    "pixel_sides_m",
    "pixel_size_m",
    "raster_bounds_latlng",
    "sample_classes",
]

logger = logging.getLogger(__name__)

_WGS84 = "EPSG:4326"


@dataclass(frozen=True)
class Patches:
    """Class-index patches cut around points.

    Attributes:
        classes: uint8 array ``(N, patch_px, patch_px)`` of class indices,
            :data:`NODATA_INDEX` at nodata pixels and everywhere in patches
            that cross the raster edge.
        valid: bool ``(N,)``; False where the patch crosses the raster edge or
            holds a nodata pixel.
    """

    classes: np.ndarray
    valid: np.ndarray

    @property
    def n_invalid(self) -> int:
        """Number of patches that cannot be used."""
        return int((~self.valid).sum())


def open_raster(path: str | Path) -> rasterio.DatasetReader:
    """Open a raster for reading and check it has what VectorGeo needs.

    Args:
        path: Local path of a GeoTIFF (or anything GDAL reads).

    Returns:
        An open dataset; close it (or use it as a context manager).

    Raises:
        RasterAccessError: when the file is missing, unreadable, or has no CRS.
    """
    path = Path(path)
    if not path.exists():
        raise RasterAccessError(
            f"raster {str(path)!r} does not exist; set VG_LANDCOVER / VG_DEM to an existing GeoTIFF "
            "or a bucket key, or leave them unset for the synthetic default"
        )
    try:
        dataset = rasterio.open(path)
    except RasterioIOError as exc:
        raise RasterAccessError(f"raster {str(path)!r} cannot be read as a raster: {exc}") from exc
    if dataset.crs is None:
        dataset.close()
        raise RasterAccessError(
            f"raster {str(path)!r} has no CRS, so its pixels cannot be placed on Earth; "
            "assign one, e.g. `gdal_edit.py -a_srs EPSG:4326 file.tif`"
        )
    return dataset


def latlng_to_pixels(
    dataset: rasterio.DatasetReader, lat: np.ndarray, lng: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Convert WGS84 coordinates to fractional pixel coordinates of a raster.

    Args:
        dataset: Open raster, any CRS.
        lat: Latitudes in degrees (EPSG:4326).
        lng: Longitudes in degrees (EPSG:4326).

    Returns:
        ``(row, col)`` float64 arrays; pixel ``(i, j)`` spans ``[i, i+1)``.
    """
    lat = np.asarray(lat, dtype=np.float64)
    lng = np.asarray(lng, dtype=np.float64)
    if dataset.crs.to_string() == _WGS84 or dataset.crs.to_epsg() == 4326:
        xs, ys = lng, lat
    else:
        xs, ys = (np.asarray(v) for v in warp_transform(_WGS84, dataset.crs, lng, lat))
    inv = ~dataset.transform
    col = inv.a * xs + inv.b * ys + inv.c
    row = inv.d * xs + inv.e * ys + inv.f
    return row, col


def raster_bounds_latlng(dataset: rasterio.DatasetReader) -> tuple[float, float, float, float]:
    """Return the raster footprint as ``(west, south, east, north)`` degrees."""
    return tuple(float(v) for v in transform_bounds(dataset.crs, _WGS84, *dataset.bounds, densify_pts=21))


def pixel_sides_m(dataset: rasterio.DatasetReader) -> tuple[float, float]:
    """Ground size ``(x, y)`` in metres of the pixel at the raster centre.

    Measured on the sphere between neighbouring pixel centres, so it holds in
    any CRS: degrees shrink with latitude, Web Mercator metres shrink by
    ``cos(lat)``, UTM metres are nearly true.
    """
    row, col = dataset.height // 2, dataset.width // 2
    cols = np.array([col, col + 1, col], dtype=np.float64) + 0.5
    rows = np.array([row, row, row + 1], dtype=np.float64) + 0.5
    t = dataset.transform
    xs, ys = t.a * cols + t.b * rows + t.c, t.d * cols + t.e * rows + t.f
    lng, lat = (np.asarray(v) for v in warp_transform(dataset.crs, _WGS84, xs, ys))
    x_m = haversine_m(lat[0], lng[0], lat[1], lng[1])
    y_m = haversine_m(lat[0], lng[0], lat[2], lng[2])
    return float(x_m), float(y_m)


def pixel_size_m(dataset: rasterio.DatasetReader) -> float:
    """Typical ground size of a pixel in metres: the geometric mean of :func:`pixel_sides_m`."""
    x_m, y_m = pixel_sides_m(dataset)
    return float(math.sqrt(x_m * y_m))


def extract_patches(
    dataset: rasterio.DatasetReader,
    lat: np.ndarray,
    lng: np.ndarray,
    legend: Legend,
    *,
    patch_px: int = 32,
    region_px: int = 2048,
    band: int = 1,
    progress: bool = False,
) -> Patches:
    """Cut ``patch_px`` square class-index patches centred on many points.

    The patch around a point whose pixel is ``(r, c)`` covers rows
    ``r - patch_px//2 .. r - patch_px//2 + patch_px - 1`` (same for columns).
    Points are grouped by region (a multiple of the raster's block size) and
    each region's patches come from one read of their bounding window.

    Args:
        dataset: Open land-cover raster, any CRS.
        lat: Latitudes of patch centres, degrees (EPSG:4326).
        lng: Longitudes of patch centres, degrees (EPSG:4326).
        legend: Maps the raster's codes to class indices.
        patch_px: Patch side in pixels of this raster.
        region_px: Side of the grouping regions in pixels (rounded up to a
            whole number of blocks).
        band: Band holding the class codes.
        progress: Show a progress bar over regions.

    Returns:
        :class:`Patches`, in the order of the input points.

    Raises:
        InvalidInputError: for a non-positive ``patch_px`` or mismatched inputs.
        UnknownClassCodeError: when a read region holds codes the legend lacks.
    """
    r0, c0, inside = _patch_origins(dataset, lat, lng, patch_px)
    n = r0.size
    classes = np.full((n, patch_px, patch_px), NODATA_INDEX, dtype=np.uint8)
    valid = np.zeros(n, dtype=bool)
    offsets = np.arange(patch_px)
    nodata = dataset.nodatavals[band - 1]
    groups = _grouped_windows(dataset, r0, c0, r0 + patch_px, c0 + patch_px, np.flatnonzero(inside), region_px, band)
    for members, window in tqdm(groups, disable=None if progress else True, desc="patch regions", unit="region"):
        block = legend.codes_to_indices(dataset.read(band, window=window), nodata=nodata)
        rr = (r0[members] - window.row_off)[:, None, None] + offsets[None, :, None]
        cc = (c0[members] - window.col_off)[:, None, None] + offsets[None, None, :]
        cut = block[rr, cc]
        classes[members] = cut
        valid[members] = ~(cut == NODATA_INDEX).any(axis=(1, 2))
    return Patches(classes, valid)


def dem_patches(
    dem: rasterio.DatasetReader,
    landcover: rasterio.DatasetReader,
    lat: np.ndarray,
    lng: np.ndarray,
    *,
    patch_px: int = 32,
    stride: int = 1,
    region_px: int = 2048,
    band: int = 1,
) -> np.ndarray:
    """Elevation resampled onto the pixels of each land-cover patch.

    The DEM may have another CRS and grid than the land cover (SRTM in
    EPSG:4326 beside NLCD in UTM): each land-cover pixel centre of the patch
    that :func:`extract_patches` cuts for the same point takes the value of
    the DEM pixel under it (nearest). Only the four corner centres of a patch
    go through the CRS transform; the rest are interpolated bilinearly, which
    over a patch of a few km is exact to a small fraction of a pixel. DEM
    reads are block-ordered, as for the land cover.

    Args:
        dem: Open DEM, any CRS, values in metres.
        landcover: The land-cover raster whose patch grid to follow.
        lat: Latitudes of patch centres, degrees (EPSG:4326).
        lng: Longitudes of patch centres, degrees (EPSG:4326).
        patch_px: Patch side in land-cover pixels.
        stride: Sample every ``stride``-th pixel (the centre of each
            ``stride`` x ``stride`` block): a cheap mean elevation needs far
            fewer samples than a model channel.
        region_px: Side of the DEM read regions in pixels.
        band: DEM band.

    Returns:
        float32 ``(N, S, S)`` metres with ``S = ceil(patch_px / stride)``;
        NaN at DEM nodata, off the DEM, and everywhere in patches off the
        land-cover raster.
    """
    r0, c0, inside = _patch_origins(landcover, lat, lng, patch_px)
    offsets = np.arange(0, patch_px, stride) + min(stride, patch_px) / 2
    out = np.full((r0.size, offsets.size, offsets.size), np.nan, dtype=np.float32)
    idx = np.flatnonzero(inside)
    if idx.size == 0:
        return out
    dem_rows, dem_cols = _dem_pixels_of_patches(dem, landcover, r0[idx], c0[idx], offsets)
    nodata = dem.nodatavals[band - 1]
    r_min, c_min = dem_rows.min(axis=(1, 2)), dem_cols.min(axis=(1, 2))
    r_max, c_max = dem_rows.max(axis=(1, 2)) + 1, dem_cols.max(axis=(1, 2)) + 1
    touches = (r_max > 0) & (c_max > 0) & (r_min < dem.height) & (c_min < dem.width)
    r_min, c_min = np.maximum(r_min, 0), np.maximum(c_min, 0)
    r_max, c_max = np.minimum(r_max, dem.height), np.minimum(c_max, dem.width)
    groups = _grouped_windows(dem, r_min, c_min, r_max, c_max, np.flatnonzero(touches), region_px, band)
    for members, window in groups:
        block = dem.read(band, window=window).astype(np.float32)
        if nodata is not None:
            block[block == np.float32(nodata)] = np.nan
        h, w = block.shape
        rr, cc = dem_rows[members] - window.row_off, dem_cols[members] - window.col_off
        values = block[np.clip(rr, 0, h - 1), np.clip(cc, 0, w - 1)]
        values[~((rr >= 0) & (rr < h) & (cc >= 0) & (cc < w))] = np.nan
        out[idx[members]] = values
    return out


def _dem_pixels_of_patches(
    dem: rasterio.DatasetReader, landcover: rasterio.DatasetReader, r0: np.ndarray, c0: np.ndarray, offsets: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """DEM (row, col) under the land-cover points ``(r0 + offsets, c0 + offsets)`` of each patch, int64.

    Same CRS and north-up grids: a DEM row depends only on the land-cover row
    (and a column on the column), so the arrays are ``(n, P, 1)`` and
    ``(n, 1, P)`` and broadcast. Otherwise the four corner centres go through
    the CRS transform and the rest are interpolated: ``(n, P, P)`` each.
    """
    t, inv = landcover.transform, ~dem.transform
    if dem.crs == landcover.crs and t.b == t.d == 0 and inv.b == inv.d == 0:
        ys = t.e * (r0[:, None, None] + offsets[None, :, None]) + t.f
        xs = t.a * (c0[:, None, None] + offsets[None, None, :]) + t.c
        return np.floor(inv.e * ys + inv.f).astype(np.int64), np.floor(inv.a * xs + inv.c).astype(np.int64)
    corner = np.array([offsets[0], offsets[-1]])
    rows = r0[:, None, None] + corner[None, :, None] + np.zeros((1, 1, 2))
    cols = c0[:, None, None] + corner[None, None, :] + np.zeros((1, 2, 1))
    xs, ys = t.a * cols + t.b * rows + t.c, t.d * cols + t.e * rows + t.f
    if dem.crs != landcover.crs:
        xs, ys = (
            np.asarray(v).reshape(rows.shape) for v in warp_transform(landcover.crs, dem.crs, xs.ravel(), ys.ravel())
        )
    frow = _bilinear((inv.d * xs + inv.e * ys + inv.f).astype(np.float32), offsets.size)
    fcol = _bilinear((inv.a * xs + inv.b * ys + inv.c).astype(np.float32), offsets.size)
    return np.floor(frow).astype(np.int64), np.floor(fcol).astype(np.int64)


def _bilinear(corners: np.ndarray, size: int) -> np.ndarray:
    """Interpolate ``(n, 2, 2)`` corner values over an ``(n, size, size)`` grid of pixel centres."""
    w = np.linspace(0.0, 1.0, size, dtype=corners.dtype) if size > 1 else np.zeros(1, dtype=corners.dtype)
    v, u = w[None, :, None], w[None, None, :]
    top = corners[:, :1, :1] * (1 - u) + corners[:, :1, 1:] * u
    bottom = corners[:, 1:, :1] * (1 - u) + corners[:, 1:, 1:] * u
    return top * (1 - v) + bottom * v


def _patch_origins(
    dataset: rasterio.DatasetReader, lat: np.ndarray, lng: np.ndarray, patch_px: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-left pixel of each point's patch, and whether the patch lies inside the raster."""
    if patch_px < 1:
        raise InvalidInputError(f"patch_px must be >= 1, got {patch_px}")
    lat = np.asarray(lat, dtype=np.float64).ravel()
    lng = np.asarray(lng, dtype=np.float64).ravel()
    if lat.shape != lng.shape:
        raise InvalidInputError(f"lat and lng differ in length: {lat.size} vs {lng.size}")
    if lat.size == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, np.empty(0, dtype=bool)
    row, col = latlng_to_pixels(dataset, lat, lng)
    finite = np.isfinite(row) & np.isfinite(col)
    half = patch_px // 2
    r0 = np.where(finite, np.floor(row), -1e9).astype(np.int64) - half
    c0 = np.where(finite, np.floor(col), -1e9).astype(np.int64) - half
    inside = finite & (r0 >= 0) & (c0 >= 0) & (r0 + patch_px <= dataset.height) & (c0 + patch_px <= dataset.width)
    return r0, c0, inside


def _grouped_windows(
    dataset: rasterio.DatasetReader,
    r_min: np.ndarray,
    c_min: np.ndarray,
    r_max: np.ndarray,
    c_max: np.ndarray,
    idx: np.ndarray,
    region_px: int,
    band: int,
) -> Iterator[tuple[np.ndarray, Window]]:
    """Group items ``idx`` (pixel boxes ``[r_min, r_max) x [c_min, c_max)``) by raster region.

    Regions are whole numbers of the raster's blocks, keyed by each box's
    top-left pixel; each yields its members and the one window that covers
    them all, so every region is read once.
    """
    if idx.size == 0:
        return
    block_h, block_w = dataset.block_shapes[band - 1]
    step_r = max(block_h, math.ceil(region_px / block_h) * block_h)
    step_c = max(block_w, math.ceil(region_px / block_w) * block_w)
    region = (r_min[idx] // step_r) * (dataset.width // step_c + 1) + c_min[idx] // step_c
    order = np.argsort(region, kind="stable")
    idx, region = idx[order], region[order]
    starts = np.flatnonzero(np.r_[True, region[1:] != region[:-1]])
    for start, end in zip(starts, np.r_[starts[1:], idx.size], strict=True):
        members = idx[start:end]
        top, left = int(r_min[members].min()), int(c_min[members].min())
        bottom, right = int(r_max[members].max()), int(c_max[members].max())
        yield members, Window(left, top, right - left, bottom - top)


def sample_classes(
    dataset: rasterio.DatasetReader,
    lat: np.ndarray,
    lng: np.ndarray,
    legend: Legend,
    *,
    band: int = 1,
    progress: bool = False,
) -> np.ndarray:
    """Class index of the pixel under each point (uint8).

    Points off the raster or on nodata get :data:`NODATA_INDEX`. Uses the same
    block-ordered reads as :func:`extract_patches`.
    """
    return extract_patches(dataset, lat, lng, legend, patch_px=1, band=band, progress=progress).classes[:, 0, 0]
