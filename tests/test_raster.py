import numpy as np
import pytest
import rasterio

from tests.conftest import LC100_PIXEL_DEG
from vectorgeo.errors import RasterAccessError, UnknownClassCodeError
from vectorgeo.legends import NODATA_INDEX, get_legend
from vectorgeo.raster import (
    dem_patches,
    extract_patches,
    latlng_to_pixels,
    open_raster,
    pixel_sides_m,
    pixel_size_m,
    sample_classes,
)

LC = get_legend("lc100")
WEST, NORTH = -123.5, 44.8


def _pixel_centre(row, col, pixel=LC100_PIXEL_DEG):
    return NORTH - (row + 0.5) * pixel, WEST + (col + 0.5) * pixel


def _coded(h, w, seed=0):
    rng = np.random.default_rng(seed)
    return np.asarray(LC.codes, dtype=np.uint8)[rng.integers(0, 23, (h, w))]


def test_patches_match_direct_slicing(write_raster):
    codes = _coded(300, 400)
    path = write_raster(codes, block=64)
    rows = np.array([16, 100, 150, 283, 16])
    cols = np.array([16, 250, 383, 200, 17])
    lat, lng = _pixel_centre(rows, cols)
    with open_raster(path) as ds:
        patches = extract_patches(ds, lat, lng, LC, patch_px=32, region_px=64)
    expected_idx = LC.codes_to_indices(codes)
    assert patches.valid.all()
    for k, (r, c) in enumerate(zip(rows, cols, strict=False)):
        np.testing.assert_array_equal(patches.classes[k], expected_idx[r - 16 : r + 16, c - 16 : c + 16])


def test_region_size_does_not_change_the_answer(write_raster):
    path = write_raster(_coded(256, 256, seed=3), block=32)
    rng = np.random.default_rng(1)
    lat, lng = _pixel_centre(rng.uniform(0, 256, 500), rng.uniform(0, 256, 500))
    with open_raster(path) as ds:
        a = extract_patches(ds, lat, lng, LC, patch_px=8, region_px=32)
        b = extract_patches(ds, lat, lng, LC, patch_px=8, region_px=4096)
    np.testing.assert_array_equal(a.classes, b.classes)
    np.testing.assert_array_equal(a.valid, b.valid)
    assert 0 < a.n_invalid < 500  # points near the edge


def test_each_region_is_read_once(write_raster, monkeypatch):
    path = write_raster(_coded(512, 512), block=128)
    rng = np.random.default_rng(2)
    lat, lng = _pixel_centre(rng.uniform(20, 490, 2000), rng.uniform(20, 490, 2000))
    reads = []
    with open_raster(path) as ds:
        original = ds.read

        def counting_read(*args, **kwargs):
            reads.append(kwargs.get("window"))
            return original(*args, **kwargs)

        monkeypatch.setattr(ds, "read", counting_read)
        patches = extract_patches(ds, lat, lng, LC, patch_px=16, region_px=256)
    assert patches.valid.all()
    assert len(reads) <= 4  # 2000 points, 2x2 regions: never one read per point


def test_edge_and_nodata_patches_are_invalid(write_raster):
    codes = np.full((100, 100), 20, dtype=np.uint8)
    codes[60, 60] = 255  # one nodata pixel
    path = write_raster(codes)
    lat, lng = _pixel_centre(np.array([50, 3, 99, 62, -40]), np.array([20, 50, 50, 62, 10]))
    with open_raster(path) as ds:
        patches = extract_patches(ds, lat, lng, LC, patch_px=8)
    assert patches.valid.tolist() == [True, False, False, False, False]
    assert (patches.classes[[1, 2, 4]] == NODATA_INDEX).all()
    assert (patches.classes[3] == NODATA_INDEX).sum() == 1
    assert (patches.classes[0] == 1).all()


def test_unknown_codes_in_the_raster_are_reported(write_raster):
    codes = np.full((64, 64), 20, dtype=np.uint8)
    codes[30, 30] = 77
    with open_raster(write_raster(codes)) as ds, pytest.raises(UnknownClassCodeError, match=r"\[77\]"):
        extract_patches(ds, *_pixel_centre(np.array([32]), np.array([32])), LC, patch_px=8)


def test_projected_raster_patches_centre_on_the_point(write_raster):
    # UTM zone 10N, 30 m pixels; the point is the centre of pixel (40, 70).
    codes = _coded(100, 120, seed=5)
    west, north = 500_000.0, 4_960_000.0
    path = write_raster(codes, west=west, north=north, pixel=30.0, crs="EPSG:32610")
    x, y = west + 70.5 * 30, north - 40.5 * 30
    lng, lat = rasterio.warp.transform("EPSG:32610", "EPSG:4326", [x], [y])
    with open_raster(path) as ds:
        row, col = latlng_to_pixels(ds, np.array(lat), np.array(lng))
        assert row[0] == pytest.approx(40.5, abs=1e-6) and col[0] == pytest.approx(70.5, abs=1e-6)
        patches = extract_patches(ds, np.array(lat), np.array(lng), LC, patch_px=10)
        assert pixel_size_m(ds) == pytest.approx(30.0, rel=0.002)  # UTM scale 0.9996 on the central meridian
    np.testing.assert_array_equal(patches.classes[0], LC.codes_to_indices(codes[35:45, 65:75]))


