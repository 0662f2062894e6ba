"""Deterministic synthetic land cover (Copernicus LC100 codes) and DEM, written as COGs.

This is the embedded default raster pair: the demo and the test suite run on it
with no download. The grid is LC100's native one (EPSG:4326, pixels of exactly
1/1008 degree with edges on multiples of 1/1008 degree). The coastline comes from
the real 1 km global land mask, so the synthetic sea agrees with the land mask the
stencil also uses. Everything else is built from seeded FFT-filtered noise fields:
a DEM rising from the coast to a mountain range, rivers in carved valleys running
to the sea, lakes, wetlands, forests zoned by elevation, cropland parcels on low
flat land, towns near the coast and rivers, and snow on the highest peaks.

Bounds tuples follow the GeoJSON/rasterio convention ``(min_lng, min_lat, max_lng,
max_lat)`` (west, south, east, north), unlike Python signatures, which take
``lat, lng``.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.io import MemoryFile
from rasterio.transform import Affine
from scipy import fft, ndimage

from vectorgeo.errors import InvalidInputError
from vectorgeo.legends import BUILTIN_LEGENDS, hex_to_rgb

__all__ = [
    "DEFAULT_BOUNDS",
    "DEM_NODATA",
    "LANDCOVER_NODATA",
    "MAX_PIXELS",
    "GENERATOR_VERSION",
    "PIXELS_PER_DEGREE",
    "bounds_to_grid",
    "synthesize_landscape",
    "write_landcover_cog",
    "write_synthetic_rasters",
]

logger = logging.getLogger(__name__)

PIXELS_PER_DEGREE = 1008
"""LC100's grid: pixel size is exactly 1/1008 degree (about 100 m)."""

DEFAULT_BOUNDS = (-124.6, 44.0, -122.6, 45.5)
"""Default AOI ``(min_lng, min_lat, max_lng, max_lat)``: the Oregon coast, sea to the west."""

GENERATOR_VERSION = 1
"""Bumped whenever the generator's output changes, so buckets never reuse stale rasters."""

MAX_PIXELS = 100_000_000  # generation needs ~100 bytes per pixel: ~10 GB at the cap
"""Largest AOI (in pixels) :func:`write_synthetic_rasters` accepts."""

LANDCOVER_NODATA = 255
DEM_NODATA = -9999.0

_KM_PER_DEG_LAT = 110.57
_KM_PER_DEG_LNG = 111.32  # at the equator; times cos(lat)
_SEA, _WATER, _WETLAND, _URBAN, _CROP, _HERB, _SHRUB = 200, 80, 90, 50, 40, 30, 20
_BARE, _SNOW, _MOSS = 60, 70, 100


def bounds_to_grid(bounds: tuple[float, float, float, float]) -> tuple[int, int, Affine]:
    """Snap an AOI outward to the 1/1008 degree grid.

    Args:
        bounds: ``(min_lng, min_lat, max_lng, max_lat)`` in degrees (EPSG:4326).

    Returns:
        ``(height, width, transform)`` of the snapped grid; the transform is north-up.

    Raises:
        InvalidInputError: when the bounds are malformed, outside the globe, or
            larger than :data:`MAX_PIXELS`.
    """
    try:
        west, south, east, north = (float(v) for v in bounds)
    except (TypeError, ValueError):
        raise InvalidInputError(
            f"bounds {bounds!r} must be four numbers (min_lng, min_lat, max_lng, max_lat)"
        ) from None
    if not all(math.isfinite(v) for v in (west, south, east, north)) or not (west < east and south < north):
        raise InvalidInputError(f"bounds {bounds!r} must be finite with min_lng < max_lng and min_lat < max_lat")
    if west < -180 or east > 180 or south < -90 or north > 90:
        raise InvalidInputError(f"bounds {bounds!r} fall outside -180..180 longitude / -90..90 latitude")
    # Round before floor/ceil so 44.0 * 1008 = 44352.000000001 does not grow a pixel.
    col0, row0 = math.floor(round(west * PIXELS_PER_DEGREE, 6)), math.floor(round(south * PIXELS_PER_DEGREE, 6))
    col1, row1 = math.ceil(round(east * PIXELS_PER_DEGREE, 6)), math.ceil(round(north * PIXELS_PER_DEGREE, 6))
    height, width = row1 - row0, col1 - col0
    if height * width > MAX_PIXELS:
        raise InvalidInputError(
            f"bounds {bounds!r} span {height} x {width} = {height * width:,} pixels at 1/1008 degree, "
            f"more than the {MAX_PIXELS:,} allowed; pass a smaller AOI"
        )
    px = 1.0 / PIXELS_PER_DEGREE
    return height, width, Affine(px, 0.0, col0 / PIXELS_PER_DEGREE, 0.0, -px, row1 / PIXELS_PER_DEGREE)


