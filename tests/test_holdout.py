import h3
import numpy as np
import pytest

from vectorgeo.holdout import held_out, latlng_to_cells, patch_held_out


def test_latlng_to_cells_matches_h3():
    rng = np.random.default_rng(0)
    lat, lng = rng.uniform(-80, 80, 500), rng.uniform(-180, 180, 500)
    got = latlng_to_cells(lat, lng, 7)
    expected = [h3.str_to_int(h3.latlng_to_cell(a, b, 7)) for a, b in zip(lat, lng, strict=True)]
    assert got.dtype == np.uint64 and got.tolist() == expected


def test_held_out_share_and_whole_parents():
    rng = np.random.default_rng(1)
    lat, lng = rng.uniform(40, 50, 100_000), rng.uniform(-10, 10, 100_000)
    out = held_out(lat, lng, fraction=0.2, parent_res=5)
    assert out.mean() == pytest.approx(0.2, abs=0.03)
    parents = latlng_to_cells(lat, lng, 5)
    for parent in np.unique(parents)[:200]:
        assert len(set(out[parents == parent].tolist())) == 1  # a parent is held out whole or not at all


def test_held_out_is_deterministic_and_seeded():
    lat, lng = np.linspace(44, 45, 2000), np.linspace(-124, -122, 2000)
    assert np.array_equal(held_out(lat, lng), held_out(lat, lng))
    assert not np.array_equal(held_out(lat, lng, seed=0), held_out(lat, lng, seed=1))
    assert not held_out(lat, lng, fraction=0.0).any() and held_out(lat, lng, fraction=1.0).all()


def test_patch_held_out_checks_centre_and_corners():
    rng = np.random.default_rng(3)
    lat, lng = rng.uniform(44, 45.5, 5000), rng.uniform(-124, -122.5, 5000)
    centre = held_out(lat, lng)
    all_in, any_in = patch_held_out(lat, lng, 1750.0)
    assert (all_in <= centre).all() and (centre <= any_in).all()
    straddling = any_in & ~all_in  # patches across a held-out border: neither trained on nor scored
    assert 0 < straddling.sum() < any_in.sum()
    zero_all, zero_any = patch_held_out(lat, lng, 0.0)
    assert np.array_equal(zero_all, centre) and np.array_equal(zero_any, centre)


def test_validation_ground_is_disjoint_from_held_out_ground():
    from vectorgeo.holdout import HOLDOUT, VALIDATION, ground_hash, patch_on_validation

    rng = np.random.default_rng(5)
    lat, lng = rng.uniform(-60, 70, 20_000), rng.uniform(-180, 180, 20_000)
    u = ground_hash(lat, lng)
    assert ((u >= 0) & (u < 1)).all()
    assert np.array_equal(held_out(lat, lng), u < HOLDOUT["fraction"])
    on_val = patch_on_validation(lat, lng, 0.0)[0]
    assert not (on_val & held_out(lat, lng)).any()
    assert on_val.mean() == pytest.approx(VALIDATION["hi"] - VALIDATION["lo"], abs=0.02)
    all_in, any_in = patch_on_validation(lat, lng, 1750.0)
    assert (all_in <= any_in).all() and (all_in <= on_val).all()
