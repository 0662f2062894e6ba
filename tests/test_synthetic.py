"""Tests for vectorgeo.synthetic: grid, determinism, COG files, and that it looks like land cover."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from scipy import ndimage

from vectorgeo.errors import InvalidInputError
from vectorgeo.legends import BUILTIN_LEGENDS
from vectorgeo.synthetic import (
    DEFAULT_BOUNDS,
    LANDCOVER_NODATA,
    MAX_PIXELS,
    bounds_to_grid,
    synthesize_landscape,
    write_synthetic_rasters,
)

COAST_BOUNDS = (-124.2, 44.4, -123.7, 44.8)  # 0.5 x 0.4 degree of the Oregon coast, sea to the west
TRANSECT_BOUNDS = (-124.2, 44.6, -122.6, 44.7)  # coast to the high range, 1.6 x 0.1 degree
LC100_CODES = set(BUILTIN_LEGENDS["lc100"].codes)
FOREST = [111, 112, 113, 114, 115, 116, 121, 122, 123, 124, 125, 126]
EIGHT = np.ones((3, 3), dtype=bool)


def _generate(bounds, seed=0):
    height, width, transform = bounds_to_grid(bounds)
    codes, dem = synthesize_landscape(height, width, transform=transform, seed=seed)
    return codes, dem, transform


@pytest.fixture(scope="module")
def coast():
    """Land cover, DEM and transform of the coastal test AOI, seed 0 (generated once)."""
    return _generate(COAST_BOUNDS)


@pytest.fixture(scope="module")
def written(tmp_path_factory, coast):
    """The coastal test AOI written as two COGs."""
    out = tmp_path_factory.mktemp("synthetic")
    return write_synthetic_rasters(out / "lc.tif", out / "dem.tif", bounds=COAST_BOUNDS, seed=0)


def test_bounds_snap_outward_to_the_lc100_grid():
    height, width, transform = bounds_to_grid(DEFAULT_BOUNDS)
    assert (height, width) == (1512, 2017)  # -124.6 is not on the grid, so one more column
    assert transform.a == -transform.e == 1 / 1008
    assert transform.c * 1008 == pytest.approx(round(transform.c * 1008), abs=1e-6)
    assert transform.f == 45.5
    west, north = transform.c, transform.f
    assert west <= DEFAULT_BOUNDS[0] and north >= DEFAULT_BOUNDS[3]
    assert west + width / 1008 >= DEFAULT_BOUNDS[2] and north - height / 1008 == pytest.approx(44.0)


def test_same_seed_same_arrays_other_seed_differs(coast):
    codes, dem, _ = coast
    again_codes, again_dem, _ = _generate(COAST_BOUNDS, seed=0)
    np.testing.assert_array_equal(codes, again_codes)
    np.testing.assert_array_equal(dem, again_dem)
    other_codes, other_dem, _ = _generate(COAST_BOUNDS, seed=1)
    assert (other_codes != codes).mean() > 0.1
    assert not np.array_equal(other_dem, dem)


def test_files_are_cogs_on_the_lc100_grid(written, coast):
    lc_path, dem_path = written
    codes, dem, transform = coast
    for path, dtype in ((lc_path, "uint8"), (dem_path, "float32")):
        with rasterio.open(path) as src:
            assert src.driver == "GTiff" and src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
            assert src.profile["tiled"] and src.block_shapes[0] == (512, 512)
            assert src.compression.name == "deflate"
            assert src.overviews(1), "no internal overviews"
            assert src.crs.to_epsg() == 4326
            assert src.res == (1 / 1008, 1 / 1008) and src.transform == transform
            assert src.dtypes[0] == dtype
            np.testing.assert_array_equal(src.read(1), codes if dtype == "uint8" else dem)
    with rasterio.open(lc_path) as src:
        assert src.nodata == LANDCOVER_NODATA
        assert src.colormap(1)[200][:3] == (0, 0, 128)
        overview = src.read(1, out_shape=(src.height // 2, src.width // 2))
        assert set(np.unique(overview)) <= LC100_CODES  # mode resampling never invents codes
    assert not [p for p in lc_path.parent.iterdir() if p.name.startswith(".")], "temporary file left behind"


def test_same_seed_same_files(written, tmp_path):
    again = write_synthetic_rasters(tmp_path / "lc.tif", tmp_path / "dem.tif", bounds=COAST_BOUNDS, seed=0)
    for first, second in zip(written, again, strict=True):
        assert first.read_bytes() == second.read_bytes()


def test_failed_write_keeps_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "lc.tif"
    target.write_bytes(b"old")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(rasterio.shutil, "copy", fail)
    with pytest.raises(OSError, match="disk full"):
        write_synthetic_rasters(target, tmp_path / "dem.tif", bounds=(-124.1, 44.5, -124.0, 44.55))
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lc.tif"]


def test_codes_are_lc100_and_sea_follows_the_land_mask(coast):
    from global_land_mask import globe

    codes, _, transform = coast
    assert set(np.unique(codes)) <= LC100_CODES - {0}
    height, width = codes.shape
    lat = transform.f + transform.e * (np.arange(height) + 0.5)
    lng = transform.c + transform.a * (np.arange(width) + 0.5)
    land = globe.is_land(lat[:, None].copy(), lng[None, :].copy())
    sea = codes == 200
    assert 0.1 < sea.mean() < 0.5
    assert sea[~land].mean() > 0.97
    assert sea[land].mean() < 0.01


def test_land_classes_each_take_a_meaningful_share(coast):
    codes = coast[0]
    land = codes[codes != 200]
    share = {
        name: np.isin(land, group).mean()
        for name, group in {
            "forest": FOREST,
            "cropland": [40],
            "urban": [50],
            "water": [80],
            "herbaceous/shrubs": [20, 30],
        }.items()
    }
    assert share["forest"] > 0.4
    assert share["cropland"] > 0.03
    assert share["urban"] > 0.001
    assert share["water"] > 0.003
    assert share["herbaceous/shrubs"] > 0.03
    assert len(set(np.unique(land))) >= 8


def test_it_is_not_noise(coast):
    codes = coast[0]
    assert (codes[:, 1:] == codes[:, :-1]).mean() > 0.8
    assert (codes[1:] == codes[:-1]).mean() > 0.8


def test_urban_is_a_few_compact_towns(coast):
    labels, n = ndimage.label(coast[0] == 50, structure=EIGHT)
    assert 1 <= n <= 10
    for box, size in zip(ndimage.find_objects(labels), np.bincount(labels.ravel())[1:], strict=True):
        rows, cols = box[0].stop - box[0].start, box[1].stop - box[1].start
        assert size / (rows * cols) > 0.3, "urban component is not compact"


def test_rivers_are_thin_connected_lines(coast):
    water = coast[0] == 80
    labels, n = ndimage.label(water, structure=EIGHT)
    sizes = np.bincount(labels.ravel())[1:]
    assert water.sum() / n > 50  # a few long networks, not scattered specks
    biggest = ndimage.find_objects(labels)[int(np.argmax(sizes))]
    assert max(s.stop - s.start for s in biggest) > 100  # spans > 100 px (~10 km)
    rivers = water & ~ndimage.binary_opening(water, structure=np.ones((4, 4)))  # drop lake interiors
    assert ndimage.binary_erosion(rivers, structure=np.ones((4, 4))).sum() == 0  # no river wider than 3 px


def test_classes_follow_elevation(coast):
    codes, dem, _ = coast
    assert (dem[codes == 200] == 0).all() and (dem[codes != 200] >= 1).all()
    assert dem[np.isin(codes, FOREST)].mean() > dem[codes == 40].mean()
    assert dem[codes == 50].mean() < 150


def test_high_classes_only_high_up():
    codes, dem, _ = _generate(TRANSECT_BOUNDS)
    assert dem.max() > 1500, "the transect should reach the high range"
    needle, broad = np.isin(codes, [111, 121]), np.isin(codes, [114, 124])
    assert dem[needle].mean() > dem[broad].mean()
    for code, floor_m in ((70, 2000), (60, 1700), (100, 1500)):
        if (codes == code).any():
            assert dem[codes == code].min() > floor_m, f"class {code} below {floor_m} m"


@pytest.mark.parametrize(
    ("bounds", "sea_share"),
    [((-122.0, 44.0, -121.95, 44.05), 0.0), ((-130.0, 44.0, -129.95, 44.05), 1.0)],
    ids=["inland", "open-sea"],
)
def test_aoi_without_coast(bounds, sea_share):
    codes, dem, _ = _generate(bounds)
    assert (codes == 200).mean() == sea_share
    assert set(np.unique(codes)) <= LC100_CODES - {0}
    assert (dem[codes == 200] == 0).all()


@pytest.mark.parametrize(
    "bounds",
    [
        (-124.0, 44.0, -123.0),
        (-123.0, 44.0, -124.0, 45.0),
        (-124.0, 45.0, -123.0, 44.0),
        (-124.0, 44.0, -123.0, 95.0),
        (-190.0, 44.0, -123.0, 45.0),
        (-124.0, float("nan"), -123.0, 45.0),
        ("west", 44.0, -123.0, 45.0),
        (-180.0, -90.0, 180.0, 90.0),
    ],
)
def test_bad_bounds_raise_naming_the_bounds(bounds, tmp_path):
    with pytest.raises(InvalidInputError, match=re.escape(repr(bounds))):
        write_synthetic_rasters(tmp_path / "lc.tif", tmp_path / "dem.tif", bounds=bounds)
    assert not list(tmp_path.iterdir())


def test_too_large_aoi_says_so():
    with pytest.raises(InvalidInputError, match=f"more than the {MAX_PIXELS:,} allowed"):
        bounds_to_grid((-180.0, -90.0, 180.0, 90.0))


def test_bad_grid_raises():
    _, _, transform = bounds_to_grid(COAST_BOUNDS)
    with pytest.raises(InvalidInputError, match="too small"):
        synthesize_landscape(1, 10, transform=transform)
    with pytest.raises(InvalidInputError, match="not north-up"):
        synthesize_landscape(10, 10, transform=transform @ rasterio.Affine.rotation(30))


def test_paths_come_back_as_paths(written):
    assert all(isinstance(p, Path) and p.is_file() for p in written)