def _noise(
    rng: np.random.Generator,
    shape: tuple[int, int],
    scale_px: float,
    *,
    beta: float = 0.0,
    stretch: float = 1.0,
    angle: float = 0.0,
) -> np.ndarray:
    """Zero-mean, unit-variance float32 Gaussian random field, filtered in the Fourier domain.

    ``beta == 0`` gives smooth blobs about ``scale_px`` across; ``beta > 0`` a fractal
    (power spectrum ``f**-beta``) with features up to ``scale_px``. ``stretch > 1``
    elongates features along ``angle`` (radians, in (col, row) pixel space). The
    field is computed on a padded grid so it does not wrap around the AOI.
    """
    h, w = shape
    ph, pw = fft.next_fast_len(h + min(h, int(2 * scale_px)) + 8), fft.next_fast_len(w + min(w, int(2 * scale_px)) + 8)
    fy = fft.fftfreq(ph).astype(np.float32)[:, None]
    fx = fft.rfftfreq(pw).astype(np.float32)[None, :]
    along, across = fx * math.cos(angle) + fy * math.sin(angle), fy * math.cos(angle) - fx * math.sin(angle)
    f2 = (stretch * along) ** 2 + across**2
    if beta > 0:
        amp = (f2 + np.float32(scale_px**-2)) ** np.float32(-beta / 4) * np.exp(np.float32(-2 * math.pi**2) * f2)
    else:
        amp = np.exp(np.float32(-2 * (math.pi * scale_px) ** 2) * f2)
    white = rng.standard_normal((2, ph, pw // 2 + 1), dtype=np.float32)
    spec = (white[0] + 1j * white[1]).astype(np.complex64, copy=False) * amp
    field = fft.irfft2(spec, s=(ph, pw), workers=-1)[:h, :w]
    field -= field.mean()
    field /= max(float(field.std()), 1e-12)
    return field


def _land_mask(transform: Affine, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Land (True) at each pixel: the 1 km global land mask, smoothed and frayed at the coast."""
    from global_land_mask import globe  # ~1 GB and ~4 s; only when a raster is synthesized

    h, w = shape
    lat = transform.f + transform.e * (np.arange(h) + 0.5)
    lng = transform.c + transform.a * (np.arange(w) + 0.5)
    land = globe.is_land(lat[:, None].copy(), lng[None, :].copy())  # broadcasts to (h, w); it mutates inputs
    if land.all() or not land.any():
        return land
    fray = 0.22 * _noise(rng, shape, 2.0) + 0.12 * _noise(rng, shape, 7.0)
    soft = ndimage.gaussian_filter(land.astype(np.float32), sigma=3.0)
    coastal = (soft > 0.02) & (soft < 0.98)  # fray only the ~10 px band along the mask's coastline
    return np.where(coastal, soft + fray, soft) > 0.5


def _terrain(land: np.ndarray, d_sea_km: np.ndarray, rng) -> np.ndarray:
    """Pre-river DEM in metres: a coastal ramp, fractal hills, flat lowlands, and two ranges
    parallel to the coast (a low one ~15-30 km and a high one ~80-110 km inland)."""
    shape = land.shape
    lowland = 1 / (1 + np.exp(-4 * (_noise(rng, shape, 220) - 0.3)))  # ~1 on broad valley floors
    hills = 220 * (_noise(rng, shape, 400, beta=3.4) + 1.3).clip(0, None) * (1 - 0.85 * lowland)
    dem = 80 * (1 - np.exp(-d_sea_km / 10)) + hills
    inland_km = d_sea_km + 10 * _noise(rng, shape, 300)  # warped, so ranges curve by ~10 km
    ridged = (1 - np.abs(_noise(rng, shape, 150, beta=3.3)) / 2.5).clip(0, 1) ** 2
    swell = (0.8 + 0.3 * _noise(rng, shape, 300)).clip(0.2, None)
    for axis_km, peak_m, width_km in (
        (rng.uniform(80, 110), rng.uniform(1800, 2500), rng.uniform(10, 15)),
        (rng.uniform(15, 30), rng.uniform(500, 900), rng.uniform(6, 9)),
    ):
        dem += peak_m * np.exp(-(((inland_km - axis_km) / width_km) ** 2)) * swell * (0.3 + 0.7 * ridged)
    taper = 1 - np.exp(-d_sea_km / 2.5)
    return np.where(land, np.maximum(dem * taper, 1.0), 0.0).astype(np.float32)


def _rivers(dem: np.ndarray, land: np.ndarray, inland: float, rng) -> np.ndarray:
    """Thin connected rivers: zero-isolines of noise fields, kept where they drain somewhere.

    Main stems are isolines of a field stretched along the drainage direction, so they
    run from the high ground towards the coast and widen downstream (1-3 px). Each side
    of a stem gets tributaries from its own field at an angle, cut off before the divide
    between stems. Only pieces below a noisy source elevation that connect to the sea or
    to the AOI's edge are kept.
    """
    shape = dem.shape
    main = _noise(rng, shape, 80, stretch=5.0, angle=inland) + 0.12 * _noise(rng, shape, 10)
    divide = 0.9 + 0.3 * _noise(rng, shape, 60)
    lines = _isoline(main, 0.55 + 0.9 * np.exp(-dem / 150))
    for side, angle in ((main > 0, inland + 0.6), (main < 0, inland - 0.6)):
        trib = _noise(rng, shape, 28, stretch=2.5, angle=angle) + 0.1 * _noise(rng, shape, 6)
        lines |= _isoline(trib, 0.5) & side & (np.abs(main) < divide)
    lines &= land & (dem < 1100 + 300 * _noise(rng, shape, 80))
    labels, _ = ndimage.label(lines | ~land, structure=np.ones((3, 3)))
    outlets = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1], labels[~land]])
    keep = np.zeros(labels.max() + 1, dtype=bool)
    keep[np.unique(outlets)] = True
    keep[0] = False
    return keep[labels] & land


def _isoline(field: np.ndarray, half_width_px: np.ndarray | float) -> np.ndarray:
    """Pixels within ``half_width_px`` of the field's zero-isoline (|f| / |grad f| estimates the distance)."""
    gy, gx = np.gradient(field)
    return np.abs(field) < half_width_px * np.hypot(gx, gy)


def _lakes(dem: np.ndarray, land: np.ndarray, d_sea_km: np.ndarray, d_river_km: np.ndarray, rng) -> np.ndarray:
    """Lake blobs, mostly strung along rivers; their DEM is flattened to the blob's lowest point."""
    field = _noise(rng, dem.shape, 14) + 0.8 * np.exp(-((d_river_km / 0.6) ** 2))
    lakes = (field > 3.0) & land & (d_sea_km > 1.0) & (dem < 900)
    labels, n = ndimage.label(lakes)
    if n:
        level = np.asarray(ndimage.minimum(dem, labels, index=np.arange(1, n + 1)), dtype=np.float32)
        dem[lakes] = level[labels[lakes] - 1]
    return lakes


def _towns(suitable: np.ndarray, land: np.ndarray, dy_km: float, dx_km: float, rng) -> np.ndarray:
    """A few towns (radius 1-5 km) and more villages (radius 0.2-0.5 km) with irregular edges."""
    h, w = land.shape
    area_km2 = h * w * dy_km * dx_km * land.mean()
    n_towns, n_villages = max(1, round(area_km2 / 4000)), max(1, round(area_km2 / 1000))
    edge = 0.3 * _noise(rng, land.shape, 5)
    urban = np.zeros(land.shape, dtype=bool)
    candidates = np.flatnonzero(suitable)
    if candidates.size == 0:
        return urban
    picked: list[tuple[int, int, float]] = []
    for flat in rng.choice(candidates, size=min(candidates.size, 40 * (n_towns + n_villages)), replace=False):
        if len(picked) == n_towns + n_villages:
            break
        cy, cx = divmod(int(flat), w)
        radius_km = 1 + 4 * rng.random() ** 2 if len(picked) < n_towns else rng.uniform(0.2, 0.5)
        if any(math.hypot((cy - y) * dy_km, (cx - x) * dx_km) < 2.5 * (radius_km + r) + 3 for y, x, r in picked):
            continue
        picked.append((cy, cx, radius_km))
        ry, rx = int(1.5 * radius_km / dy_km) + 2, int(1.5 * radius_km / dx_km) + 2
        win = np.s_[max(cy - ry, 0) : min(cy + ry + 1, h), max(cx - rx, 0) : min(cx + rx + 1, w)]
        yy, xx = np.ogrid[win[0], win[1]]
        blob = (np.hypot((yy - cy) * dy_km, (xx - cx) * dx_km) / radius_km + edge[win] < 1) & land[win]
        labels, _ = ndimage.label(blob)
        if labels[cy - win[0].start, cx - win[1].start]:
            urban[win] |= labels == labels[cy - win[0].start, cx - win[1].start]
    logger.debug("placed %d towns and villages", len(picked))
    return urban


def _vegetation(dem: np.ndarray, slope: np.ndarray, rng) -> np.ndarray:
    """Natural cover by elevation: broadleaf/mixed low, needleleaf high, open forest on
    slopes and near the treeline, shrub/herbaceous patches, alpine classes and snow."""
    shape = dem.shape
    zone = dem + 200 * _noise(rng, shape, 300, beta=3.4)  # effective elevation for zonation, m
    mix = _noise(rng, shape, 80, beta=3.2)
    forest = np.where(
        zone > 700, 111, np.where(zone > 250, np.where(mix > 0.5, 111, 115), np.where(mix > 0.3, 114, 115))
    )
    treeline = 1650 + 120 * mix
    openness = _noise(rng, shape, 80, beta=3.2) + slope / 30 + np.clip((dem - treeline + 400) / 400, 0, None)
    codes = np.where(openness > 1.1, forest + 10, forest).astype(np.uint8)
    patches = _noise(rng, shape, 120, beta=3.1)
    codes[patches > 1.4] = _SHRUB
    codes[patches > 1.85] = _HERB
    alpine = dem > treeline
    codes[alpine] = np.where(dem[alpine] > treeline[alpine] + 120, _HERB, _SHRUB)
    codes[alpine & (dem > treeline + 250) & (patches > 1.0)] = _MOSS
    codes[dem > 2050 + 100 * mix] = _BARE
    codes[dem > 2350 + 80 * mix] = _SNOW
    return codes


def _cropland(codes: np.ndarray, dem: np.ndarray, slope: np.ndarray, rng) -> None:
    """Overlay field parcels (40 mixed with 30 and 20) on low flat land, in place.

    Parcels are 4-12 px rectangles in brick rows; a parcel is farmed when its centre
    lies in the agricultural zone, so the zone's edge follows parcel edges.
    """
    h, w = codes.shape
    zone = (dem < 180 + 80 * _noise(rng, codes.shape, 150, beta=3.0)) & (slope < 4) & (dem > 0)
    row_edges = np.cumsum(rng.integers(4, 13, size=h // 4 + 2))
    col_edges = np.cumsum(rng.integers(4, 13, size=w // 4 + 2))
    row_of = np.searchsorted(row_edges, np.arange(h), side="right")
    offset = rng.integers(0, 12, size=row_of[-1] + 1)
    col_of = np.searchsorted(col_edges, np.arange(w + 12), side="right")[
        np.arange(w)[None, :] + offset[row_of][:, None]
    ]
    parcel = row_of[:, None] * col_edges.size + col_of
    # A pixel 3 rows and 3 columns into each parcel (from its first pixel) stands in for its centre.
    flat_ids, first = np.unique(parcel.ravel(), return_index=True)
    farmed = np.zeros(parcel.max() + 1, dtype=bool)
    centre = np.minimum(first + 3 * w + 3, parcel.size - 1)
    farmed[flat_ids] = zone.ravel()[centre]
    crop = rng.choice(np.array([_CROP, _HERB, _SHRUB], dtype=np.uint8), size=farmed.size, p=[0.74, 0.19, 0.07])
    mask = farmed[parcel]
    codes[mask] = crop[parcel[mask]]


def synthesize_landscape(
    height: int, width: int, *, transform: Affine, seed: int | np.random.Generator = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Generate a land-cover and DEM array pair for a north-up EPSG:4326 grid.

    Args:
        height: Rows, pixels.
        width: Columns, pixels.
        transform: North-up geotransform in degrees (see :func:`bounds_to_grid`).
        seed: Seed (or generator) for every random choice; the same integer seed
            and grid give identical arrays.

    Returns:
        ``(codes, dem)``: uint8 LC100 class codes (sea is 200) and float32 elevation
        in metres (sea is 0), both of shape ``(height, width)``.

    Raises:
        InvalidInputError: for a grid under 2 x 2 pixels or a rotated transform.
    """
    if height < 2 or width < 2:
        raise InvalidInputError(f"grid of {height} x {width} pixels is too small; pass at least 2 x 2 pixels")
    if transform.b or transform.d or transform.a <= 0 or transform.e >= 0:
        raise InvalidInputError(f"transform {tuple(transform)[:6]} is not north-up; pass one from bounds_to_grid")
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    shape = (height, width)
    lat_mid = transform.f + transform.e * height / 2
    dy_km = -transform.e * _KM_PER_DEG_LAT
    dx_km = transform.a * _KM_PER_DEG_LNG * max(math.cos(math.radians(lat_mid)), 0.01)
    land = _land_mask(transform, shape, rng)
    if not land.any():
        return np.full(shape, _SEA, np.uint8), np.zeros(shape, np.float32)
    if land.all():  # no coast: pretend the sea lies 40 km away in a random direction
        inland = rng.uniform(0, 2 * math.pi)
        rows, cols = np.ogrid[:height, :width]
        along_km = (cols * dx_km * math.cos(inland) + rows * dy_km * math.sin(inland)).astype(np.float32)
        d_sea_km = 40 + along_km - along_km.min()
    else:
        d_sea_km = ndimage.distance_transform_edt(land, sampling=(dy_km, dx_km)).astype(np.float32)
        (ly, lx), (sy, sx) = ndimage.center_of_mass(land), ndimage.center_of_mass(~land)
        inland = math.atan2(ly - sy, lx - sx)
    dem = _terrain(land, d_sea_km, rng)
    rivers = _rivers(dem, land, inland, rng)
    if rivers.any():
        d_river_km = ndimage.distance_transform_edt(~rivers, sampling=(dy_km, dx_km)).astype(np.float32)
        dem *= 1 - 0.6 * np.exp(-((d_river_km / 1.8) ** 2))  # carve valleys around the rivers
    else:
        d_river_km = np.full(shape, np.inf, np.float32)
    lakes = _lakes(dem, land, d_sea_km, d_river_km, rng)
    gy, gx = np.gradient(dem, dy_km * 1000, dx_km * 1000)
    slope = np.degrees(np.arctan(np.hypot(gx, gy))).astype(np.float32)
    codes = _vegetation(dem, slope, rng)
    _cropland(codes, dem, slope, rng)
    water = rivers | lakes
    fringe = ndimage.binary_dilation(lakes, iterations=3) & (dem < 400)
    near_water = ((d_sea_km < 1.5) & (dem < 30)) | ((d_river_km < 0.35) & (dem < 60)) | fringe
    codes[near_water & (slope < 4) & (_noise(rng, shape, 20, beta=3.0) > 0.2)] = _WETLAND
    suitable = land & ~water & (dem < 120) & (slope < 4) & (d_sea_km > 0.3) & ((d_river_km < 1) | (d_sea_km < 2))
    codes[_towns(suitable, land, dy_km, dx_km, rng) & ~water] = _URBAN
    codes[water] = _WATER
    codes[~land] = _SEA
    dem = np.where(land, np.maximum(dem, 1.0), 0.0).astype(np.float32)
    logger.info("synthesized %d x %d landscape (seed %s) in %.1f s", height, width, seed, time.perf_counter() - started)
    return codes, dem


def _write_cog(
    path: Path,
    array: np.ndarray,
    transform: Affine,
    *,
    nodata: float,
    resampling: str,
    colormap: dict[int, tuple[int, int, int, int]] | None = None,
) -> Path:
    """Write one band as a COG (512 px tiles, DEFLATE, internal overviews), atomically.

    The COG is written to a temporary file beside ``path`` and moved into place, so a
    reader never sees a half-written raster; the temporary file is removed on failure.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = array.shape
    overviews = max(0, math.ceil(math.log2(max(height, width) / 256)))  # down to <= 256 px
    profile = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": 1,
        "dtype": array.dtype.name,
        "crs": "EPSG:4326",
        "transform": transform,
        "nodata": nodata,
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with MemoryFile() as mem:
            with mem.open(**profile) as dst:
                if colormap:
                    dst.write_colormap(1, colormap)  # before the pixels: GTiff fixes the photometric tag on write
                dst.write(array, 1)
            with mem.open() as src:
                rasterio.shutil.copy(
                    src,
                    tmp,
                    driver="COG",
                    BLOCKSIZE=512,
                    COMPRESS="DEFLATE",
                    PREDICTOR="YES" if array.dtype.kind == "f" else "NO",
                    OVERVIEW_RESAMPLING=resampling,
                    OVERVIEW_COUNT=overviews,
                    OVERVIEWS="AUTO" if overviews else "NONE",
                    NUM_THREADS="ALL_CPUS",
                )
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _lc100_colormap() -> dict[int, tuple[int, int, int, int]]:
    legend = BUILTIN_LEGENDS["lc100"]
    return {code: (*hex_to_rgb(c), 255) for code, c in zip(legend.codes, legend.colors, strict=True)}


def write_landcover_cog(path: str | os.PathLike, codes: np.ndarray, transform: Affine) -> Path:
    """Write LC100 codes as the synthetic default writes its land cover: a COG with nodata 255, the LC100
    colour table and overviews by mode (used for a second epoch, :mod:`vectorgeo.synthetic_change`)."""
    return _write_cog(Path(path), codes, transform, nodata=LANDCOVER_NODATA, resampling="MODE",
                      colormap=_lc100_colormap())  # fmt: skip


def write_synthetic_rasters(
    landcover_path: str | os.PathLike,
    dem_path: str | os.PathLike,
    *,
    bounds: tuple[float, float, float, float] = DEFAULT_BOUNDS,
    seed: int = 0,
) -> tuple[Path, Path]:
    """Synthesize a land-cover and DEM pair for an AOI and write both as COGs.

    The default AOI (about 3 M pixels) takes under 10 s and ~1.3 GB of memory, 1 GB of
    which is the global land mask (imported once per process); budget ~100 bytes per pixel.

    Args:
        landcover_path: Destination of the land cover: uint8 LC100 codes, nodata 255,
            with the LC100 colour table; overviews by mode.
        dem_path: Destination of the DEM: float32 metres above sea level (sea is 0),
            nodata -9999; overviews by average.
        bounds: AOI ``(min_lng, min_lat, max_lng, max_lat)`` in degrees (EPSG:4326),
            snapped outward to the 1/1008 degree grid.
        seed: Seed; the same seed and bounds give identical files.

    Returns:
        The two paths written, as :class:`~pathlib.Path`.

    Raises:
        InvalidInputError: for malformed bounds or an AOI over :data:`MAX_PIXELS`.
    """
    height, width, transform = bounds_to_grid(bounds)
    codes, dem = synthesize_landscape(height, width, transform=transform, seed=seed)
    started = time.perf_counter()
    lc = write_landcover_cog(landcover_path, codes, transform)
    dm = _write_cog(Path(dem_path), dem, transform, nodata=DEM_NODATA, resampling="AVERAGE")
    logger.info("wrote %s and %s in %.1f s", lc, dm, time.perf_counter() - started)
    return lc, dm
