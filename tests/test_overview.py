"""The land-cover overview: bounded size, Web Mercator, legend colours, nodata transparent, any CRS in."""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import MemoryFile
from rasterio.warp import transform_bounds

from vectorgeo.errors import InvalidInputError, UnknownClassCodeError
from vectorgeo.legends import BUILTIN_LEGENDS, Legend
from vectorgeo.overview import bucket_overview, render_overview, write_overview
from vectorgeo.transfer import Bucket

LC100 = BUILTIN_LEGENDS["lc100"]


def _pixels(png: bytes) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # the PNG carries no georeferencing, on purpose
        with MemoryFile(io.BytesIO(png)) as memfile, memfile.open() as dataset:
            return np.moveaxis(dataset.read(), 0, -1)


def test_classes_keep_their_colours_and_nodata_is_transparent(write_raster):
    codes = np.full((200, 300), 111, np.uint8)
    codes[:, 170:] = 40
    codes[:50, :] = 255
    overview = render_overview(write_raster(codes), LC100, max_px=128, source="test")
    meta = overview.meta
    assert (meta["width"], meta["crs"], meta["legend"], meta["source"]) == (128, "EPSG:3857", "lc100", "test")
    assert [(c["code"], c["color"]) for c in meta["classes"]] == [(111, "#58481f"), (40, "#f096ff")]
    assert sum(c["fraction"] for c in meta["classes"]) == pytest.approx(1, abs=1e-4)
    rgba = _pixels(overview.png)
    assert rgba.shape == (meta["height"], meta["width"], 4)
    assert (rgba[0, :, 3] == 0).all()  # the nodata rows along the north edge
    assert tuple(rgba[-1, 5]) == (0x58, 0x48, 0x1F, 255) and tuple(rgba[-1, -5]) == (0xF0, 0x96, 0xFF, 255)
    assert meta["bounds"] == pytest.approx({"west": -123.5, "north": 44.8, "east": -123.5 + 300 / 1008,
                                            "south": 44.8 - 200 / 1008})  # fmt: skip


def test_a_projected_raster_is_placed_by_its_lat_lng_footprint(write_raster):
    codes = np.full((120, 160), 30, np.uint8)
    path = write_raster(codes, west=440_000, north=4_960_000, pixel=100.0, crs="EPSG:32610")
    overview = render_overview(path, LC100, max_px=64)
    with rasterio.open(path) as dataset:
        west, south, east, north = transform_bounds(dataset.crs, "EPSG:4326", *dataset.bounds, densify_pts=21)
    assert overview.meta["bounds"] == pytest.approx({"west": west, "south": south, "east": east, "north": north})
    assert max(overview.meta["width"], overview.meta["height"]) == 64
    assert overview.meta["classes"][0]["name"] == "Herbaceous vegetation"


def test_a_legend_without_colours_gets_distinct_ones(write_raster):
    legend = Legend("plain", (1, 2, 3), ("a", "b", "c"))
    codes = np.repeat(np.array([[1, 2, 3]], np.uint8), 30, axis=0).repeat(30, axis=1)
    colors = [c["color"] for c in render_overview(write_raster(codes), legend, max_px=64).meta["classes"]]
    assert len(set(colors)) == 3 and all(len(c) == 7 and c.startswith("#") for c in colors)


def test_bad_input_is_refused(write_raster):
    path = write_raster(np.full((20, 20), 7, np.uint8))
    with pytest.raises(UnknownClassCodeError, match=r"class codes \[7\]"):
        render_overview(path, LC100)
    with pytest.raises(InvalidInputError, match=r"max_px must be 64\.\.8192, got 10"):
        render_overview(path, LC100, max_px=10)


def test_the_bucket_overview_never_generates_a_raster(tmp_path, write_raster):
    bucket = Bucket(tmp_path / "bucket", tmp_path / "cache")
    assert bucket_overview(bucket) is None and bucket.list() == []
    path = write_raster(np.full((40, 40), 50, np.uint8))
    overview = bucket_overview(bucket, landcover=str(path), legend="worldcover", max_px=64)
    assert overview.meta["classes"][0]["name"] == "Built-up"
    paths = write_overview(overview, tmp_path / "out")
    assert [p.name for p in paths] == ["landcover.png", "landcover.json"]
    assert json.loads(paths[1].read_text()) == overview.meta and paths[0].read_bytes() == overview.png
