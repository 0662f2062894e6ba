"""H3 cells rasterised to north-up EPSG:4326 grids and written as COGs."""

from __future__ import annotations

import h3
import numpy as np
import pytest
import rasterio
from rasterio.windows import Window, from_bounds

from vectorgeo.cell_raster import (
    GridSpec,
    grid_for_cells,
    rasterise_cells,
    validate_cog,
    write_cells_cog,
)
from vectorgeo.errors import InvalidInputError, RasterAccessError

ni = h3.api.numpy_int
COLORMAP = {0: (34, 139, 34, 255), 1: (30, 144, 255, 255), 2: (220, 20, 60, 255), 3: (255, 215, 0, 255)}


@pytest.fixture(scope="module")
def patch() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """About 5,000 res-8 cells near Turin, a class per res-6 parent, and their centres (lat, lng)."""
    cells = np.array(ni.grid_disk(ni.latlng_to_cell(45.07, 7.69, 8), 40), dtype=np.uint64)
    parents = np.array([ni.cell_to_parent(int(c), 6) for c in cells], dtype=np.uint64)
    _, parent_index = np.unique(parents, return_inverse=True)
    classes = (parent_index % len(COLORMAP)).astype(np.uint8)  # (ids themselves end in 0b111 digits)
    lat, lng = np.array([ni.cell_to_latlng(int(c)) for c in cells]).T
    return cells, classes, lat, lng


