"""A small picture of the land-cover raster for the web map, made without any tile server.

The map shows the raster under the search results so a user sees what the
embeddings were made of. A global COG is far too big to send, so this reads
a decimated copy (GDAL picks the COG's overviews), reprojects it to Web
Mercator, the projection Leaflet draws in (an image in EPSG:4326 would be
stretched wrongly north-south), colours it with the legend and encodes a PNG
of at most ``max_px`` pixels on its long side.
"""

from __future__ import annotations

import colorsys
import json
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import MemoryFile
from rasterio.transform import from_bounds
from rasterio.warp import reproject, transform, transform_bounds

from vectorgeo.artifacts import synthetic_raster_keys
from vectorgeo.errors import InvalidInputError, RasterAccessError
from vectorgeo.legends import NODATA_INDEX, Legend, hex_to_rgb
from vectorgeo.raster import open_raster
from vectorgeo.sources import resolve_legend, resolve_rasters
from vectorgeo.transfer import Bucket

__all__ = ["Overview", "bucket_overview", "render_overview", "write_overview"]

logger = logging.getLogger(__name__)

_MERCATOR = "EPSG:3857"
_WGS84 = "EPSG:4326"
_MAX_MERCATOR_LAT = 85.0511287798  # Web Mercator's square world ends here


@dataclass(frozen=True)
class Overview:
    """An overview PNG of a land-cover raster and what the map needs to place and explain it.

    Attributes:
        png: RGBA PNG bytes in EPSG:3857; nodata pixels are transparent.
        meta: JSON-ready dict: ``bounds`` (``west``, ``south``, ``east``,
            ``north`` degrees), ``crs`` of the image, ``width``, ``height``,
            ``legend`` name, ``source`` and ``classes`` (``code``, ``name``,
            ``color``, ``fraction`` of the valid pixels), most common first,
            only classes present.
    """

    png: bytes
    meta: dict

    def files(self) -> dict[str, tuple[bytes, str]]:
        """``landcover.png`` and ``landcover.json`` by name, with their content types (served or written)."""
        return {
            "landcover.png": (self.png, "image/png"),
            "landcover.json": (json.dumps(self.meta, indent=1).encode(), "application/json"),
        }


def _class_colors(legend: Legend) -> list[str]:
    """The legend's colours, or evenly spread hues for a legend file that gives none."""
    if legend.colors:
        return list(legend.colors)
    golden = 0.618033988749895
    rgbs = [colorsys.hsv_to_rgb((i * golden) % 1.0, 0.65, 0.9) for i in range(legend.n_classes)]
    return ["#{:02x}{:02x}{:02x}".format(*(round(255 * c) for c in rgb)) for rgb in rgbs]


def _mercator_grid(dataset: rasterio.DatasetReader, max_px: int) -> tuple[tuple[float, ...], int, int]:
    """Lat/lng bounds of the raster (clipped to Mercator's range) and the output size."""
    west, south, east, north = transform_bounds(dataset.crs, _WGS84, *dataset.bounds, densify_pts=21)
    south, north = max(south, -_MAX_MERCATOR_LAT), min(north, _MAX_MERCATOR_LAT)
    if not (west < east and south < north):
        raise InvalidInputError(
            f"the land-cover raster's footprint {dataset.bounds} does not map to a lat/lng box the web map can "
            "show (does it cross the antimeridian?)"
        )
    xs, ys = transform(_WGS84, _MERCATOR, [west, east], [south, north])
    aspect = (xs[1] - xs[0]) / (ys[1] - ys[0])
    long_side = min(max_px, max(dataset.width, dataset.height))
    width, height = (long_side, round(long_side / aspect)) if aspect >= 1 else (round(long_side * aspect), long_side)
    return (west, south, east, north), max(width, 1), max(height, 1)


def _read_decimated(dataset: rasterio.DatasetReader, max_px: int) -> tuple[np.ndarray, object]:
    """The raster at most about twice the output size, so the warp has enough pixels but never the full grid."""
    factor = max(1, math.ceil(max(dataset.width, dataset.height) / (2 * max_px)))
    height, width = math.ceil(dataset.height / factor), math.ceil(dataset.width / factor)
    codes = dataset.read(1, out_shape=(height, width), resampling=Resampling.nearest)
    scale = dataset.transform * dataset.transform.scale(dataset.width / width, dataset.height / height)
    return codes, scale


def _encode_png(rgba: np.ndarray) -> bytes:
    """PNG bytes through GDAL (no imaging library needed); the PNG itself carries no georeferencing."""
    with warnings.catch_warnings(), MemoryFile() as memfile:
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        height, width = rgba.shape[:2]
        with memfile.open(driver="PNG", width=width, height=height, count=4, dtype="uint8") as dst:
            dst.write(np.moveaxis(rgba, -1, 0))
        return memfile.read()


