"""Tests for vectorgeo.evaluate: known answers on tiny hand-made patches and vectors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

from vectorgeo.errors import InvalidInputError
from vectorgeo.evaluate import (
    _fit_pca_onehot,
    baseline_vectors,
    class_fractions,
    edge_density,
    evaluate_embeddings,
    format_report,
    js_divergence,
    knn_indices,
    linear_probe_r2,
    report_figure,
    retrieval_jsd,
    shannon_diversity,
)

N_CLASSES = 6


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture
def make_landscapes():
    """Factory: patches of a few "landscape types", and each patch's type.

    Types pair a palette of classes with a texture: coarse (8x8 blocks, low
    edge density) or fine (per-pixel, high edge density). Types 0 and 1 share a
    palette, as do 2 and 3, so only their configuration tells them apart. Each
    patch draws its own class weights from the palette, and 5% of its pixels
    are replaced by any class (noise).
    """

    def _make(n_per_type: int = 60, patch_px: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        types = [((0, 1), 8), ((0, 1), 1), ((2, 3, 4), 8), ((2, 3, 4), 1), ((5, 0), 8)]
        patches, labels = [], []
        for label, (palette, block) in enumerate(types):
            cells = patch_px // block
            weights = rng.dirichlet(np.full(len(palette), 2.0), size=n_per_type)
            # inverse-CDF draw of a palette entry per (coarse) cell, vectorised over patches
            u = rng.random((n_per_type, cells, cells, 1))
            pick = (u > np.cumsum(weights, axis=1)[:, None, None, :]).sum(axis=-1)
            pick = np.minimum(pick, len(palette) - 1)
            grid = np.asarray(palette, dtype=np.uint8)[pick]
            grid = grid.repeat(block, axis=1).repeat(block, axis=2)
            noise = rng.random(grid.shape) < 0.05
            grid[noise] = rng.integers(0, N_CLASSES, noise.sum(), dtype=np.uint8)
            patches.append(grid)
            labels.append(np.full(n_per_type, label))
        return np.concatenate(patches), np.concatenate(labels)

    return _make


def _oracle_embeddings(patches: np.ndarray, dim: int) -> np.ndarray:
    fractions = class_fractions(patches, N_CLASSES)
    features = np.column_stack([fractions, edge_density(patches), shannon_diversity(fractions)])
    padded = np.zeros((len(patches), dim), dtype=np.float32)
    padded[:, : features.shape[1]] = features
    return _unit(padded)


# ----------------------------------------------------------------------------- descriptors


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


def test_js_divergence_known_answers_and_symmetry():
    p = np.array([0.7, 0.2, 0.1, 0.0])
    q = np.array([0.0, 0.1, 0.3, 0.6])
    assert float(js_divergence(p, p)) == pytest.approx(0.0, abs=1e-12)
    assert float(js_divergence([1, 0, 0], [0, 0.5, 0.5])) == pytest.approx(1.0)
    assert float(js_divergence(p, q)) == pytest.approx(float(js_divergence(q, p)))
    assert float(js_divergence(p, q)) == pytest.approx(jensenshannon(p, q, base=2) ** 2)
    assert float(js_divergence([1, 0], [0.5, 0.5])) == pytest.approx(0.311278, abs=1e-6)


def test_js_divergence_broadcasts():
    rng = np.random.default_rng(2)
    a, b = rng.dirichlet(np.ones(5), 3), rng.dirichlet(np.ones(5), 4)
    table = js_divergence(a[:, None, :], b[None, :, :])
    assert table.shape == (3, 4)
    assert table[2, 1] == pytest.approx(jensenshannon(a[2], b[1], base=2) ** 2)
    assert ((table >= 0) & (table <= 1)).all()


# ----------------------------------------------------------------------------- retrieval


def test_knn_indices_hand_made():
    angles = np.radians([0, 10, 25, 90, 180])
    vectors = np.column_stack([np.cos(angles), np.sin(angles)]) * np.array([[1], [3], [0.5], [2], [1]])
    expected = [[1, 2], [0, 2], [1, 0], [2, 1], [3, 2]]
    np.testing.assert_array_equal(knn_indices(vectors, 2), expected)
    np.testing.assert_array_equal(knn_indices(vectors, 2, chunk=2), expected)


def test_knn_indices_excludes_self_not_duplicates():
    vectors = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    nearest = knn_indices(vectors, 1).ravel()
    assert nearest[:2].tolist() == [1, 0]  # each duplicate finds the other, never itself
    assert nearest[2] in (0, 1)  # a tie: either may win
    with pytest.raises(InvalidInputError, match=r"k must lie in 1\.\.N-1 = 1\.\.2, got 3"):
        knn_indices(vectors, 3)


def test_retrieval_jsd_zero_for_identical_neighbours():
    fractions = np.repeat(np.eye(3), 4, axis=0)  # 4 copies of each pure composition
    vectors = fractions + 0.01 * np.random.default_rng(3).standard_normal(fractions.shape)
    assert retrieval_jsd(vectors, fractions, k=3) == pytest.approx(0.0, abs=1e-12)
    assert retrieval_jsd(vectors, fractions, k=4) == pytest.approx(1 / 4)  # 4th neighbour is disjoint


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


# ----------------------------------------------------------------------------- baselines


def test_baseline_vectors_shapes_and_norms(make_landscapes):
    patches, _ = make_landscapes(n_per_type=20)
    vectors = baseline_vectors(patches, N_CLASSES, 7, seed=1, pca_fit_samples=50)
    assert {name: v.shape for name, v in vectors.items()} == {
        "random": (100, 7),
        "pca_onehot": (100, 7),
        "histogram": (100, N_CLASSES),
    }
    for v in vectors.values():
        assert v.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    again = baseline_vectors(patches, N_CLASSES, 7, seed=1, pca_fit_samples=50)
    for name, v in vectors.items():
        np.testing.assert_array_equal(v, again[name])


def test_pca_matches_dense_svd():
    rng = np.random.default_rng(6)
    templates = rng.integers(0, 3, (3, 5, 5), dtype=np.uint8)
    patches = templates[rng.integers(0, 3, 80)]
    flip = rng.random(patches.shape) < 0.1
    patches[flip] = rng.integers(0, 3, flip.sum(), dtype=np.uint8)
    mean, components = _fit_pca_onehot(patches, 3, 2, np.random.default_rng(0))
    onehot = np.eye(3)[patches].reshape(80, -1)
    np.testing.assert_allclose(mean, onehot.mean(axis=0), atol=1e-12)
    exact = np.linalg.svd(onehot - onehot.mean(axis=0), full_matrices=False)[2][:2]
    np.testing.assert_allclose(np.abs(np.sum(components * exact, axis=1)), 1.0, atol=1e-6)


def test_pca_vectors_cluster_by_template():
    rng = np.random.default_rng(7)
    templates = rng.integers(0, N_CLASSES, (4, 16, 16), dtype=np.uint8)
    labels = np.repeat(np.arange(4), 40)
    patches = templates[labels]
    flip = rng.random(patches.shape) < 0.3
    patches[flip] = rng.integers(0, N_CLASSES, flip.sum(), dtype=np.uint8)
    pca = baseline_vectors(patches, N_CLASSES, 4, pca_fit_samples=100)["pca_onehot"]
    neighbours = knn_indices(pca, 5)
    assert (labels[neighbours] == labels[:, None]).mean() > 0.99


def test_histogram_retrieval_far_below_random(make_landscapes):
    patches, _ = make_landscapes()
    fractions = class_fractions(patches, N_CLASSES)
    vectors = baseline_vectors(patches, N_CLASSES, 8)
    histogram_jsd = retrieval_jsd(vectors["histogram"], fractions)
    random_jsd = retrieval_jsd(vectors["random"], fractions)
    assert histogram_jsd < 0.25 * random_jsd


# ----------------------------------------------------------------------------- report


@pytest.fixture
def oracle_report(make_landscapes):
    patches, _ = make_landscapes()
    return evaluate_embeddings(_oracle_embeddings(patches, 10), patches, N_CLASSES, k=5)


def test_evaluate_embeddings_oracle_passes(oracle_report):
    report = oracle_report
    assert json.loads(json.dumps(report)) == report
    assert (report["n_cells"], report["k"], report["embed_dim"]) == (300, 5, 10)
    assert list(report["methods"]) == ["encoder", "random", "pca_onehot", "histogram"]
    for scores in report["methods"].values():
        assert set(scores) == {"retrieval_jsd", "r2_class_fractions", "r2_edge_density", "r2_shannon"}
    encoder, pca = report["methods"]["encoder"], report["methods"]["pca_onehot"]
    assert encoder["r2_edge_density"] > pca["r2_edge_density"]
    assert report["checks"] == {"beats_pca_on_configuration": True, "halves_random_retrieval_jsd": True}


def test_evaluate_embeddings_random_fails(make_landscapes):
    patches, _ = make_landscapes()
    random = _unit(np.random.default_rng(8).standard_normal((len(patches), 10)))
    report = evaluate_embeddings(random, patches, N_CLASSES, k=5, seed=3)
    assert report["checks"] == {"beats_pca_on_configuration": False, "halves_random_retrieval_jsd": False}


def test_evaluate_embeddings_rejects_mismatch(make_landscapes):
    patches, _ = make_landscapes(n_per_type=4)
    with pytest.raises(InvalidInputError, match="19 embeddings but 20 patches"):
        evaluate_embeddings(np.ones((19, 4), dtype=np.float32), patches, N_CLASSES)


def test_format_report_lists_every_method(oracle_report):
    text = format_report(oracle_report)
    for name in oracle_report["methods"]:
        assert name in text
    assert "beats_pca_on_configuration: PASS" in text


def test_report_figure_writes_png(oracle_report, tmp_path):
    path = report_figure(oracle_report, tmp_path / "nested" / "evaluation.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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
