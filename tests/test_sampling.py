import numpy as np
import pytest

from vectorgeo.errors import InvalidInputError
from vectorgeo.geodesy import destination_points, haversine_m
from vectorgeo.legends import get_legend
from vectorgeo.raster import latlng_to_pixels, open_raster
from vectorgeo.sampling import (
    dominant_class_fraction,
    random_points_in_bounds,
    read_shard,
    sample_pairs,
    write_shard,
)

LC = get_legend("lc100")


def test_destination_points_known_answers():
    lat, lng = destination_points(
        np.array([0.0, 0.0, 60.0]), np.array([0.0, 179.99, 10.0]), np.radians([0, 90, 180]), 111_195.0
    )
    np.testing.assert_allclose(lat, [1.0, 0.0, 59.0], atol=1e-4)
    np.testing.assert_allclose(lng, [0.0, -179.01, 10.0], atol=1e-4)  # wraps across the antimeridian


def test_destination_distance_is_exact_on_the_sphere():
    rng = np.random.default_rng(0)
    lat, lng = rng.uniform(-70, 70, 1000), rng.uniform(-180, 180, 1000)
    dist = rng.uniform(100, 50_000, 1000)
    lat2, lng2 = destination_points(lat, lng, rng.uniform(0, 2 * np.pi, 1000), dist)
    np.testing.assert_allclose(haversine_m(lat, lng, lat2, lng2), dist, rtol=1e-6)


def test_random_points_uniform_by_area():
    lat, lng = random_points_in_bounds((-10, 0, 10, 80), 200_000, np.random.default_rng(1))
    assert lat.min() >= 0 and lat.max() <= 80 and lng.min() >= -10 and lng.max() <= 10
    # Share below 30 N, by area: (sin 30 - sin 0) / sin 80
    assert (lat < 30).mean() == pytest.approx(0.5 / np.sin(np.radians(80)), abs=0.01)


def test_dominant_class_fraction():
    patches = np.zeros((3, 4, 4), dtype=np.uint8)
    patches[1, :2] = 5
    patches[2] = np.arange(16).reshape(4, 4)
    np.testing.assert_allclose(dominant_class_fraction(patches), [1.0, 0.5, 1 / 16])


@pytest.fixture
def mosaic_raster(write_raster):
    """Inland Oregon, 600x600 px of 8-px blocks of random LC100 land classes, a uniform corner."""
    rng = np.random.default_rng(4)
    land = np.array([20, 30, 40, 50, 111, 115], dtype=np.uint8)
    codes = np.kron(land[rng.integers(0, 6, (75, 75))], np.ones((8, 8), dtype=np.uint8))
    codes[:200, :200] = 40
    return write_raster(codes, west=-123.5, north=44.8)


def test_pairs_are_valid_non_uniform_and_in_the_annulus(mosaic_raster):
    with open_raster(mosaic_raster) as ds:
        shard = sample_pairs(ds, LC, 300, patch_px=16, pair_distance_m=4000, max_uniform_fraction=0.9, seed=7)
    assert len(shard) == 300
    assert shard.anchor.shape == shard.neighbor.shape == (300, 16, 16)
    assert shard.anchor.dtype == np.uint8 and shard.anchor.max() < LC.n_classes
    assert dominant_class_fraction(shard.anchor).max() <= 0.9
    assert dominant_class_fraction(shard.neighbor).max() <= 0.9
    d = haversine_m(*shard.anchor_latlng.T, *shard.neighbor_latlng.T)
    min_d = shard.meta["min_distance_m"]
    assert min_d == pytest.approx(16 * max(shard.meta["pixel_sides_m"]))
    assert (d >= min_d - 1).all() and (d <= 4000 + 1).all()
    with open_raster(mosaic_raster) as ds:  # no pixel is in both patches of a pair
        a_row, a_col = latlng_to_pixels(ds, *shard.anchor_latlng.T)
        n_row, n_col = latlng_to_pixels(ds, *shard.neighbor_latlng.T)
    apart = (np.abs(np.floor(a_row) - np.floor(n_row)) >= 16) | (np.abs(np.floor(a_col) - np.floor(n_col)) >= 16)
    assert apart.all()
    assert shard.meta["legend"]["name"] == "lc100"


def test_same_seed_same_pairs(mosaic_raster):
    with open_raster(mosaic_raster) as ds:
        a = sample_pairs(ds, LC, 50, patch_px=16, pair_distance_m=3000, seed=[3, 1])
        b = sample_pairs(ds, LC, 50, patch_px=16, pair_distance_m=3000, seed=[3, 1])
        c = sample_pairs(ds, LC, 50, patch_px=16, pair_distance_m=3000, seed=[3, 2])
    np.testing.assert_array_equal(a.anchor, b.anchor)
    assert not np.array_equal(a.anchor_latlng, c.anchor_latlng)