def test_sample_classes_reads_the_pixel_under_each_point(write_raster):
    codes = _coded(50, 50, seed=9)
    with open_raster(write_raster(codes)) as ds:
        got = sample_classes(ds, *_pixel_centre(np.array([0, 49, 25, 80]), np.array([0, 49, 7, 3])), LC)
    idx = LC.codes_to_indices(codes)
    assert got.tolist() == [idx[0, 0], idx[49, 49], idx[25, 7], NODATA_INDEX]


def test_pixel_ground_size_in_any_crs(write_raster):
    with open_raster(write_raster(_coded(10, 10))) as ds:  # 1/1008 degree near 44.8 N
        x_m, y_m = pixel_sides_m(ds)
        assert x_m == pytest.approx(110.3 * np.cos(np.radians(44.8)), rel=0.01) and y_m == pytest.approx(
            110.3, rel=0.01
        )
        assert pixel_size_m(ds) == pytest.approx(np.sqrt(x_m * y_m))
    # Web Mercator at 60 N: a nominal 100 m pixel is 50 m on the ground
    y60 = 8_399_737.9  # EPSG:3857 northing of 60 N
    with open_raster(write_raster(_coded(10, 10), west=0.0, north=y60 + 500, pixel=100.0, crs="EPSG:3857")) as ds:
        x_m, y_m = pixel_sides_m(ds)
    assert x_m == pytest.approx(50.0, rel=0.01) and y_m == pytest.approx(50.0, rel=0.01)


def test_open_errors_name_the_problem(tmp_path, write_raster):
    with pytest.raises(RasterAccessError, match="does not exist"):
        open_raster(tmp_path / "missing.tif")
    (tmp_path / "junk.tif").write_text("not a raster")
    with pytest.raises(RasterAccessError, match="cannot be read"):
        open_raster(tmp_path / "junk.tif")
    with pytest.raises(RasterAccessError, match="has no CRS"):
        open_raster(write_raster(_coded(10, 10), crs=None))
    with pytest.raises(FileNotFoundError.__mro__[1]):  # RasterAccessError is an OSError
        open_raster(tmp_path / "missing.tif")


def test_dem_on_the_same_grid_is_a_plain_slice(write_raster):
    codes = _coded(80, 90)
    elev = (np.arange(80)[:, None] * 1000 + np.arange(90)[None, :]).astype(np.float32)
    lc_path = write_raster(codes)
    dem_path = write_raster(elev, nodata=-9999.0)
    lat, lng = _pixel_centre(np.array([20, 60]), np.array([30, 70]))
    with open_raster(lc_path) as lc, open_raster(dem_path) as dem:
        got = dem_patches(dem, lc, lat, lng, patch_px=8)
    np.testing.assert_array_equal(got[0], elev[16:24, 26:34])
    np.testing.assert_array_equal(got[1], elev[56:64, 66:74])


def test_dem_in_another_crs_and_grid_follows_each_land_cover_pixel(write_raster):
    # Land cover in UTM 10N at 30 m; DEM in EPSG:4326 at 1/1200 degree with a nodata hole.
    codes = _coded(60, 60, seed=2)
    lc_path = write_raster(codes, west=500_000.0, north=4_960_000.0, pixel=30.0, crs="EPSG:32610")
    elev = np.random.default_rng(0).uniform(0, 3000, (40, 40)).astype(np.float32)
    elev[10, 10] = -9999.0
    dem_path = write_raster(elev, west=-123.01, north=44.79, pixel=1 / 1200, nodata=-9999.0)
    lng, lat = rasterio.warp.transform("EPSG:32610", "EPSG:4326", [500_000 + 30 * 30.5], [4_960_000 - 30 * 30.5])
    with open_raster(lc_path) as lc, open_raster(dem_path) as dem:
        got = dem_patches(dem, lc, np.array(lat), np.array(lng), patch_px=10)[0]
        # independent answer: transform each land-cover pixel centre and ask rasterio which DEM pixel holds it
        rows, cols = np.mgrid[25:35, 25:35] + 0.5
        xs, ys = 500_000 + cols * 30.0, 4_960_000 - rows * 30.0
        dx, dy = rasterio.warp.transform("EPSG:32610", "EPSG:4326", xs.ravel(), ys.ravel())
        expected = np.full(100, np.nan, dtype=np.float32)
        for k, (x, y) in enumerate(zip(dx, dy, strict=True)):
            r, c = dem.index(x, y)
            if 0 <= r < 40 and 0 <= c < 40 and elev[r, c] != -9999.0:
                expected[k] = elev[r, c]
    np.testing.assert_array_equal(got.ravel(), expected)
    assert np.isfinite(got).sum() > 50


def test_dem_nan_off_the_land_cover(write_raster):
    lc_path = write_raster(_coded(40, 40))
    dem_path = write_raster(np.ones((40, 40), dtype=np.float32), nodata=-9999.0)
    with open_raster(lc_path) as lc, open_raster(dem_path) as dem:
        got = dem_patches(dem, lc, *_pixel_centre(np.array([2, 20]), np.array([2, 20])), patch_px=8)
    assert np.isnan(got[0]).all() and (got[1] == 1).all()


def test_dem_stride_samples_block_centres(write_raster):
    elev = (np.arange(40)[:, None] * 100 + np.arange(40)[None, :]).astype(np.float32)
    lc_path, dem_path = write_raster(_coded(40, 40)), write_raster(elev, nodata=-9999.0)
    with open_raster(lc_path) as lc, open_raster(dem_path) as dem:
        got = dem_patches(dem, lc, *_pixel_centre(np.array([20]), np.array([20])), patch_px=8, stride=4)
    np.testing.assert_array_equal(got[0], elev[[18, 22]][:, [18, 22]])
