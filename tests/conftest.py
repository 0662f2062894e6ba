"""Shared fixtures: tiny generated rasters, a temporary bucket, real clips."""

from __future__ import annotations

import os
from pathlib import Path

import boto3
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

REPO_ROOT = Path(__file__).resolve().parents[1]
REALDATA_DIR = Path(os.environ.get("VG_REALDATA_DIR", REPO_ROOT.parent / "shared" / "realdata"))

LC100_PIXEL_DEG = 1 / 1008
S3_BUCKET = "vg-test"


@pytest.fixture
def write_raster(tmp_path):
    """Factory: write a small tiled GeoTIFF from an array and return its path.

    Defaults put an LC100-like grid at 1/1008 degree on land in Oregon
    (west edge -123.5, north edge 44.8), EPSG:4326, nodata 255.
    """
    counter = iter(range(10_000))

    def _write(
        data: np.ndarray,
        *,
        west: float = -123.5,
        north: float = 44.8,
        pixel: float = LC100_PIXEL_DEG,
        crs: str | None = "EPSG:4326",
        nodata: float | None = 255,
        block: int = 64,
        name: str | None = None,
    ) -> Path:
        path = tmp_path / (name or f"raster{next(counter)}.tif")
        profile = {
            "driver": "GTiff",
            "height": data.shape[0],
            "width": data.shape[1],
            "count": 1,
            "dtype": data.dtype,
            "transform": from_origin(west, north, pixel, pixel),
            "tiled": True,
            "blockxsize": block,
            "blockysize": block,
            "compress": "deflate",
        }
        if crs is not None:
            profile["crs"] = crs
        if nodata is not None:
            profile["nodata"] = nodata
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data, 1)
        return path

    return _write


@pytest.fixture
def realdata() -> Path:
    """The shared real raster clips; skip when the folder is absent (a user's clone)."""
    if not REALDATA_DIR.is_dir():
        pytest.skip(f"real data clips not found at {REALDATA_DIR} (set VG_REALDATA_DIR to run these tests)")
    return REALDATA_DIR


@pytest.fixture(scope="module")
def moto_endpoint():
    """A moto S3 server on a free localhost port, with fake credentials from the standard chain."""
    with pytest.MonkeyPatch.context() as mp:
        for name in (
            "AWS_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_SECURITY_TOKEN",
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_S3",
        ):
            mp.delenv(name, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_CONFIG_FILE", os.devnull)
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=S3_BUCKET)
        yield endpoint
        server.stop()