def test_bad_sampling_settings_are_explained(mosaic_raster, write_raster):
    with open_raster(mosaic_raster) as ds:
        with pytest.raises(InvalidInputError, match="must exceed one patch width"):
            sample_pairs(ds, LC, 10, patch_px=32, pair_distance_m=1000)
        with pytest.raises(InvalidInputError, match=">= 1"):
            sample_pairs(ds, LC, 0)
    uniform = write_raster(np.full((300, 300), 40, dtype=np.uint8))
    with open_raster(uniform) as ds, pytest.raises(InvalidInputError, match="found only 0 of 5"):
        sample_pairs(ds, LC, 5, patch_px=16, pair_distance_m=3000, max_rounds=3)


def test_shard_round_trip(mosaic_raster, tmp_path):
    with open_raster(mosaic_raster) as ds:
        shard = sample_pairs(ds, LC, 20, patch_px=16, pair_distance_m=3000)
    back = read_shard(write_shard(shard, tmp_path / "part.npz"))
    np.testing.assert_array_equal(back.anchor, shard.anchor)
    np.testing.assert_array_equal(back.neighbor_latlng, shard.neighbor_latlng)
    assert back.meta == shard.meta
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(InvalidInputError, match="not a training shard"):
        read_shard(tmp_path / "other.npz")


def test_pairs_carry_the_dem_on_their_pixels(mosaic_raster, write_raster, tmp_path):
    elev = (np.arange(600)[:, None] + np.zeros((1, 600))).astype(np.float32)  # rises 1 m per row southwards
    elev[:, 590:] = -9999.0  # a nodata strip: pairs touching it are dropped
    dem_path = write_raster(elev, west=-123.5, north=44.8, nodata=-9999.0)
    with open_raster(mosaic_raster) as ds, open_raster(dem_path) as dem:
        shard = sample_pairs(ds, LC, 40, patch_px=16, pair_distance_m=3000, seed=2, dem=dem)
        plain = sample_pairs(ds, LC, 5, patch_px=16, pair_distance_m=3000, seed=2)
    assert shard.anchor_dem.shape == (40, 16, 16) and shard.anchor_dem.dtype == np.float16
    assert np.isfinite(shard.anchor_dem).all() and np.isfinite(shard.neighbor_dem).all()
    # each DEM patch is the row index of its land-cover pixels: consecutive rows differ by 1 m
    np.testing.assert_allclose(np.diff(shard.anchor_dem.astype(np.float32), axis=1), 1.0, atol=0.5)
    assert shard.meta["dem"] is True and plain.meta["dem"] is False and plain.anchor_dem is None
    back = read_shard(write_shard(shard, tmp_path / "dem.npz"))
    np.testing.assert_array_equal(back.neighbor_dem, shard.neighbor_dem)


def test_default_pair_distance_follows_the_pixel_size(write_raster):
    """No fixed 5 km: on coarse pixels that is shorter than one patch. The default is two patch widths."""
    rng = np.random.default_rng(2)
    land = np.array([20, 30, 40, 50, 111, 115], dtype=np.uint8)
    codes = np.kron(land[rng.integers(0, 6, (50, 50))], np.ones((4, 4), dtype=np.uint8))
    coarse = write_raster(codes, pixel=1 / 240)  # ~350 m pixels: a 16 px patch is ~5.6 km
    with open_raster(coarse) as ds:
        shard = sample_pairs(ds, LC, 40, patch_px=16, seed=1)
    assert shard.meta["pair_distance_m"] == pytest.approx(2 * shard.meta["min_distance_m"])
    assert shard.meta["min_distance_m"] > 5000
    d = haversine_m(*shard.anchor_latlng.T, *shard.neighbor_latlng.T)
    assert (d >= shard.meta["min_distance_m"] * 0.999).all() and (d <= shard.meta["pair_distance_m"] * 1.001).all()


def test_pairs_never_touch_held_out_ground(write_raster):
    from vectorgeo.holdout import HOLDOUT, patch_held_out

    rng = np.random.default_rng(3)
    land = np.array([20, 30, 40, 50, 111, 115], dtype=np.uint8)
    codes = np.kron(land[rng.integers(0, 6, (100, 100))], np.ones((4, 4), dtype=np.uint8))
    wide = write_raster(codes, pixel=1 / 100)  # ~4 degrees wide: many H3 res-5 parents, some held out
    with open_raster(wide) as ds:
        free = sample_pairs(ds, LC, 300, patch_px=16, seed=4)
        kept = sample_pairs(ds, LC, 300, patch_px=16, seed=4, holdout=HOLDOUT)
    half_width_m = kept.meta["min_distance_m"] / 2
    touches = [patch_held_out(*ll.T, half_width_m, **HOLDOUT)[1] for ll in (free.anchor_latlng, free.neighbor_latlng)]
    assert (touches[0] | touches[1]).mean() > 0.2  # without the rule, many pairs would be dropped by training
    for ll in (kept.anchor_latlng, kept.neighbor_latlng):
        assert not patch_held_out(*ll.T, half_width_m, **HOLDOUT)[1].any()
    assert kept.meta["holdout"] == HOLDOUT and len(kept) == 300
