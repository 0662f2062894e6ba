"""Tests for vectorgeo.evaluate: known answers on tiny hand-made patches and vectors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

from vectorgeo.errors import InvalidInputError
from vectorgeo.evaluate import (
    _fit_pca_onehot,
    baseline_vectors,
    evaluate_embeddings,
    js_divergence,
    knn_indices,
    retrieval_jsd,
)
from vectorgeo.evaluation_report import format_report, report_figure
from vectorgeo.patch_stats import class_fractions, edge_density, shannon_diversity

N_CLASSES = 6
CLIP_CLASSES = 35
ALL_CHECKS = (
    "beats_pca_on_configuration",
    "halves_random_retrieval_jsd",
    "jsd_below_pca",
    "jsd_within_1_5x_histogram",
    "r2_class_fractions_ge_0_90",
    "edge_density_above_pca_and_histogram",
    "shannon_above_pca",
)


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


# ----------------------------------------------------------------------------- retrieval


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


# ----------------------------------------------------------------------------- baselines


def test_baseline_vectors_shapes_and_norms(make_landscapes):
    patches, _ = make_landscapes(n_per_type=20)
    vectors = baseline_vectors(patches, N_CLASSES, 7, seed=1, pca_fit_samples=50)
    assert {name: v.shape for name, v in vectors.items()} == {
        "random": (100, 7),
        "pca_onehot": (100, 7),
        "histogram": (100, N_CLASSES),
    }
    for name in ("random", "pca_onehot"):
        assert vectors[name].dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(vectors[name], axis=1), 1.0, rtol=1e-5)
    # the histogram is the class fractions themselves, so a linear probe can read them back exactly
    assert vectors["histogram"].dtype == np.float32
    np.testing.assert_array_equal(vectors["histogram"], class_fractions(patches, N_CLASSES))
    np.testing.assert_allclose(vectors["histogram"].sum(axis=1), 1.0, rtol=1e-5)
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
    assert report["checks"] == dict.fromkeys(ALL_CHECKS, True)


def test_evaluate_embeddings_random_fails(make_landscapes):
    patches, _ = make_landscapes()
    random = _unit(np.random.default_rng(8).standard_normal((len(patches), 10)))
    report = evaluate_embeddings(random, patches, N_CLASSES, k=5, seed=3)
    assert report["checks"] == dict.fromkeys(ALL_CHECKS, False)


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


# ----------------------------------------------------------------------------- trustworthy probes


def test_histogram_probe_reads_its_own_class_fractions(make_clip):
    """35 classes, 6 of them in 1-3 cells only, 4 coarse groups: the histogram's features ARE the fractions."""
    patches, lat, lng, half_width_m, _, quadrants = make_clip()
    present = np.count_nonzero(class_fractions(patches, CLIP_CLASSES), axis=0)
    assert ((present >= 1) & (present <= 3)).sum() >= 6
    encoder = _unit(np.random.default_rng(0).standard_normal((len(patches), 8)))

    # the caller's 4 groups alone: the probe still reads the fractions back (it scored -0.68 before),
    # and the report says the split rests on too few groups
    coarse = evaluate_embeddings(encoder, patches, CLIP_CLASSES, seed=5, groups=quadrants)
    assert coarse["methods"]["histogram"]["r2_class_fractions"] >= 0.99
    assert coarse["probe_split"]["grouping"] == "groups"
    assert any("2 training and 2 test groups, fewer than 10" in w for w in coarse["warnings"])

    # with coordinates: finer blocks, a buffer, enough groups on each side, nothing to warn about
    fine = evaluate_embeddings(
        encoder, patches, CLIP_CLASSES, seed=5, groups=quadrants, lat=lat, lng=lng, half_width_m=half_width_m
    )
    assert json.loads(json.dumps(fine)) == fine
    assert fine["methods"]["histogram"]["r2_class_fractions"] >= 0.99
    split = fine["probe_split"]
    assert split["grouping"] == "blocks" and split["block_km"] >= 4 * half_width_m / 1000
    assert min(split["n_groups_train"], split["n_groups_test"]) >= 10
    assert split["n_train"] + split["n_test"] + split["n_buffer_dropped"] == len(patches)
    assert fine["warnings"] == []
    # the histogram's retrieval is what it was with L2-normalised vectors: cosine kNN normalises rows itself
    assert fine["methods"]["histogram"]["retrieval_jsd"] == pytest.approx(
        retrieval_jsd(_unit(class_fractions(patches, CLIP_CLASSES)), class_fractions(patches, CLIP_CLASSES)),
        abs=1e-4,
    )


def test_too_few_cells_or_groups_warn(make_clip, caplog):
    patches, lat, lng, half_width_m, _, quadrants = make_clip(n_side=12)  # 144 cells, 4 groups
    encoder = _unit(np.random.default_rng(1).standard_normal((len(patches), 8)))
    with caplog.at_level("WARNING", logger="vectorgeo.evaluate"):
        report = evaluate_embeddings(encoder, patches, CLIP_CLASSES, k=5, groups=quadrants)
    assert set(report["probe_split"]) == {
        "grouping",
        "n_groups_train",
        "n_groups_test",
        "n_train",
        "n_test",
        "n_buffer_dropped",
        "block_km",
        "buffer_m",
    }
    assert report["probe_split"]["n_groups_test"] < 10
    assert report["warnings"][0].startswith("only 144 held-out cells, fewer than 500")
    assert any("test groups, fewer than 10 on a side" in w for w in report["warnings"])
    assert all(w in caplog.text for w in report["warnings"])
    text = format_report(report)
    assert text.index("R² Shannon diversity") < text.index("WARNING: only 144 held-out cells")
    assert text.count("WARNING: ") == len(report["warnings"])

    # coordinates cannot rescue so small an area: even 2-patch-width blocks are too few, and it says so
    report = evaluate_embeddings(
        encoder, patches, CLIP_CLASSES, k=5, groups=quadrants, lat=lat, lng=lng, half_width_m=half_width_m
    )
    assert report["probe_split"]["grouping"] == "blocks"
    assert report["probe_split"]["block_km"] == pytest.approx(4 * half_width_m / 1000)
    assert any("test spatial blocks, fewer than 10 on a side" in w for w in report["warnings"])

    # an area too small to buffer keeps its cells and says that the split is not buffered
    patches, lat, lng, half_width_m, _, _ = make_clip(n_side=3)
    encoder3 = _unit(np.random.default_rng(2).standard_normal((len(patches), 8)))
    report = evaluate_embeddings(encoder3, patches, CLIP_CLASSES, k=3, lat=lat, lng=lng, half_width_m=half_width_m)
    assert report["probe_split"]["n_buffer_dropped"] == 0
    assert any("so the split is not buffered" in w for w in report["warnings"])

    # no groups and no coordinates: a random split of overlapping patches is flagged too
    patches, *_ = make_clip(n_side=12)
    report = evaluate_embeddings(encoder, patches, CLIP_CLASSES, k=5, min_cells=100)
    assert len(report["warnings"]) == 1 and report["warnings"][0].startswith("the probe split is random")
