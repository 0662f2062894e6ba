"""Find the input rasters: a local file, a bucket key, or the synthetic default.

Every step resolves its inputs here, so a step on another machine finds the
same raster: the synthetic default is generated once, stored in the bucket
under a key that names its seed, and downloaded (cached) by later steps.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vectorgeo.artifacts import synthetic_raster_keys
from vectorgeo.errors import RasterAccessError
from vectorgeo.legends import BUILTIN_LEGENDS, Legend, get_legend, read_legend_file
from vectorgeo.transfer import Bucket

__all__ = ["RasterInputs", "local_or_key", "resolve_rasters"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RasterInputs:
    """Local paths of the rasters a step reads, and where they came from.

    Attributes:
        landcover: Local path of the land-cover raster.
        dem: Local path of the DEM, or None when none is used or asked for.
        source: Human-readable origin, recorded in artifact metadata.
    """

    landcover: Path
    dem: Path | None
    source: str


def _ensure_synthetic(bucket: Bucket, seed: int) -> tuple[str, str]:
    lc_key, dem_key = synthetic_raster_keys(seed)
    if bucket.exists(lc_key) and bucket.exists(dem_key):
        return lc_key, dem_key
    from vectorgeo.synthetic import write_synthetic_rasters

    logger.info("generating the synthetic default raster (seed %d) into %s", seed, bucket.uri(lc_key))
    with tempfile.TemporaryDirectory(prefix="vg-synthetic-") as tmp:
        lc_path, dem_path = write_synthetic_rasters(Path(tmp) / "landcover.tif", Path(tmp) / "dem.tif", seed=seed)
        bucket.upload(dem_path, dem_key)
        bucket.upload(lc_path, lc_key)  # written last: its presence means both are there
    return lc_key, dem_key


def local_or_key(bucket: Bucket, spec: str) -> Path | None:
    """A local file named ``spec``, else a local copy of the bucket key ``spec``, else None.

    A spec that looks like a path (``/``, ``./``, ``../``, ``~``) is never taken for a key.
    """
    path = Path(spec).expanduser()
    if spec and path.is_file():
        return path
    if spec and not spec.startswith(("/", "./", "../", "~")) and bucket.exists(spec):
        return bucket.download(spec)
    return None


def _resolve_one(bucket: Bucket, spec: str, what: str) -> Path:
    path = local_or_key(bucket, spec)
    if path is not None:
        return path
    raise RasterAccessError(
        f"{what} raster {spec!r} is neither an existing local file nor a key in bucket {bucket.url!r}; "
        f"fix the path, upload it to the bucket, or unset it to use the synthetic default"
    )


def resolve_rasters(
    bucket: Bucket, landcover: str = "", dem: str = "", *, with_dem: bool = False, synthetic_seed: int = 0
) -> RasterInputs:
    """Return local paths of the land-cover raster and DEM to use.

    Args:
        bucket: The pipeline bucket (the synthetic default lives there).
        landcover: Local path or bucket key; empty means the synthetic default.
        dem: Local path or bucket key; empty means the synthetic DEM when the
            land cover is synthetic, and no DEM otherwise.
        with_dem: Also fetch the DEM; steps that do not read it skip the download.
        synthetic_seed: Seed of the synthetic default.

    Raises:
        RasterAccessError: when a given raster cannot be found.
    """
    if not landcover:
        lc_key, dem_key = _ensure_synthetic(bucket, synthetic_seed)
        dem_path = None
        if with_dem:
            dem_path = _resolve_one(bucket, dem, "DEM") if dem else bucket.download(dem_key)
        return RasterInputs(bucket.download(lc_key), dem_path, f"synthetic (seed {synthetic_seed})")
    dem_path = _resolve_one(bucket, dem, "DEM") if dem and with_dem else None
    return RasterInputs(_resolve_one(bucket, landcover, "land-cover"), dem_path, landcover)


def resolve_legend(bucket: Bucket, spec: str) -> Legend:
    """A built-in legend by name, or a legend file as a local path or a bucket key.

    Bucket keys let remote tasks read a user legend: the code package carries
    only ``.py`` files.

    Raises:
        InvalidInputError: unknown name, missing file, or a malformed legend.
    """
    spec = spec.strip()
    if spec.lower() in BUILTIN_LEGENDS or Path(spec).expanduser().is_file():
        return get_legend(spec)
    is_key = spec.lower().endswith((".csv", ".json")) and not spec.startswith(("/", ".", "~"))
    if is_key and bucket.exists(spec):
        return read_legend_file(bucket.download(spec))
    return get_legend(spec)  # raises the precise error: unknown name, or no such file
