"""Tests for vectorgeo.patch_stats: known answers on tiny hand-made patches."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vectorgeo.errors import InvalidInputError
from vectorgeo.patch_stats import class_fractions, edge_density, shannon_diversity

N_CLASSES = 6


def test_edge_density_known_answers():
    uniform = np.zeros((8, 8), dtype=np.uint8)
    checker = (np.indices((8, 8)).sum(axis=0) % 2).astype(np.uint8)
    stripes = np.tile(np.arange(8) % 2, (8, 1)).astype(np.uint8)  # vertical stripes, one pixel wide
    result = edge_density(np.stack([uniform, checker, stripes]))
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, [0.0, 1.0, 0.5])


def test_edge_density_non_square_and_too_small():
    halves = np.zeros((1, 2, 3), dtype=np.uint8)
    halves[0, 1] = 1  # top row 0, bottom row 1: the 3 vertical pairs differ out of 2*2 + 1*3 = 7
    np.testing.assert_allclose(edge_density(halves), [3 / 7])
    with pytest.raises(InvalidInputError, match="no adjacent pixel pairs"):
        edge_density(np.zeros((2, 1, 1), dtype=np.uint8))


def test_class_fractions_counts_and_sums():
    patches = np.array([[[0, 0], [1, 2]], [[2, 2], [2, 2]]], dtype=np.uint8)
    fractions = class_fractions(patches, 4)
    assert fractions.shape == (2, 4) and fractions.dtype == np.float32
    np.testing.assert_allclose(fractions, [[0.5, 0.25, 0.25, 0], [0, 0, 1, 0]])
    rng = np.random.default_rng(1)
    many = rng.integers(0, 23, (50, 32, 32), dtype=np.uint8)
    np.testing.assert_allclose(class_fractions(many, 23).sum(axis=1), 1.0, rtol=1e-6)


def test_class_fractions_rejects_nodata():
    patches = np.zeros((2, 4, 4), dtype=np.uint8)
    patches[1, 0, 0] = 255
    with pytest.raises(InvalidInputError, match=r"0\.\.255 but n_classes is 6"):
        class_fractions(patches, N_CLASSES)
    with pytest.raises(InvalidInputError, match=r"shape \(N, H, W\)"):
        class_fractions(np.zeros((4, 4), dtype=np.uint8), N_CLASSES)


def test_shannon_diversity_known_answers():
    fractions = np.array([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]])
    np.testing.assert_allclose(shannon_diversity(fractions), [math.log(4), 0.0, math.log(2)], rtol=1e-6)
