"""Flow 00's unit of work: the land stencil, from raster to bucket."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import shapely

from vectorgeo.artifacts import stencil_key
from vectorgeo.raster import open_raster, raster_bounds_latlng
from vectorgeo.sources import resolve_legend, resolve_rasters
from vectorgeo.stencil import build_stencil, check_resolution, write_stencil
from vectorgeo.transfer import Bucket

__all__ = ["make_stencil"]

logger = logging.getLogger(__name__)


def make_stencil(
    bucket: Bucket,
    *,
    h3_resolution: int,
    landcover: str = "",
    legend: str = "lc100",
    aoi: shapely.Geometry | None = None,
    synthetic_seed: int = 0,
) -> dict:
    """Build the land stencil for the configured raster and store it.

    Writes ``stencil/res{R}.parquet``.

    Returns:
        Summary: key, cell count, raster source, elapsed seconds.
    """
    check_resolution(h3_resolution)
    bucket.check_writable()
    legend_obj = resolve_legend(bucket, legend)
    started = time.perf_counter()
    rasters = resolve_rasters(bucket, landcover, synthetic_seed=synthetic_seed)
    with open_raster(rasters.landcover) as dataset:
        table = build_stencil(h3_resolution, aoi=aoi, dataset=dataset, legend=legend_obj)
        footprint = raster_bounds_latlng(dataset)
    if table.num_rows == 0:
        logger.warning("the stencil at resolution %d holds no land cell: is the AOI all sea?", h3_resolution)
    key = stencil_key(h3_resolution)
    meta = {
        "h3_resolution": h3_resolution,
        "raster": rasters.source,
        "legend": legend_obj.name,
        "aoi_bounds": list(aoi.bounds) if aoi is not None else None,
        "raster_bounds": list(footprint),
    }
    with tempfile.TemporaryDirectory(prefix="vg-stencil-") as tmp:
        bucket.upload(write_stencil(table, Path(tmp) / "stencil.parquet", meta), key)
    return {"key": key, "n_cells": table.num_rows, "seconds": round(time.perf_counter() - started, 2), **meta}
