"""GeoParquet 1.1 files of H3 cells: read back by GeoPandas, DuckDB and GDAL."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import h3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import shapely

from vectorgeo.errors import InvalidInputError
from vectorgeo.geoparquet import (
    cells_geometry_wkb,
    read_geoparquet_metadata,
    write_cells_geoparquet,
)

CLASSES = np.array(["forest", "water", "urban", "crop"])


@pytest.fixture
def cells_table() -> pa.Table:
    """A few hundred res-7 cells near Turin, shuffled, with a class and two probabilities."""
    ni = h3.api.numpy_int
    cells = np.array(ni.grid_disk(ni.latlng_to_cell(45.07, 7.69, 7), 12), dtype=np.uint64)
    rng = np.random.default_rng(0)
    cells = rng.permutation(cells)
    p = rng.random(cells.size)
    return pa.table(
        {
            "h3": pa.array(cells, type=pa.uint64()),
            "class_name": pa.array(rng.choice(CLASSES, cells.size)),
            "p_forest": pa.array(p, type=pa.float32()),
            "p_water": pa.array(1 - p, type=pa.float64()),
        }
    )


def _centres(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lat, lng = np.array([h3.api.numpy_int.cell_to_latlng(int(c)) for c in cells]).T
    return lat, lng


def _duckdb():
    duckdb = pytest.importorskip("duckdb")
    con = duckdb.connect()
    ext_dir = Path(sysconfig.get_paths()["purelib"]) / "duckdb_ext" / "extensions"
    con.execute(f"SET extension_directory='{ext_dir}'")
    con.execute("LOAD spatial")
    return con


def test_metadata_follows_geoparquet_1_1(tmp_path, cells_table):
    path = write_cells_geoparquet(cells_table, tmp_path / "cells.parquet", metadata={"model": "m1", "res": 7})
    geo = read_geoparquet_metadata(path)
    assert geo["version"] == "1.1.0"
    assert geo["primary_column"] == "geometry"
    column = geo["columns"]["geometry"]
    assert column["encoding"] == "WKB"
    assert column["geometry_types"] == ["Point"]
    assert column["edges"] == "planar"
    assert "crs" not in column  # absent means OGC:CRS84
    assert column["covering"] == {"bbox": {k: ["bbox", k] for k in ("xmin", "ymin", "xmax", "ymax")}}
    lat, lng = _centres(cells_table.column("h3").to_numpy())
    np.testing.assert_allclose(column["bbox"], [lng.min(), lat.min(), lng.max(), lat.max()], atol=1e-12)

    schema = pq.read_schema(path)
    assert json.loads(schema.metadata[b"vectorgeo"]) == {"model": "m1", "res": 7}
    assert schema.field("h3").type == pa.uint64()
    assert schema.field("bbox").type == pa.struct([(k, pa.float64()) for k in ("xmin", "ymin", "xmax", "ymax")])
    assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"


def test_rows_are_sorted_by_h3_and_columns_kept(tmp_path, cells_table):
    path = write_cells_geoparquet(cells_table, tmp_path / "cells.parquet", row_group_size=100)
    table = pq.read_table(path)
    cells = table.column("h3").to_numpy()
    assert np.all(np.diff(cells.astype(np.float64)) >= 0) and np.all(cells[:-1] < cells[1:])
    assert pq.ParquetFile(path).metadata.num_row_groups == -(-cells_table.num_rows // 100)
    # every row still carries its own values after the sort
    expected = dict(
        zip(cells_table.column("h3").to_pylist(), cells_table.column("class_name").to_pylist(), strict=True)
    )
    assert table.column("class_name").to_pylist() == [expected[c] for c in cells.tolist()]


def test_geopandas_reads_points_at_cell_centres(tmp_path, cells_table):
    gpd = pytest.importorskip("geopandas")
    from pyproj import CRS

    path = write_cells_geoparquet(cells_table, tmp_path / "cells.parquet")
    df = gpd.read_parquet(path)
    assert len(df) == cells_table.num_rows
    assert df.geometry.name == "geometry" and (df.geom_type == "Point").all()
    assert df.crs.equals(CRS("OGC:CRS84"))
    assert df.crs.equals(CRS.from_epsg(4326), ignore_axis_order=True)
    lat, lng = _centres(df["h3"].to_numpy())
    np.testing.assert_allclose(df.geometry.x, lng, atol=1e-9)
    np.testing.assert_allclose(df.geometry.y, lat, atol=1e-9)
    assert set(df["class_name"]) <= set(CLASSES)


def test_lat_lng_columns_are_used_for_points(tmp_path, cells_table):
    gpd = pytest.importorskip("geopandas")
    lat, lng = _centres(cells_table.column("h3").to_numpy())
    table = cells_table.append_column("lat", pa.array(lat + 1e-6)).append_column("lng", pa.array(lng - 1e-6))
    df = gpd.read_parquet(write_cells_geoparquet(table, tmp_path / "cells.parquet"))
    np.testing.assert_allclose(df.geometry.y, df["lat"], atol=1e-12)
    np.testing.assert_allclose(df.geometry.x, df["lng"], atol=1e-12)


def test_duckdb_reads_geometry_and_filters_on_bbox_covering(tmp_path, cells_table):
    path = write_cells_geoparquet(cells_table, tmp_path / "cells.parquet")
    con = _duckdb()
    rows = con.execute(
        "SELECT h3, ST_X(geometry), ST_Y(geometry), class_name FROM read_parquet(?) ORDER BY h3", [str(path)]
    ).fetchall()
    assert len(rows) == cells_table.num_rows
    cells = np.array([r[0] for r in rows], dtype=np.uint64)
    lat, lng = _centres(cells)
    np.testing.assert_allclose([r[1] for r in rows], lng, atol=1e-9)
    np.testing.assert_allclose([r[2] for r in rows], lat, atol=1e-9)

    west, south, east, north = 7.60, 45.00, 7.70, 45.10
    (count,) = con.execute(
        "SELECT count(*) FROM read_parquet(?) "
        "WHERE bbox.xmin >= ? AND bbox.xmax <= ? AND bbox.ymin >= ? AND bbox.ymax <= ?",
        [str(path), west, east, south, north],
    ).fetchone()
    inside = (lng >= west) & (lng <= east) & (lat >= south) & (lat <= north)
    assert 0 < count == int(inside.sum()) < len(rows)
    (wkb_count,) = con.execute(
        "SELECT count(*) FROM read_parquet(?) WHERE ST_Intersects(geometry, ST_MakeEnvelope(?, ?, ?, ?))",
        [str(path), west, south, east, north],
    ).fetchone()
    assert wkb_count == count


def test_gdal_parquet_driver_reads_the_file(tmp_path, cells_table):
    pyogrio = pytest.importorskip("pyogrio")
    if "Parquet" not in pyogrio.list_drivers():
        pytest.skip(f"the GDAL {pyogrio.__gdal_version_string__} bundled with pyogrio has no Parquet driver")
    path = write_cells_geoparquet(cells_table, tmp_path / "cells.parquet")
    df = pyogrio.read_dataframe(path)
    assert len(df) == cells_table.num_rows
    assert df.crs.to_epsg() == 4326 or df.crs.equals("OGC:CRS84")
    lat, lng = _centres(df["h3"].to_numpy().astype(np.uint64))
    np.testing.assert_allclose(df.geometry.x, lng, atol=1e-9)
    np.testing.assert_allclose(df.geometry.y, lat, atol=1e-9)


def test_hexagons_contain_their_centres_with_plausible_area(tmp_path, cells_table):
    gpd = pytest.importorskip("geopandas")
    path = write_cells_geoparquet(cells_table, tmp_path / "hex.parquet", geometry="hexagon")
    assert read_geoparquet_metadata(path)["columns"]["geometry"]["geometry_types"] == ["Polygon"]
    df = gpd.read_parquet(path)
    assert (df.geom_type == "Polygon").all() and df.is_valid.all()
    cells = df["h3"].to_numpy()
    lat, lng = _centres(cells)
    assert shapely.contains_xy(df.geometry.values, lng, lat).all()
    area_m2 = df.to_crs("+proj=laea +lat_0=45.07 +lon_0=7.69").area.to_numpy()
    expected = np.array([h3.api.numpy_int.cell_area(int(c), unit="m^2") for c in cells])
    np.testing.assert_allclose(area_m2, expected, rtol=0.01)
    table = pq.read_table(path)
    bbox = table.column("bbox").combine_chunks()
    np.testing.assert_allclose(bbox.field("xmin").to_numpy(), shapely.bounds(df.geometry.values)[:, 0])


def test_antimeridian_and_polar_hexagons_are_valid_lon_lat():
    ni = h3.api.numpy_int
    cells = np.array(
        [ni.latlng_to_cell(10.0, 179.99, 5), ni.latlng_to_cell(-89.99, 0.0, 4), ni.latlng_to_cell(10.0, 20.0, 5)],
        dtype=np.uint64,
    )
    geoms = shapely.from_wkb(cells_geometry_wkb(cells, geometry="hexagon").to_numpy(zero_copy_only=False))
    assert [g.geom_type for g in geoms] == ["MultiPolygon", "Polygon", "Polygon"]
    assert shapely.is_valid(geoms).all()
    bounds = shapely.bounds(geoms)
    assert (bounds[:, 0] >= -180).all() and (bounds[:, 2] <= 180).all()
    assert bounds[1, 1] == -90.0  # the polar cell is closed along the pole
    lat, lng = _centres(cells)
    assert shapely.contains_xy(geoms, lng, lat).all()
    assert shapely.area(geoms[0]) < 1.0  # not a polygon wrapped the long way round the world


def test_point_wkb_matches_shapely():
    cells = np.array(h3.api.numpy_int.grid_disk(h3.api.numpy_int.latlng_to_cell(-33.9, 18.4, 9), 2), dtype=np.uint64)
    wkb = cells_geometry_wkb(cells)
    assert wkb.type == pa.binary()
    geoms = shapely.from_wkb(wkb.to_numpy(zero_copy_only=False))
    lat, lng = _centres(cells)
    np.testing.assert_allclose(shapely.get_x(geoms), lng, atol=1e-12)
    np.testing.assert_allclose(shapely.get_y(geoms), lat, atol=1e-12)
    standard = shapely.to_wkb(shapely.points(shapely.get_x(geoms), shapely.get_y(geoms)), byte_order=1)
    assert wkb.to_pylist() == standard.tolist()


def test_failed_write_leaves_no_partial_file(tmp_path, cells_table, monkeypatch):
    path = tmp_path / "cells.parquet"
    write_cells_geoparquet(cells_table.slice(0, 10), path)
    before = path.read_bytes()

    def _broken(table, where, **kwargs):
        Path(where).write_bytes(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", _broken)
    with pytest.raises(OSError, match="disk full"):
        write_cells_geoparquet(cells_table, path)
    with pytest.raises(OSError, match="disk full"):
        write_cells_geoparquet(cells_table, tmp_path / "new.parquet")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.parquet"]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda t: t.drop_columns(["h3"]), "no 'h3' column"),
        (lambda t: t.set_column(0, "h3", t.column("h3").cast(pa.int64())), "must be uint64, got int64"),
        (lambda t: t.append_column("geometry", pa.array([b""] * t.num_rows)), "already has a 'geometry'"),
        (lambda t: t.append_column("lat", pa.array(np.zeros(t.num_rows))), "only one of 'lat'/'lng'"),
        (lambda t: t.set_column(0, "h3", pa.array(np.arange(t.num_rows, dtype=np.uint64))), "invalid H3 cell ids"),
    ],
)
def test_bad_tables_raise(tmp_path, cells_table, change, match):
    with pytest.raises(InvalidInputError, match=match):
        write_cells_geoparquet(change(cells_table), tmp_path / "bad.parquet")
    assert not any(tmp_path.iterdir())


def test_bad_options_raise(tmp_path, cells_table):
    with pytest.raises(InvalidInputError, match="unknown geometry kind 'polygon'"):
        write_cells_geoparquet(cells_table, tmp_path / "bad.parquet", geometry="polygon")
    with pytest.raises(InvalidInputError, match="JSON-serialisable"):
        write_cells_geoparquet(cells_table, tmp_path / "bad.parquet", metadata={"when": object()})
    with pytest.raises(InvalidInputError, match="must be uint64"):
        cells_geometry_wkb(np.array([1, 2], dtype=np.int64))
    with pytest.raises(InvalidInputError, match="not a GeoParquet file"):
        pq.write_table(cells_table, tmp_path / "plain.parquet")
        read_geoparquet_metadata(tmp_path / "plain.parquet")


def test_empty_table_writes_an_empty_layer(tmp_path, cells_table):
    path = write_cells_geoparquet(cells_table.slice(0, 0), tmp_path / "empty.parquet", geometry="hexagon")
    assert pq.read_table(path).num_rows == 0
    assert "bbox" not in read_geoparquet_metadata(path)["columns"]["geometry"]
