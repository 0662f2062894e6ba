"""Tests for vectorgeo.training: the learning test, views and augmentation, early stopping, DEM training."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vectorgeo.encoder import EncoderConfig, build_encoder, embed
from vectorgeo.errors import InvalidInputError
from vectorgeo.training import TrainingParams, dem_stats, train_encoder
from vectorgeo.views import dihedral, make_views

# Keras's saver calls np.array() on TF variables, which lack numpy 2's copy= keyword; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

KINDS = 6
PATCH = 16


def kind_patches(kind: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Patches of one of six landscapes with a known answer: what sets a kind apart is composition or texture.

    0/1: blobs of one class on another (80/20 and 20/80); 2, 3, 4: stripes, a 4-px checkerboard and salt
    and pepper, all 50/50 of the same two classes (only the configuration differs); 5: three other
    classes. 3 % of pixels are noise.
    """
    yy, xx = np.mgrid[:PATCH, :PATCH]
    out = np.empty((n, PATCH, PATCH), np.uint8)
    for i in range(n):
        if kind in (0, 1):
            img = np.zeros((PATCH, PATCH), np.uint8)
            for _ in range(3):
                cy, cx = rng.integers(0, PATCH, 2)
                img[(yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(2, 3.5) ** 2] = 1
            img = img if kind == 0 else 1 - img
        elif kind == 2:
            width, phase = rng.integers(2, 4), rng.integers(0, 6)
            img = (((xx + phase) // width) % 2).astype(np.uint8)
            img = img.T.copy() if rng.random() < 0.5 else img
        elif kind == 3:
            oy, ox = rng.integers(0, 4, 2)
            img = ((((yy + oy) // 4) + ((xx + ox) // 4)) % 2).astype(np.uint8)
        elif kind == 4:
            img = (rng.random((PATCH, PATCH)) < 0.5).astype(np.uint8)
        else:
            img = rng.choice(np.array([2, 3, 4], np.uint8), size=(PATCH, PATCH), p=[0.5, 0.3, 0.2])
        noise = rng.random((PATCH, PATCH)) < 0.03
        img[noise] = rng.integers(0, 5, noise.sum())
        out[i] = img
    return out


def kinds_task(n_per_kind: int, seed: int, p_same: float = 0.5):
    """Anchors of each kind; a spatial neighbour is of the same kind only half the time, as on real ground."""
    rng = np.random.default_rng(seed)
    anchors, neighbors, labels = [], [], []
    for kind in range(KINDS):
        anchors.append(kind_patches(kind, n_per_kind, rng))
        other = np.where(rng.random(n_per_kind) < p_same, kind, rng.integers(0, KINDS, n_per_kind))
        nb = np.empty((n_per_kind, PATCH, PATCH), np.uint8)
        for k in range(KINDS):
            nb[other == k] = kind_patches(k, int((other == k).sum()), rng)
        neighbors.append(nb)
        labels += [kind] * n_per_kind
    return {"anchor": np.concatenate(anchors), "neighbor": np.concatenate(neighbors)}, np.array(labels)


def knn_purity(vectors: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    idx = np.argsort(-sims, axis=1)[:, :k]
    return float((labels[idx] == labels[:, None]).mean())


KINDS_CONFIG = {"n_classes": 5, "patch_px": PATCH, "embed_dim": 16, "num_filters": 16, "n_conv_blocks": 2}


@pytest.fixture(scope="module")
def kinds_trained():
    train, _ = kinds_task(400, seed=0)
    test, labels = kinds_task(80, seed=1)
    params = TrainingParams(batch_size=64, epochs=6, seed=0)  # 37 steps an epoch, 222 in all
    encoder, history = train_encoder(
        train, {k: v[:128] for k, v in test.items()}, EncoderConfig(**KINDS_CONFIG), params
    )
    return encoder, history, test, labels


def test_a_few_hundred_steps_separate_known_landscapes(kinds_trained):
    """The learning test: training must separate six landscapes that differ in composition or only in texture.

    The first version's training (semi-hard triplet on neighbour pairs, constant learning rate) reached
    a k-NN purity of 0.88 here; an untrained encoder 0.70 (docs/encoder.md).
    """
    encoder, history, test, labels = kinds_trained
    purity = knn_purity(embed(encoder, test["anchor"]), labels)
    assert purity >= 0.95, f"k-NN purity {purity:.3f} after {history['epochs_run']} epochs"
    untrained = knn_purity(embed(build_encoder(EncoderConfig(**KINDS_CONFIG)), test["anchor"]), labels)
    assert purity > untrained + 0.1


def test_training_moves_the_embedding_and_reports_diagnostics(kinds_trained):
    _, history, _, _ = kinds_trained
    # the neighbour term cannot fall far here (a neighbour is another kind half the time); the total still falls
    assert history["val_loss"][-1] < history["val_loss"][0]
    before, after = history["diagnostics_init"], history["diagnostics"]
    # two views of a patch end up closer than two different patches, by a wide margin
    assert after["mean_d_view"] < 0.5 * after["mean_d_other"]
    # every dimension stays in use; the composition task concentrates variance on few axes here (two classes
    # dominate the toy legend), so the participation ratio itself is low: ~1.5 of 16 with purity 0.99
    assert after["n_inactive_dims"] == 0 and 1 <= after["effective_dims"] <= 16 and before["effective_dims"] >= 1
    assert len(after["embedding_std"]) == 16 and 0 <= after["active_triplet_fraction"] <= 1
    assert history["params"]["objective"] == "infonce" and history["train_pairs_per_s"] > 0
    json.dumps(history)


def test_training_params_validate_and_round_trip():
    params = TrainingParams(objective="triplet", margin=0.5)
    assert TrainingParams.from_dict({**params.to_dict(), "future": 1}) == params
    assert params.views == ("anchor", "neighbor")
    assert TrainingParams(neighbor_weight=0.0).views == ("anchor", "anchor_view")
    mixed = TrainingParams(neighbor_weight=0.25)
    assert mixed.views == ("anchor", "anchor_view", "neighbor") and mixed.view_weights == (0.75, 0.25)
    assert TrainingParams(neighbor_weight=1.0).views == ("anchor", "neighbor")
    for bad, match in [
        ({"objective": "mse"}, "objective must be one of"),
        ({"batch_size": 1}, "batch_size must be >= 2"),
        ({"temperature": 0.0}, "temperature must lie in"),
        ({"neighbor_weight": 1.5}, "neighbor_weight must lie in 0..1"),
        ({"margin": 5.0}, "margin must lie in 0..4"),
    ]:
        with pytest.raises(InvalidInputError, match=match):
            TrainingParams(**bad)


def test_dihedral_transforms_distinct_and_invertible():
    patch = np.arange(16, dtype=np.uint8).reshape(1, 4, 4)
    batch = np.repeat(patch, 8, axis=0)
    k = np.arange(8)
    out = dihedral(batch, k)
    assert len({o.tobytes() for o in out}) == 8
    np.testing.assert_array_equal(out[1], np.rot90(patch[0]))
    np.testing.assert_array_equal(out[4], patch[0][:, ::-1])
    inverse = np.where(k < 4, (4 - k) % 4, k)
    np.testing.assert_array_equal(dihedral(out, inverse), batch)
    with pytest.raises(InvalidInputError, match=r"0\.\.7"):
        dihedral(batch, k + 1)


def test_views_augment_classes_and_dem_together():
    rng = np.random.default_rng(1)
    anchor = rng.integers(0, 5, (20, 8, 8), dtype=np.uint8)
    arrays = {"anchor": anchor, "neighbor": anchor[::-1].copy()}
    arrays |= {"anchor_dem": arrays["anchor"] * np.float16(10), "neighbor_dem": arrays["neighbor"] * np.float16(10)}
    take = np.arange(5, 15)
    views = ("anchor", "anchor_view", "neighbor")
    out = make_views(arrays, take, views, np.random.default_rng(3), dem=True)
    for view in views:
        assert out[view].dtype == np.uint8 and out[view + "_dem"].dtype == np.float32
        np.testing.assert_array_equal(out[view + "_dem"], out[view] * 10.0)  # one transform per patch
    # both anchor views are transforms of the same patch: same pixels, in another arrangement for most
    np.testing.assert_array_equal(np.sort(out["anchor"].reshape(10, -1)), np.sort(out["anchor_view"].reshape(10, -1)))
    assert (out["anchor"] != out["anchor_view"]).any(axis=(1, 2)).sum() >= 5
    fixed = make_views(arrays, take, views, None, dem=False)  # validation: fixed transforms
    np.testing.assert_array_equal(fixed["anchor"], anchor[take])
    np.testing.assert_array_equal(fixed["anchor_view"], make_views(arrays, take, views, None, dem=False)["anchor_view"])
    assert (fixed["anchor_view"] != fixed["anchor"]).any(axis=(1, 2)).sum() >= 8


def test_train_with_dem_and_triplet_objective():
    rng = np.random.default_rng(6)
    anchor = rng.integers(0, 5, (96, 16, 16), dtype=np.uint8)
    arrays = {"anchor": anchor, "neighbor": anchor[::-1].copy()}
    dem = {k: rng.normal(800, 150, anchor.shape).astype(np.float16) for k in ("anchor_dem", "neighbor_dem")}
    arrays |= dem
    mean_m, std_m = dem_stats(list(dem.values()))
    config = EncoderConfig(
        n_classes=5,
        patch_px=16,
        embed_dim=8,
        num_filters=8,
        n_conv_blocks=2,
        use_dem=True,
        dem_mean_m=mean_m,
        dem_std_m=std_m,
    )
    train = {k: v[:64] for k, v in arrays.items()}
    val = {k: v[64:] for k, v in arrays.items()}
    for objective in ("infonce", "triplet"):
        _, history = train_encoder(train, val, config, TrainingParams(objective=objective, epochs=1, batch_size=32))
        assert history["epochs_run"] == 1 and np.isfinite(history["val_loss"][0])
    with pytest.raises(InvalidInputError, match="anchor_dem"):
        train_encoder({"anchor": anchor, "neighbor": anchor}, val, config, TrainingParams(epochs=1))
    with pytest.raises(InvalidInputError, match=r"\(N, 16, 16\)"):
        train_encoder({k: v[:, :8, :8] for k, v in train.items()}, val, config, TrainingParams(epochs=1))


def test_dem_stats():
    assert dem_stats([np.array([1.0, np.nan, 3.0]), np.array([[2.0]])]) == pytest.approx((2.0, np.sqrt(2 / 3)))
    assert dem_stats(np.full(4, 7.0)) == (7.0, 1.0)
    with pytest.raises(InvalidInputError, match="no finite"):
        dem_stats(np.full(3, np.nan))


def test_diagnostics_figure_writes_png(kinds_trained, tmp_path):
    from vectorgeo.diagnostics import diagnostics_figure

    encoder, history, test, labels = kinds_trained
    names = ["blobs", "holes", "stripes", "checker", "salt", "other"]
    path = diagnostics_figure(history, embed(encoder, test["anchor"]), labels, names, tmp_path / "fig" / "diag.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
