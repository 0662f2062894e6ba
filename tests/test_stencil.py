import json

import h3
import numpy as np
import pytest
import shapely

from tests.conftest import LC100_PIXEL_DEG
from vectorgeo.errors import InvalidInputError
from vectorgeo.land import is_land, is_land_by_mask
from vectorgeo.legends import get_legend
from vectorgeo.raster import open_raster
from vectorgeo.stencil import (
    aoi_to_cells,
    build_stencil,
    cells_to_latlng,
    check_resolution,
    footprint_to_geometry,
    parse_aoi,
    read_stencil,
    write_stencil,
)

LC = get_legend("lc100")


@pytest.mark.parametrize("res", [0, 1, 2, 3])
def test_every_cell_exactly_once_globally(res):
    for aoi in (None, parse_aoi("-180,-90,180,90")):
        chunks = list(aoi_to_cells(aoi, res))
        cells = np.concatenate(chunks)
        assert cells.size == h3.get_num_cells(res)
        assert np.unique(cells).size == cells.size


def test_tiled_polygon_fill_matches_centre_containment():
    # A 40x35 degree box is cut into 30-degree tiles; no cell is lost or doubled.
    aoi = parse_aoi("-10,20,30,55")
    cells = np.concatenate(list(aoi_to_cells(aoi, 3)))
    assert np.unique(cells).size == cells.size
    lat, lng = cells_to_latlng(cells)
    assert ((lng >= -10) & (lng <= 30) & (lat >= 20) & (lat <= 55)).all()
    every = np.concatenate(list(aoi_to_cells(None, 3)))
    elat, elng = cells_to_latlng(every)
    inside = (elng > -10) & (elng < 30) & (elat > 20) & (elat < 55)
    assert set(every[inside].tolist()) == set(cells.tolist())


def test_cells_to_latlng_matches_h3():
    cells = np.concatenate(list(aoi_to_cells(parse_aoi("5,45,6,46"), 6)))[:200]
    lat, lng = cells_to_latlng(cells)
    expected = np.array([h3.cell_to_latlng(h3.int_to_str(int(c))) for c in cells])
    np.testing.assert_allclose(np.column_stack([lat, lng]), expected, atol=1e-9)


def test_global_land_stencil_known_places():
    table = build_stencil(2, progress=False)
    share = table.num_rows / h3.get_num_cells(2)
    assert 0.25 < share < 0.33  # about 29 % of Earth is land
    cells = set(table.column("h3").to_pylist())
    paris = h3.str_to_int(h3.latlng_to_cell(48.85, 2.35, 2))
    mid_pacific = h3.str_to_int(h3.latlng_to_cell(0.0, -150.0, 2))
    assert paris in cells and mid_pacific not in cells
    assert table.column("h3").to_numpy().dtype == np.uint64


def test_land_mask_known_points():
    assert is_land_by_mask(np.array([48.85, 0.0, 45.0]), np.array([2.35, -150.0, -125.5])).tolist() == [
        True,
        False,
        False,
    ]


@pytest.fixture
def coastal_raster(write_raster):
    """0.6 x 0.5 degree inland Oregon; the western third coded as sea, a nodata stripe."""
    codes = np.full((504, 605), 40, dtype=np.uint8)
    codes[:, 250:400] = 111
    codes[:, :200] = 200
    codes[300:320, :] = 255
    return write_raster(codes, west=-123.5, north=44.8), codes


def _brute_force_stencil(codes, res):
    west, north = -123.5, 44.8
    south, east = north - codes.shape[0] * LC100_PIXEL_DEG, west + codes.shape[1] * LC100_PIXEL_DEG
    grid_lat, grid_lng = np.meshgrid(np.linspace(south, north, 80), np.linspace(west, east, 80))
    seeds = {h3.latlng_to_cell(a, b, res) for a, b in zip(grid_lat.ravel(), grid_lng.ravel(), strict=False)}
    candidates = set()
    for cell in seeds:
        candidates |= set(h3.grid_disk(cell, 1))
    expected = set()
    for cell in candidates:
        lat, lng = h3.cell_to_latlng(cell)
        if not (south < lat < north and west < lng < east):
            continue
        row, col = int((north - lat) / LC100_PIXEL_DEG), int((lng - west) / LC100_PIXEL_DEG)
        if codes[row, col] in (200, 255) or not is_land_by_mask(np.array([lat]), np.array([lng]))[0]:
            continue
        expected.add(h3.str_to_int(cell))
    return expected


