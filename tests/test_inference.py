"""Inference: planning, embedding, Parquet parts, and resumption after a kill."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vectorgeo.encoder import EncoderConfig, build_encoder, embed
from vectorgeo.errors import InvalidInputError
from vectorgeo.inference import (
    assign_parts,
    embed_cells,
    embeddings_table,
    plan_parts,
    read_embeddings,
    read_part_metadata,
    write_part,
)
from vectorgeo.legends import get_legend
from vectorgeo.patch_stats import class_fractions
from vectorgeo.raster import extract_patches, open_raster

LC = get_legend("lc100")


def test_plan_and_assign_parts():
    assert plan_parts(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert plan_parts(0, 4) == []
    assert assign_parts(5, 2) == [[0, 2, 4], [1, 3]]
    assert assign_parts(2, 8) == [[0], [1]]
    with pytest.raises(InvalidInputError, match="chunk_size"):
        plan_parts(10, 0)


@pytest.fixture(scope="module")
def tiny_encoder():
    return build_encoder(EncoderConfig(n_classes=LC.n_classes, patch_px=8, embed_dim=4, num_filters=4, n_conv_blocks=1))


@pytest.fixture
def scene(write_raster):
    rng = np.random.default_rng(0)
    codes = np.asarray(LC.codes, dtype=np.uint8)[rng.integers(1, 20, (60, 60))]
    codes[:, 50:] = 255  # nodata on the east: those cells are invalid
    elev = np.arange(3600, dtype=np.float32).reshape(60, 60)
    return write_raster(codes), write_raster(elev, nodata=-9999.0), codes


def _centres(rows, cols):
    return 44.8 - (np.asarray(rows) + 0.5) / 1008, -123.5 + (np.asarray(cols) + 0.5) / 1008


def test_embed_cells_skips_invalid_and_explains_valid(tiny_encoder, scene):
    lc_path, dem_path, _ = scene
    lat, lng = _centres([10, 30, 30, 2], [10, 20, 55, 30])  # third: nodata; fourth: off the edge
    with open_raster(lc_path) as lc, open_raster(dem_path) as dem:
        cells = embed_cells(tiny_encoder, lc, LC, lat, lng, patch_px=8, dem=dem)
        patches = extract_patches(lc, lat, lng, LC, patch_px=8)
    assert cells.valid.tolist() == [True, True, False, False]
    np.testing.assert_allclose(cells.embeddings, embed(tiny_encoder, patches.classes[:2]), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(cells.embeddings, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(cells.fractions, class_fractions(patches.classes[:2], LC.n_classes))
    # mean elevation from a grid every 4 px (rows/cols r0+2, r0+6 of an 8-px patch); elevation = 60*row + col
    np.testing.assert_allclose(cells.mean_elevation_m, [60 * 10 + 10, 60 * 30 + 20])


def test_parts_round_trip_with_schema_and_metadata(tiny_encoder, scene, tmp_path):
    lc_path, _, _ = scene
    lat, lng = _centres([10, 30, 30], [10, 20, 55])
    h3 = np.array([1, 2, 3], dtype=np.uint64)
    with open_raster(lc_path) as lc:
        cells = embed_cells(tiny_encoder, lc, LC, lat, lng, patch_px=8)
    path = write_part(embeddings_table(h3, lat, lng, cells, "tiny"), tmp_path / "p.parquet", {"start": 0, "stop": 3})
    table = pq.read_table(path)
    assert table.column("h3").to_pylist() == [1, 2]
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 4)
    assert table.schema.field("class_fractions").type == pa.list_(pa.float32(), LC.n_classes)
    assert np.isnan(table.column("mean_elevation_m").to_numpy()).all()  # no DEM given
    assert table.column("model").to_pylist() == ["tiny", "tiny"]
    assert read_part_metadata(path) == {"start": 0, "stop": 3}
    assert read_embeddings([path, path]).num_rows == 4


def test_a_part_with_no_valid_cell_keeps_the_schema(tiny_encoder, scene, tmp_path):
    lc_path, _, _ = scene
    lat, lng = _centres([30], [55])
    with open_raster(lc_path) as lc:
        cells = embed_cells(tiny_encoder, lc, LC, lat, lng, patch_px=8)
    table = embeddings_table(np.array([9], dtype=np.uint64), lat, lng, cells, "tiny")
    assert table.num_rows == 0 and table.schema.field("embedding").type == pa.list_(pa.float32(), 4)


def test_dem_model_without_dem_is_refused(tiny_encoder, scene):
    lc_path, _, _ = scene
    with open_raster(lc_path) as lc, pytest.raises(InvalidInputError, match="DEM channel"):
        embed_cells(tiny_encoder, lc, LC, *_centres([10], [10]), patch_px=8, use_dem=True)


@pytest.mark.parametrize("use_dem", [False, True])
def test_slicing_and_batching_do_not_change_the_answer(scene, use_dem):
    lc_path, dem_path, _ = scene
    config = EncoderConfig(n_classes=LC.n_classes, patch_px=8, embed_dim=4, num_filters=4, n_conv_blocks=1)
    if use_dem:
        config = EncoderConfig(**{**config.to_dict(), "use_dem": True, "dem_mean_m": 1800.0, "dem_std_m": 1000.0})
    encoder = build_encoder(config)
    rng = np.random.default_rng(5)
    lat, lng = _centres(rng.uniform(0, 60, 40), rng.uniform(0, 60, 40))
    with open_raster(lc_path) as lc, open_raster(dem_path) as dem:
        one = embed_cells(encoder, lc, LC, lat, lng, patch_px=8, use_dem=use_dem, dem=dem, batch_size=64)
        many = embed_cells(
            encoder, lc, LC, lat, lng, patch_px=8, use_dem=use_dem, dem=dem, batch_size=2, prefetch_cells=3
        )
    assert 5 < one.valid.sum() < 40
    np.testing.assert_array_equal(one.valid, many.valid)
    np.testing.assert_allclose(one.embeddings, many.embeddings, atol=1e-5)
    np.testing.assert_allclose(one.mean_elevation_m, many.mean_elevation_m)


def test_a_broken_model_writes_nothing(scene):
    lc_path, _, _ = scene
    encoder = build_encoder(
        EncoderConfig(n_classes=LC.n_classes, patch_px=8, embed_dim=4, num_filters=4, n_conv_blocks=1)
    )
    encoder.set_weights([np.full(w.shape, np.nan, np.float32) for w in encoder.get_weights()])
    with open_raster(lc_path) as lc, pytest.raises(InvalidInputError, match="non-finite embeddings"):
        embed_cells(encoder, lc, LC, *_centres([10, 30], [10, 20]), patch_px=8)
