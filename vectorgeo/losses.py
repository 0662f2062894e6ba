"""Training objectives over stacked views ``(B, V, D)`` of unit embeddings, in ``keras.ops``.

Every loss takes ``y_pred`` shaped ``(B, V, D)``: view 0 is the anchor patch,
the other views are its positives (another augmented view of the same patch,
and/or the spatial neighbour). The other samples of the batch are the
negatives. Only ``keras.ops`` is used, so the terms run under TensorFlow, JAX
and PyTorch, and on numpy arrays through ``keras.ops`` for the diagnostics.

- :func:`info_nce_terms`: NT-Xent (SimCLR) with a temperature, one term per
  positive view, weighted; optionally a VICReg-style variance/covariance
  penalty against dimensional collapse.
- :func:`semihard_terms`: the FaceNet semi-hard triplet loss, kept for comparison.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

__all__ = ["info_nce_terms", "semihard_terms", "vicreg_terms", "loss_classes"]

_BIG = 1e6  # stands in for +/- infinity in masked min/max (squared distances of unit vectors are <= 4)


def semihard_terms(ops, views, margin: float) -> dict:
    """Per-anchor semi-hard triplet terms of a ``(B, 2, D)`` batch.

    For anchor ``i`` the candidate negatives are every other sample's positive and anchor
    (``2B - 2``). Distances are squared Euclidean (``2 - 2 cos`` on unit vectors, 0..4). The
    negative is the nearest candidate farther than the positive; when none is, the farthest.

    Returns:
        ``loss``, ``d_ap``, ``d_an`` (the mined negative), ``d_an_mean`` (all candidates), each ``(B,)``.
    """
    a, p = views[:, 0, :], views[:, 1, :]
    cand = ops.concatenate([p, a], axis=0)  # (2B, D): other samples' positives, then their anchors
    d = ops.sum(ops.square(a), axis=1, keepdims=True) + ops.expand_dims(ops.sum(ops.square(cand), axis=1), 0)
    d = ops.maximum(d - 2.0 * ops.matmul(a, ops.transpose(cand)), 0.0)  # (B, 2B) squared distances
    d_ap = ops.sum(ops.square(a - p), axis=1)  # (B,)
    idx = ops.arange(ops.shape(a)[0])
    other = ops.not_equal(ops.expand_dims(idx, 1), ops.expand_dims(idx, 0))  # (B, B): j != i
    valid = ops.concatenate([other, other], axis=1)  # (B, 2B): exclude own positive and self
    semi = ops.logical_and(valid, d > ops.expand_dims(d_ap, 1))
    has_semi, has_neg = ops.any(semi, axis=1), ops.any(valid, axis=1)
    nearest_semi = ops.min(ops.where(semi, d, _BIG), axis=1)
    farthest = ops.max(ops.where(valid, d, -_BIG), axis=1)
    d_an = ops.where(has_semi, nearest_semi, farthest)
    loss = ops.where(has_neg, ops.relu(d_ap - d_an + margin), 0.0)
    validf = ops.cast(valid, d.dtype)
    d_an_mean = ops.sum(d * validf, axis=1) / ops.maximum(ops.sum(validf, axis=1), 1.0)
    return {"loss": loss, "d_ap": d_ap, "d_an": d_an, "d_an_mean": d_an_mean}


def _nt_xent(ops, x, y, temperature: float):
    """Symmetric NT-Xent of paired rows ``x[i] <-> y[i]`` against the other ``2B - 2`` rows; ``(B,)``."""
    z = ops.concatenate([x, y], axis=0)  # (2B, D), unit rows
    n = ops.shape(z)[0]
    logits = ops.matmul(z, ops.transpose(z)) / temperature
    eye = ops.eye(n, dtype="bool")
    logits = ops.where(eye, -_BIG, logits)  # a row never matches itself
    half = n // 2
    target = ops.concatenate([ops.arange(half, n), ops.arange(0, half)], axis=0)
    picked = ops.take_along_axis(logits, ops.expand_dims(target, 1), axis=1)[:, 0]
    per_row = ops.logsumexp(logits, axis=1) - picked
    return 0.5 * (per_row[:half] + per_row[half:])  # both directions of pair i


def vicreg_terms(ops, z) -> dict:
    """VICReg-style variance and covariance penalties of one view ``(B, D)`` of unit vectors.

    The variance hinge keeps every dimension's std at least ``1/sqrt(D)`` (the spread of
    unit vectors used evenly by all dimensions); the covariance term is the mean squared
    off-diagonal covariance, scaled by ``D``, so no two dimensions carry the same signal.
    """
    d = ops.shape(z)[1]
    centred = z - ops.mean(z, axis=0, keepdims=True)
    std = ops.sqrt(ops.mean(ops.square(centred), axis=0) + 1e-6)
    variance = ops.mean(ops.relu(1.0 / d**0.5 - std)) * d**0.5
    cov = ops.matmul(ops.transpose(centred), centred) / ops.cast(ops.shape(z)[0], z.dtype)
    off = cov * (1.0 - ops.eye(d, dtype=z.dtype))
    covariance = ops.sum(ops.square(off)) * d
    return {"variance": variance, "covariance": covariance}


def info_nce_terms(ops, views, temperature: float, view_weights, vicreg_weight: float = 0.0) -> dict:
    """Weighted NT-Xent between view 0 and each positive view, plus an optional VICReg term.

    Args:
        ops: ``keras.ops``.
        views: ``(B, V, D)`` unit embeddings; view 0 is the anchor.
        temperature: Softmax temperature on cosine similarities (0.05..1; lower is sharper).
        view_weights: ``V - 1`` weights, one per positive view (they are used as given).
        vicreg_weight: Weight of the variance/covariance penalty on view 0 (0 turns it off).

    Returns:
        ``loss`` ``(B,)`` (its mean is the objective), and per-term means.
    """
    anchor = views[:, 0, :]
    out, total = {}, 0.0
    for v, weight in enumerate(view_weights, start=1):
        term = _nt_xent(ops, anchor, views[:, v, :], temperature)
        out[f"nce_view{v}"] = ops.mean(term)
        total = total + weight * term
    if vicreg_weight > 0:
        reg = vicreg_terms(ops, anchor)
        out.update(reg)
        total = total + vicreg_weight * (reg["variance"] + reg["covariance"])
    out["loss"] = total
    return out


@functools.cache
def loss_classes() -> SimpleNamespace:
    """Keras ``Loss`` subclasses (defined once keras is imported)."""
    import keras

    ops = keras.ops

    class TripletSemiHardLoss(keras.losses.Loss):
        """Semi-hard triplet loss on ``(B, 2, D)`` anchor/positive embeddings; ``y_true`` is ignored."""

        def __init__(self, margin: float = 0.2, name: str = "triplet_semihard", **kwargs):
            super().__init__(name=name, **kwargs)
            self.margin = float(margin)

        def call(self, y_true, y_pred):
            return semihard_terms(ops, y_pred, self.margin)["loss"]

    class InfoNCELoss(keras.losses.Loss):
        """NT-Xent over ``(B, V, D)`` views (see :func:`info_nce_terms`); ``y_true`` is ignored."""

        def __init__(self, temperature=0.1, view_weights=(1.0,), vicreg_weight=0.0, name="info_nce", **kwargs):
            super().__init__(name=name, **kwargs)
            self.temperature, self.vicreg_weight = float(temperature), float(vicreg_weight)
            self.view_weights = tuple(float(w) for w in view_weights)

        def call(self, y_true, y_pred):
            return info_nce_terms(ops, y_pred, self.temperature, self.view_weights, self.vicreg_weight)["loss"]

    return SimpleNamespace(TripletSemiHardLoss=TripletSemiHardLoss, InfoNCELoss=InfoNCELoss)