def _pixels(ds, lat: np.ndarray, lng: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = rasterio.transform.rowcol(ds.transform, lng, lat)
    return np.asarray(rows), np.asarray(cols)


def test_grid_covers_cells_north_up(patch):
    cells, _, lat, lng = patch
    grid = grid_for_cells(cells)
    assert isinstance(grid, GridSpec) and grid.crs == "EPSG:4326"
    assert grid.transform.e == -grid.transform.a == -grid.pixel_size_deg < 0
    west, south, east, north = grid.bounds
    assert west < lng.min() < lng.max() < east and south < lat.min() < lat.max() < north
    # default pixel: a res-8 edge (~0.5 km) / 4, east-west at ~45°N
    edge_m = ni.average_hexagon_edge_length(8, unit="m")
    pixel_ew_m = grid.pixel_size_deg * 111_195 * np.cos(np.radians(lat.mean()))
    assert 0.8 < pixel_ew_m / (edge_m / 4) < 1.25
    finer = grid_for_cells(cells, pixels_per_edge=8)
    assert finer.pixel_size_deg == pytest.approx(grid.pixel_size_deg / 2, rel=1e-3)
    assert (90 / grid.pixel_size_deg) == pytest.approx(round(90 / grid.pixel_size_deg))
    fixed = grid_for_cells(cells, pixel_size_deg=0.01)
    assert fixed.pixel_size_deg == 0.01 and fixed.transform.c / 0.01 == pytest.approx(round(fixed.transform.c / 0.01))


def test_grid_refuses_too_many_pixels(patch):
    cells = patch[0]
    with pytest.raises(InvalidInputError, match=r"exceeds max_pixels=1,000.*pass pixel_size_deg >= "):
        grid_for_cells(cells, max_pixels=1000)
    with pytest.raises(InvalidInputError, match="exceeds max_pixels=400,000,000"):
        grid_for_cells(cells, pixel_size_deg=1e-5)


def test_bad_cells_raise(patch):
    cells, classes, _, _ = patch
    with pytest.raises(InvalidInputError, match="must be uint64, got int64"):
        grid_for_cells(cells.astype(np.int64))
    with pytest.raises(InvalidInputError, match="mix resolutions"):
        grid_for_cells(np.append(cells, np.uint64(ni.cell_to_parent(int(cells[0]), 7))))
    with pytest.raises(InvalidInputError, match="invalid H3 cell ids"):
        grid_for_cells(np.array([1, 2], dtype=np.uint64))
    grid = grid_for_cells(cells)
    with pytest.raises(InvalidInputError, match="duplicate cells"):
        rasterise_cells(np.append(cells, cells[:1]), np.append(classes, classes[:1]), grid, nodata=255)
    with pytest.raises(InvalidInputError, match="give one value per cell"):
        rasterise_cells(cells, classes[:-1], grid, nodata=255)


def test_rasterise_blocks_cover_grid_in_order(patch):
    cells, classes, _, _ = patch
    grid = grid_for_cells(cells)
    blocks = list(rasterise_cells(cells, classes, grid, nodata=255, rows_per_block=37))
    assert [row0 for row0, _ in blocks] == list(range(0, grid.height, 37))
    image = np.concatenate([b for _, b in blocks])
    assert image.shape == (grid.height, grid.width) and image.dtype == np.uint8
    whole = np.concatenate([b for _, b in rasterise_cells(cells, classes, grid, nodata=255)])
    np.testing.assert_array_equal(image, whole)
    assert set(np.unique(image)) == {*range(len(COLORMAP)), 255}


def test_class_cog(tmp_path, patch):
    cells, classes, lat, lng = patch
    grid = grid_for_cells(cells, pixels_per_edge=8)
    path = write_cells_cog(
        tmp_path / "classes.tif",
        cells,
        classes,
        grid,
        dtype="uint8",
        nodata=255,
        colormap=COLORMAP,
        band_description="land cover class",
        tags={"model": "m1", "h3_resolution": "8"},
    )
    validate_cog(path)
    with rasterio.open(path) as ds:
        assert ds.crs.to_epsg() == 4326 and ds.transform.e < 0 and ds.transform == grid.transform
        assert (ds.width, ds.height, ds.count, ds.dtypes[0], ds.nodata) == (grid.width, grid.height, 1, "uint8", 255)
        assert ds.block_shapes[0] == (512, 512) and ds.compression.name == "deflate"
        assert ds.overviews(1)
        assert {k: ds.colormap(1)[k] for k in COLORMAP} == COLORMAP
        assert ds.descriptions == ("land cover class",)
        assert ds.tags()["model"] == "m1" and ds.tags()["OVERVIEW_RESAMPLING"] == "NEAREST"
        image = ds.read(1)
        rows, cols = _pixels(ds, lat, lng)
        np.testing.assert_array_equal(image[rows, cols], classes)  # every centre's pixel has its cell's class
        sampled = np.array([v[0] for v in ds.sample(zip(lng[:300], lat[:300], strict=True))])
        np.testing.assert_array_equal(sampled, classes[:300])
        # the margin and the corners (outside the hexagonal patch) are nodata
        assert (image[0] == 255).all() and (image[:, -1] == 255).all() and image[-1, 0] == 255
        assert 0.1 < (image == 255).mean() < 0.5


def test_probability_cog_average_overviews(tmp_path, patch):
    cells, _, lat, lng = patch
    rng = np.random.default_rng(1)
    prob = rng.random(cells.size).astype(np.float32)
    grid = grid_for_cells(cells, pixels_per_edge=8)
    path = write_cells_cog(tmp_path / "p.tif", cells, prob, grid, dtype="float32", nodata=np.nan, resampling="average")
    validate_cog(path)
    with rasterio.open(path) as ds:
        assert ds.dtypes[0] == "float32" and np.isnan(ds.nodata) and ds.overviews(1)
        assert ds.tags()["OVERVIEW_RESAMPLING"] == "AVERAGE"
        rows, cols = _pixels(ds, lat, lng)
        np.testing.assert_array_equal(ds.read(1)[rows, cols], prob)
        overview = ds.read(1, out_shape=(ds.height // 4, ds.width // 4))
        inside = overview[np.isfinite(overview)]
        assert inside.size and inside.min() >= 0 and inside.max() <= 1
        assert 0.1 < inside.std() < 0.3  # averaged, not picked: less spread than uniform (0.29)


def test_windowed_read(tmp_path, patch):
    cells, classes, lat, lng = patch
    grid = grid_for_cells(cells, pixels_per_edge=8)
    path = write_cells_cog(tmp_path / "c.tif", cells, classes, grid, dtype="uint8", nodata=255)
    with rasterio.open(path) as ds:
        window = from_bounds(7.65, 45.03, 7.72, 45.10, ds.transform).round_offsets().round_lengths()
        part = ds.read(1, window=window)
        assert part.shape == (window.height, window.width)
        np.testing.assert_array_equal(part, ds.read(1)[window.toslices()])
        chosen = (lng > 7.66) & (lng < 7.71) & (lat > 45.04) & (lat < 45.09)
        rows, cols = _pixels(ds, lat[chosen], lng[chosen])
        np.testing.assert_array_equal(part[rows - window.row_off, cols - window.col_off], classes[chosen])
        assert ds.read(1, window=Window(0, 0, 10, 10)).tolist() == [[255] * 10] * 10


def test_cells_across_the_antimeridian_are_drawn_on_their_centres_side():
    cells = np.array(ni.grid_disk(ni.latlng_to_cell(10.0, 179.95, 7), 6), dtype=np.uint64)
    lat, lng = np.array([ni.cell_to_latlng(int(c)) for c in cells]).T
    grid = grid_for_cells(cells)
    west, _, east, _ = grid.bounds
    assert west >= -180 and east <= 180 and east - west > 300  # spans the map; both sides drawn
    image = np.concatenate(
        [b for _, b in rasterise_cells(cells, np.arange(cells.size, dtype=np.int32), grid, nodata=-1)]
    )
    rows, cols = rasterio.transform.rowcol(grid.transform, lng, lat)
    np.testing.assert_array_equal(image[rows, cols], np.arange(cells.size))


def test_failed_write_leaves_nothing(tmp_path, patch, monkeypatch):
    cells, classes, _, _ = patch
    grid = grid_for_cells(cells)
    import rasterio.shutil

    def _broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(rasterio.shutil, "copy", _broken)
    with pytest.raises(OSError, match="disk full"):
        write_cells_cog(tmp_path / "c.tif", cells, classes, grid, dtype="uint8", nodata=255)
    assert not any(tmp_path.iterdir())


def test_bad_cog_options_raise(tmp_path, patch):
    cells, classes, _, _ = patch
    grid = grid_for_cells(cells)
    with pytest.raises(InvalidInputError, match="do not fit uint8"):
        write_cells_cog(tmp_path / "c.tif", cells, classes.astype(int) + 300, grid, dtype="uint8", nodata=255)
    with pytest.raises(InvalidInputError, match="nodata nan does not fit uint8"):
        write_cells_cog(tmp_path / "c.tif", cells, classes, grid, dtype="uint8", nodata=np.nan)
    with pytest.raises(InvalidInputError, match="colormap needs a uint8"):
        write_cells_cog(tmp_path / "c.tif", cells, classes, grid, dtype="float32", nodata=np.nan, colormap=COLORMAP)
    with pytest.raises(InvalidInputError, match="unknown resampling 'median'"):
        write_cells_cog(tmp_path / "c.tif", cells, classes, grid, dtype="uint8", nodata=255, resampling="median")
    assert not any(tmp_path.iterdir())


def test_validate_cog_rejects_plain_geotiff(tmp_path):
    path = tmp_path / "striped.tif"
    profile = {"driver": "GTiff", "width": 2048, "height": 2048, "count": 1, "dtype": "uint8", "crs": "EPSG:4326"}
    with rasterio.open(path, "w", transform=rasterio.transform.from_origin(0, 1, 1e-3, 1e-3), **profile) as dst:
        dst.write(np.zeros((1, 2048, 2048), dtype=np.uint8))
    with pytest.raises(InvalidInputError, match="is not a valid COG"):
        validate_cog(path)
    with pytest.raises(RasterAccessError, match="cannot open"):
        validate_cog(tmp_path / "missing.tif")
