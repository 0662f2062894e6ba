"""Tests for vectorgeo.losses: known answers and loop references for the triplet, InfoNCE and VICReg terms."""

from __future__ import annotations

import numpy as np
import pytest

from vectorgeo.losses import info_nce_terms, loss_classes, semihard_terms, vicreg_terms


def ops():
    import keras

    return keras.ops


def as_float(value) -> float:
    return float(ops().convert_to_numpy(ops().mean(value)))


def numpy_semihard(a: np.ndarray, p: np.ndarray, margin: float) -> float:
    """Reference: loops, straight from the definition in semihard_terms's docstring."""
    n, losses = len(a), []
    for i in range(n):
        d_ap = np.sum((a[i] - p[i]) ** 2)
        negs = [np.sum((a[i] - x[j]) ** 2) for x in (p, a) for j in range(n) if j != i]
        if not negs:
            losses.append(0.0)
            continue
        farther = [d for d in negs if d > d_ap]
        d_an = min(farther) if farther else max(negs)
        losses.append(max(d_ap - d_an + margin, 0.0))
    return float(np.mean(losses))


def numpy_nt_xent(x: np.ndarray, y: np.ndarray, temperature: float) -> float:
    """Reference NT-Xent: for each of the 2B rows, -log softmax of its partner among the other 2B-1 rows."""
    z = np.concatenate([x, y])
    n, b = len(z), len(x)
    total = 0.0
    for i in range(n):
        partner = (i + b) % n
        logits = np.array([z[i] @ z[j] / temperature for j in range(n) if j != i])
        target = z[i] @ z[partner] / temperature
        total += np.log(np.exp(logits).sum()) - target
    return total / n


def triplet(a: np.ndarray, p: np.ndarray, margin: float) -> float:
    pairs = np.stack([a, p], axis=1).astype(np.float32)
    return as_float(loss_classes().TripletSemiHardLoss(margin)(np.zeros(len(a), np.float32), pairs))


def unit(*angles_deg: float) -> np.ndarray:
    rad = np.radians(angles_deg)
    return np.stack([np.cos(rad), np.sin(rad)], axis=1)


def random_unit(rng, shape):
    v = rng.normal(size=shape)
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def test_triplet_known_answers():
    # d(a0,p0)=1; nearest farther negative d(a0,p1)=2 -> 1-2+1.5; d(a1,p1)=2, d(a1,p0)=3 -> 2-3+1.5
    a, p = unit(0, 180), unit(60, 90)
    assert triplet(a, p, 1.5) == pytest.approx(0.5, abs=1e-5)
    assert numpy_semihard(a, p, 1.5) == pytest.approx(0.5)
    # no negative is farther than the positive (d_ap=4, negatives at 2): fall back to the farthest, 4-2+0.2
    a, p = unit(0, 90), unit(180, 270)
    assert triplet(a, p, 0.2) == pytest.approx(2.2, abs=1e-5)
    eye = np.eye(4, dtype=np.float32)
    assert triplet(eye, eye, 0.2) == pytest.approx(0.0, abs=1e-6)  # negatives at d=2 > margin: nothing to learn
    assert triplet(eye[:1], eye[:1], 0.2) == 0.0  # a batch of one has no negative


def test_triplet_matches_numpy_reference_on_random_batch():
    rng = np.random.default_rng(3)
    a, p = random_unit(rng, (12, 6)), random_unit(rng, (12, 6))
    p[:4] = a[:4] + 0.05 * rng.normal(size=(4, 6))  # a mix of easy and hard positives
    for margin in (0.2, 1.0):
        assert triplet(a, p, margin) == pytest.approx(numpy_semihard(a, p, margin), abs=1e-5)
    terms = semihard_terms(ops(), np.stack([a, p], 1), 0.2)
    assert ops().convert_to_numpy(terms["d_ap"]).shape == (12,)


def test_info_nce_matches_numpy_reference():
    rng = np.random.default_rng(0)
    views = random_unit(rng, (10, 3, 8))
    for t in (0.1, 0.5):
        got = info_nce_terms(ops(), views, t, (0.7, 0.3))
        want = 0.7 * numpy_nt_xent(views[:, 0], views[:, 1], t) + 0.3 * numpy_nt_xent(views[:, 0], views[:, 2], t)
        assert as_float(got["loss"]) == pytest.approx(want, rel=1e-4)
        assert as_float(got["nce_view1"]) == pytest.approx(numpy_nt_xent(views[:, 0], views[:, 1], t), rel=1e-4)
    keras_loss = loss_classes().InfoNCELoss(0.1, (0.7, 0.3))(np.zeros(10, np.float32), views)
    assert as_float(keras_loss) == pytest.approx(as_float(info_nce_terms(ops(), views, 0.1, (0.7, 0.3))["loss"]))


def test_info_nce_known_answers():
    # perfect, well separated views: each row's partner is itself (cos 1), others orthogonal (cos 0)
    eye = np.eye(4, dtype=np.float32)
    views = np.stack([eye, eye], axis=1)
    t = 0.1
    # per row: log(e^{1/t} + 6 e^0) - 1/t
    assert as_float(info_nce_terms(ops(), views, t, (1.0,))["loss"]) == pytest.approx(
        np.log(np.exp(10) + 6) - 10, abs=1e-6
    )
    # collapsed embedding: every similarity is 1, so the loss is log(2B - 1) whatever the temperature
    same = np.ones((4, 2, 3), np.float32) / np.sqrt(3)
    assert as_float(info_nce_terms(ops(), same, 0.2, (1.0,))["loss"]) == pytest.approx(np.log(7), rel=1e-5)


def test_vicreg_penalises_collapse_not_spread():
    rng = np.random.default_rng(1)
    spread = random_unit(rng, (512, 8))
    collapsed = np.tile(spread[:1], (512, 1)) + 1e-3 * rng.normal(size=(512, 8)).astype(np.float32)
    good, bad = vicreg_terms(ops(), spread), vicreg_terms(ops(), collapsed)
    assert as_float(good["variance"]) < 0.05 < as_float(bad["variance"])
    assert as_float(good["covariance"]) < 0.1
    views = np.stack([collapsed, collapsed], axis=1)
    with_reg = as_float(info_nce_terms(ops(), views, 0.1, (1.0,), vicreg_weight=1.0)["loss"])
    assert with_reg > as_float(info_nce_terms(ops(), views, 0.1, (1.0,))["loss"])
