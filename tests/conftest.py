"""Shared fixtures: tiny generated rasters, a temporary bucket, real clips."""

from __future__ import annotations

import math
import os
from pathlib import Path

import boto3
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from vectorgeo.geodesy import EARTH_RADIUS_M

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
def make_clip():
    """Factory: a land-cover clip like a CDL one, and the overlapping patches of a grid of cells on it.

    The clip has ``n_classes`` (35 by default) classes with Zipf-like frequencies: "zones"
    (3 patch widths across) each mix the common classes their own way, drawn
    per 4x4-pixel block, and 1% of pixels are noise. The last ``n_rare``
    classes appear only as 1-3 small blobs each, every blob inside a single
    patch, so each rare class is present in 1-3 cells. Cells sit on a square
    grid ``spacing_px`` apart, closer than a patch (16 px), so neighbouring
    patches overlap. Returns ``(patches, lat, lng, half_width_m, corners_px,
    quadrants)``: corners are each patch's top-left pixel ``(N, 2)``, and
    quadrants are 4 coarse groups, like the H3 res-5 parents of a small clip.
    """

    def _make(n_side: int = 30, n_classes: int = 35, n_rare: int = 6, seed: int = 0):
        rng = np.random.default_rng(seed)
        patch_px, spacing_px, zone_px, block_px, pixel_m = 16, 12, 48, 4, 30.0
        size = (n_side - 1) * spacing_px + patch_px
        n_common = n_classes - n_rare
        prevalence = 1.0 / np.arange(1, n_common + 1) ** 2
        prevalence /= prevalence.sum()
        n_zones, n_blocks = -(-size // zone_px), -(-size // block_px)
        zone_weights = rng.dirichlet(0.2 * n_common * prevalence + 1e-3, size=(n_zones, n_zones))
        zone_of_block = np.arange(n_blocks) * block_px // zone_px
        weights = zone_weights[zone_of_block[:, None], zone_of_block[None, :]]
        pick = (rng.random((n_blocks, n_blocks, 1)) > np.cumsum(weights, axis=-1)).sum(axis=-1)
        grid = np.minimum(pick, n_common - 1).astype(np.uint8)
        grid = grid.repeat(block_px, axis=0).repeat(block_px, axis=1)[:size, :size]
        noise = rng.random(grid.shape) < 0.01
        grid[noise] = rng.choice(n_common, noise.sum(), p=prevalence).astype(np.uint8)
        overlap = patch_px - spacing_px  # pixels shared by neighbouring patches along each axis
        for rare in range(n_common, n_classes):  # a few blobs: bounded small loop, not per pixel
            for _ in range(rng.integers(1, 4)):
                side = int(rng.integers(1, 6))
                top, left = rng.integers(0, n_side, 2) * spacing_px + overlap
                top, left = top + rng.integers(0, spacing_px - overlap - side + 1, 2)
                grid[top : top + side, left : left + side] = rare
        rows, cols = np.meshgrid(np.arange(n_side), np.arange(n_side), indexing="ij")
        corners = np.column_stack([rows.ravel(), cols.ravel()]) * spacing_px
        windows = np.lib.stride_tricks.sliding_window_view(grid, (patch_px, patch_px))
        patches = np.ascontiguousarray(windows[corners[:, 0], corners[:, 1]])
        metres_per_degree = EARTH_RADIUS_M * math.pi / 180
        centres_m = (corners + patch_px / 2) * pixel_m
        lat = 41.5 - centres_m[:, 0] / metres_per_degree
        lng = -93.5 + centres_m[:, 1] / (metres_per_degree * math.cos(math.radians(41.5)))
        quadrants = (rows.ravel() >= n_side // 2) * 2 + (cols.ravel() >= n_side // 2)
        return patches, lat, lng, patch_px * pixel_m / 2, corners, quadrants

    return _make


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