def render_overview(raster_path: str | Path, legend: Legend, *, max_px: int = 2048, source: str = "") -> Overview:
    """Render a land-cover raster as a coloured Web Mercator PNG of bounded size.

    Args:
        raster_path: Local path of the land-cover raster (any CRS; a COG with
            overviews reads fastest).
        legend: The raster's legend; its colours paint the classes.
        max_px: Longest side of the PNG in pixels (64..8192).
        source: Where the raster came from, recorded in ``meta``.

    Raises:
        InvalidInputError: ``max_px`` out of range, or a footprint the map cannot show.
        RasterAccessError: the raster is missing, unreadable or has no CRS.
        UnknownClassCodeError: the raster holds codes the legend does not list.
    """
    if not 64 <= max_px <= 8192:
        raise InvalidInputError(f"max_px must be 64..8192, got {max_px}")
    with open_raster(raster_path) as dataset:
        if dataset.count < 1 or not np.issubdtype(np.dtype(dataset.dtypes[0]), np.integer):
            raise RasterAccessError(f"raster {str(raster_path)!r} is not a categorical (integer) land-cover raster")
        bounds, width, height = _mercator_grid(dataset, max_px)
        codes, src_transform = _read_decimated(dataset, max_px)
        nodata = dataset.nodata
        src_crs = dataset.crs
    indices = legend.codes_to_indices(codes, nodata=nodata)
    dst = np.full((height, width), NODATA_INDEX, dtype=np.uint8)
    x, y = transform(_WGS84, _MERCATOR, [bounds[0], bounds[2]], [bounds[1], bounds[3]])
    reproject(
        indices,
        dst,
        src_transform=src_transform,
        src_crs=src_crs,
        src_nodata=NODATA_INDEX,
        dst_transform=from_bounds(x[0], y[0], x[1], y[1], width, height),
        dst_crs=_MERCATOR,
        dst_nodata=NODATA_INDEX,
        resampling=Resampling.nearest,
    )
    colors = _class_colors(legend)
    palette = np.zeros((256, 4), dtype=np.uint8)
    palette[: legend.n_classes, :3] = [hex_to_rgb(c) for c in colors]
    palette[: legend.n_classes, 3] = 255
    counts = np.bincount(dst[dst != NODATA_INDEX], minlength=legend.n_classes)[: legend.n_classes]
    total = max(int(counts.sum()), 1)
    classes = [
        {"code": code, "name": name, "color": color, "fraction": round(float(n) / total, 5)}
        for n, code, name, color in sorted(
            zip(counts, legend.codes, legend.names, colors, strict=True), key=lambda c: -c[0]
        )
        if n > 0
    ]
    meta = {
        "bounds": dict(zip(("west", "south", "east", "north"), (round(b, 7) for b in bounds), strict=True)),
        "crs": _MERCATOR,
        "width": width,
        "height": height,
        "legend": legend.name,
        "source": source,
        "classes": classes,
    }
    return Overview(_encode_png(palette[dst]), meta)


def write_overview(overview: Overview, folder: str | Path) -> list[Path]:
    """Write :meth:`Overview.files` into ``folder`` (a static deployment's ``overview/``); returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, (data, _) in overview.files().items():
        paths.append(folder / name)
        paths[-1].write_bytes(data)
    return paths


def bucket_overview(
    bucket: Bucket, *, landcover: str = "", legend: str = "lc100", synthetic_seed: int = 0, max_px: int = 2048
) -> Overview | None:
    """The overview of the land-cover raster the pipeline read, found as the flows find it.

    Args:
        bucket: The pipeline bucket.
        landcover: Local path or bucket key; empty = the synthetic default in the bucket.
        legend: Built-in legend name, or a legend file (path or bucket key).
        synthetic_seed: Seed of the synthetic default.
        max_px: Longest side of the PNG.

    Returns:
        None when ``landcover`` is empty and the bucket holds no synthetic default: a
        server never generates rasters into a bucket.
    """
    if not landcover and not bucket.exists(synthetic_raster_keys(synthetic_seed)[0]):
        logger.warning("no land-cover raster in %s (run flow 00 first); the map has no land-cover layer", bucket.url)
        return None
    rasters = resolve_rasters(bucket, landcover, synthetic_seed=synthetic_seed)
    return render_overview(rasters.landcover, resolve_legend(bucket, legend), max_px=max_px, source=rasters.source)
