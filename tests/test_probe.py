"""Tests for vectorgeo.probe: the probe split keeps ground apart, the ridge reads known signals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vectorgeo.errors import InvalidInputError
from vectorgeo.geodesy import haversine_m
from vectorgeo.probe import linear_probe_r2, probe_split

# ----------------------------------------------------------------------------- linear probe


def test_linear_probe_noiseless_and_noise():
    rng = np.random.default_rng(4)
    features = rng.standard_normal((600, 8)) * rng.uniform(0.1, 10, 8) + 5
    linear = features @ rng.standard_normal(8) + 3.0
    assert linear_probe_r2(features, linear) > 0.999
    assert linear_probe_r2(features, rng.standard_normal(600)) <= 0.1


def test_linear_probe_multi_output_skips_constant_outputs():
    rng = np.random.default_rng(5)
    features = rng.standard_normal((400, 4))
    targets = np.column_stack([features @ [1, 2, 0, 0], np.full(400, 0.25), features @ [0, 0, 1, -1]])
    assert linear_probe_r2(features, targets) == pytest.approx(1.0, abs=1e-4)  # not (1 + 1 + 0) / 3
    assert math.isnan(linear_probe_r2(features, np.ones((400, 2))))
    noise = rng.standard_normal((400, 2))
    assert linear_probe_r2(features, noise, seed=7) == linear_probe_r2(features, noise, seed=7)


def test_linear_probe_rejects_bad_input():
    with pytest.raises(InvalidInputError, match=r"targets must be \(N=10,\)"):
        linear_probe_r2(np.ones((10, 2)), np.ones(9))
    with pytest.raises(InvalidInputError, match="at least 2 of each"):
        linear_probe_r2(np.ones((3, 2)), np.ones(3))


def test_probe_split_keeps_groups_whole():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    y = x @ np.array([1.0, -2.0, 0.5])
    groups = np.repeat(np.arange(40), 10)
    assert linear_probe_r2(x, y, groups=groups) > 0.99
    # a group-level signal that a random split leaks and a group split does not
    leak = rng.normal(size=40)[groups]
    features = np.column_stack([leak + 0.01 * rng.normal(size=400), rng.normal(size=400)])
    target = leak + 0.0
    assert linear_probe_r2(features, target, groups=groups) > 0.9  # the features carry the signal: fine either way
    noise_target = rng.normal(size=40)[groups]
    assert linear_probe_r2(np.eye(40)[groups], noise_target) > 0.5  # random split: memorises the groups
    assert linear_probe_r2(np.eye(40)[groups], noise_target, groups=groups) < 0.2  # group split: cannot


def test_linear_probe_chooses_ridge_by_cross_validation():
    rng = np.random.default_rng(0)
    features = rng.standard_normal((120, 60))  # nearly as many features as training cells: OLS overfits
    target = features[:, :5] @ np.array([1.0, -1.0, 0.5, 0.5, 1.0]) + rng.standard_normal(120)
    fixed = linear_probe_r2(features, target, ridge=1e-3)
    chosen = linear_probe_r2(features, target)
    assert fixed < 0 < 0.3 < chosen


def test_linear_probe_rare_feature_does_not_blow_up():
    """A feature seen in one training cell and, larger, in a test group must not swamp the test score."""
    rng = np.random.default_rng(0)
    features = rng.random((300, 3))
    target = features[:, 0] + 0.5 * features[:, 1] + 0.05 * rng.standard_normal(300)
    groups = np.repeat(np.arange(30), 10)
    rare = np.zeros(300)
    rare[groups == 3] = rng.uniform(0.2, 0.6, 10)
    rare[5] = 0.01
    split = probe_split(300, seed=1, groups=groups)
    assert 5 in split.train and np.isin(np.flatnonzero(groups == 3), split.test).all()
    with_rare = linear_probe_r2(np.column_stack([features, rare]), target, split=split)
    assert with_rare > 0.95  # per-feature standardisation with a fixed tiny ridge gave 0.62
    assert with_rare == pytest.approx(linear_probe_r2(features, target, split=split), abs=0.01)


# ----------------------------------------------------------------------------- probe split


def test_probe_split_buffer_keeps_patches_apart(make_clip):
    _, lat, lng, half_width_m, corners, quadrants = make_clip()
    split = probe_split(len(lat), groups=quadrants, lat=lat, lng=lng, half_width_m=half_width_m)
    assert split.grouping == "blocks" and min(split.n_groups_train, split.n_groups_test) >= 10
    assert np.unique(split.train_groups).size == split.n_groups_train
    assert np.intersect1d(split.train, split.test).size == 0
    dropped = np.setdiff1d(np.arange(len(lat)), np.union1d(split.train, split.test))
    assert dropped.size == split.n_buffer_dropped > 0
    # on the ground: no training cell within a patch width of a test cell
    distance_m = haversine_m(
        lat[split.train][:, None], lng[split.train][:, None], lat[split.test][None, :], lng[split.test][None, :]
    )
    assert distance_m.min() >= 2 * half_width_m
    # in pixels: no training patch (16 px) shares a pixel with a test patch, and every dropped one did
    gap_px = np.abs(corners[split.train][:, None, :] - corners[split.test][None, :, :]).max(axis=-1)
    assert gap_px.min() >= 16
    dropped_gap_px = np.abs(corners[dropped][:, None, :] - corners[split.test][None, :, :]).max(axis=-1).min(axis=1)
    assert (dropped_gap_px < 16).all()


def test_probe_split_rejects_bad_coordinates():
    lat, lng = np.linspace(40, 41, 20), np.linspace(-90, -89, 20)
    with pytest.raises(InvalidInputError, match="both lat and lng"):
        probe_split(20, lat=lat)
    with pytest.raises(InvalidInputError, match=r"half_width_m must be > 0 .*got None"):
        probe_split(20, lat=lat, lng=lng)
    with pytest.raises(InvalidInputError, match=r"one value per cell \(N=20\), got 19 and 20"):
        probe_split(20, lat=lat[:19], lng=lng, half_width_m=100.0)