def test_stencil_on_a_raster_matches_brute_force(coastal_raster):
    path, codes = coastal_raster
    with open_raster(path) as ds:
        table = build_stencil(7, dataset=ds, legend=LC, progress=False)
    got = set(table.column("h3").to_pylist())
    assert got == _brute_force_stencil(codes, 7)
    assert 200 < len(got) < 600
    lng = table.column("lng").to_numpy()
    assert (lng > -123.5 + 200 * LC100_PIXEL_DEG).all()  # nothing on the raster's sea


def test_aoi_limits_the_stencil_and_must_overlap(coastal_raster):
    path, _ = coastal_raster
    with open_raster(path) as ds:
        full = build_stencil(7, dataset=ds, legend=LC, progress=False)
        part = build_stencil(7, aoi=parse_aoi("-123.2,44.3,-123.0,44.8"), dataset=ds, legend=LC, progress=False)
        assert 0 < part.num_rows < full.num_rows
        assert set(part.column("h3").to_pylist()) <= set(full.column("h3").to_pylist())
        with pytest.raises(InvalidInputError, match="does not overlap the raster footprint"):
            build_stencil(7, aoi=parse_aoi("10,10,11,11"), dataset=ds, legend=LC, progress=False)


def test_is_land_needs_a_legend_with_a_raster(coastal_raster):
    path, _ = coastal_raster
    with open_raster(path) as ds, pytest.raises(TypeError, match="legend"):
        is_land(np.array([44.5]), np.array([-123.0]), ds)


@pytest.mark.parametrize("bad", [-1, 16, 7.5, "7", True])
def test_resolution_must_be_0_to_15(bad):
    with pytest.raises(InvalidInputError, match="h3_resolution"):
        check_resolution(bad)


def test_parse_aoi_forms(tmp_path):
    bbox = parse_aoi("-124, 44, -123, 45")
    assert bbox.bounds == (-124.0, 44.0, -123.0, 45.0)
    across = parse_aoi("170,-20,-170,-10")
    assert across.geom_type == "MultiPolygon" and across.area == pytest.approx(200)
    feature = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}}
    assert parse_aoi(json.dumps(feature)).area == pytest.approx(0.5)
    path = tmp_path / "aoi.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    assert parse_aoi(str(path)).area == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("1,2,3", "neither a bbox"),
        ("a,b,c,d", "four numbers"),
        ("0,50,10,40", "south < north"),
        ("0,0,200,10", "west/east"),
        ('{"type": "Point", "coordinates": [0, 0]}', "no area"),
        ("{not json", "not valid JSON"),
    ],
)
def test_parse_aoi_errors(text, match):
    with pytest.raises(InvalidInputError, match=match):
        parse_aoi(text)


def test_stencil_parquet_round_trip(tmp_path):
    table = build_stencil(4, aoi=parse_aoi("-124,44,-122,46"), progress=False)
    path = write_stencil(table, tmp_path / "s.parquet", {"h3_resolution": 4})
    back = read_stencil(path)
    assert back.equals(table.replace_schema_metadata(back.schema.metadata))
    assert json.loads(back.schema.metadata[b"vectorgeo"]) == {"h3_resolution": 4}


def test_aoi_with_an_edge_on_a_tile_boundary():
    """Cutting at 30-degree tiles can leave stray edges; only the polygon parts are filled."""
    aoi = parse_aoi('{"type":"Polygon","coordinates":[[[-10,0],[0,0],[0,10],[5,10],[5,20],[-10,20],[-10,0]]]}')
    cells = np.concatenate(list(aoi_to_cells(aoi, 4)))
    lat, lng = cells_to_latlng(cells)
    assert cells.size > 1000 and np.unique(cells).size == cells.size
    assert shapely.contains_xy(aoi.buffer(1e-9), lng, lat).all()


def test_antimeridian_aoi_fills_only_its_parts():
    aoi = parse_aoi("170,-30,-170,30")  # 20 x 60 degrees across 180
    cells = np.concatenate(list(aoi_to_cells(aoi, 3)))
    lat, lng = cells_to_latlng(cells)
    assert ((lng >= 170) | (lng <= -170)).all() and (np.abs(lat) <= 30).all()
    assert cells.size < 0.05 * h3.get_num_cells(3)  # not the whole globe


@pytest.mark.parametrize(
    ("bounds", "expected"),
    [
        ((-180.0004, -60.0, 179.9996, 80.0), (-180.0, -60.0, 180.0, 80.0)),  # half a pixel past 180: the globe
        ((170.0, 0.0, 190.0, 10.0), (-180.0, 0.0, 180.0, 10.0)),  # past 180: wrapped into two parts
        ((10.0, -95.0, 20.0, 95.0), (10.0, -90.0, 20.0, 90.0)),
    ],
)
def test_raster_footprints_are_wrapped_not_rejected(bounds, expected):
    assert footprint_to_geometry(*bounds).bounds == pytest.approx(expected)
