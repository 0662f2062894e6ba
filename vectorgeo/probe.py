"""Linear probes: how well a ridge regression reads targets off embeddings, on a split that shares no ground.

:func:`probe_split` splits cells into training and test sets that keep groups
or square spatial blocks whole and buffer the test cells, so no training patch
overlaps a test patch, and says in its ``warnings`` when too few groups back
it. :func:`linear_probe_r2` fits a closed-form ridge on the training cells,
its penalty chosen by cross-validation with folds that keep groups whole, and
scores R² on the test cells. Everything is vectorised; the only Python loops
run over folds, penalties, block sizes or target sets, never over samples.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

from vectorgeo.errors import InvalidInputError
from vectorgeo.geodesy import EARTH_RADIUS_M

__all__ = ["ProbeSplit", "linear_probe_r2", "probe_split"]

logger = logging.getLogger(__name__)

_RIDGE_TIE = 1e-3
"""Cross-validated errors within this share of the least count as ties, won by the larger penalty: where
one training cell alone varies along a direction, cross-validation cannot see it, and a tiny penalty
would let test cells that vary along it get wild predictions."""
_RIDGE_GRID = np.logspace(-8, 2, 21)
"""Ridge penalties tried by cross-validation, per training cell (scaled features' ``XᵀX`` diagonal averages n)."""


def _check_vectors(vectors: np.ndarray, name: str = "vectors") -> np.ndarray:
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or vectors.shape[0] == 0 or vectors.shape[1] == 0:
        raise InvalidInputError(f"{name} must have shape (N, D) with N, D >= 1, got {vectors.shape}")
    if not np.isfinite(vectors).all():
        raise InvalidInputError(f"{name} hold NaN or infinite values; check the encoder output")
    return vectors


def _json_float(value: float, digits: int = 4) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


# ----------------------------------------------------------------------------- probe split


@dataclass(frozen=True)
class ProbeSplit:
    """Which cells train a linear probe and which score it, and how far to trust that.

    Attributes:
        train: int64 row indices of the training cells (buffered cells removed), sorted.
        test: int64 row indices of the test cells, sorted.
        train_groups: Group label of each training cell (the ridge penalty's
            cross-validation folds keep them whole), None for a random split.
        grouping: ``"blocks"`` (square spatial blocks of ``block_km``), ``"groups"``
            (the caller's labels) or ``"random"`` (no groups, no coordinates).
        n_groups_train: Groups with at least one training cell left.
        n_groups_test: Groups on the test side.
        n_buffer_dropped: Training cells dropped because their patch could overlap a test patch.
        block_km: Side of the spatial blocks in km, None unless ``grouping == "blocks"``.
        buffer_m: Radius of the buffer around test cells in metres, None without coordinates.
        warnings: Why the probe scores may not be trustworthy (empty when nothing is amiss).
    """

    train: np.ndarray
    test: np.ndarray
    grouping: str
    train_groups: np.ndarray | None
    n_groups_train: int
    n_groups_test: int
    n_buffer_dropped: int = 0
    block_km: float | None = None
    buffer_m: float | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict:
        """JSON-ready summary (counts, sizes, grouping), without the index arrays."""
        return {
            "grouping": self.grouping,
            "n_groups_train": self.n_groups_train,
            "n_groups_test": self.n_groups_test,
            "n_train": int(self.train.size),
            "n_test": int(self.test.size),
            "n_buffer_dropped": self.n_buffer_dropped,
            "block_km": _json_float(self.block_km, 3),
            "buffer_m": _json_float(self.buffer_m, 1),
        }


def _latlng_to_unit_xyz(lat: np.ndarray, lng: np.ndarray) -> np.ndarray:
    """Points on the unit sphere ``(N, 3)``: chord lengths there are exact, so one KD-tree serves the globe."""
    phi, lam = np.radians(lat), np.radians(lng)
    return np.column_stack([np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi)])


def _latlng_to_blocks(lat: np.ndarray, lng: np.ndarray, block_m: float) -> np.ndarray:
    """Label of the roughly ``block_m`` x ``block_m`` block holding each point (int64, 0..B-1).

    Rows are bands of latitude ``block_m`` tall; each band is cut into columns
    ``block_m`` wide at the band's middle latitude, so blocks stay square-ish anywhere.
    """
    row = np.floor(np.radians(lat) * EARTH_RADIUS_M / block_m)
    band_lat = (row + 0.5) * block_m / EARTH_RADIUS_M
    col = np.floor(np.radians(lng) * EARTH_RADIUS_M * np.maximum(np.cos(band_lat), 1e-9) / block_m)
    keys = np.column_stack([row, col]).astype(np.int64)
    return np.unique(keys, axis=0, return_inverse=True)[1].ravel()


def _split_groups(labels: np.ndarray, n_test: int, seed: int) -> np.ndarray:
    """Boolean test mask: whole groups, in random order, until at least ``n_test`` cells are taken."""
    order = np.random.default_rng(seed).permutation(labels.max() + 1)
    sizes = np.bincount(labels)[order]
    test_groups = order[: np.searchsorted(np.cumsum(sizes), n_test) + 1]
    return np.isin(labels, test_groups)


def _groups_per_side(labels: np.ndarray, is_test: np.ndarray) -> tuple[int, int]:
    """Distinct groups on the ``(train, test)`` sides of a mask."""
    return int(np.unique(labels[~is_test]).size), int(np.unique(labels[is_test]).size)


def probe_split(
    n: int,
    *,
    seed: int = 0,
    test_fraction: float = 0.3,
    groups: np.ndarray | None = None,
    lat: np.ndarray | None = None,
    lng: np.ndarray | None = None,
    half_width_m: float | None = None,
    min_groups: int = 10,
) -> ProbeSplit:
    """Split N cells into probe training and test sets that share no ground.

    Whole groups go to one side. The caller's ``groups`` are used when they
    give at least ``min_groups`` groups on each side; otherwise, when the
    cells' coordinates are known, the cells are grouped into square spatial
    blocks, the largest (on a ladder of sizes from 2 patch widths up, by
    factors of √2) that give ``min_groups`` on each side, or failing that the
    most. With coordinates, training cells whose centre lies within one patch
    diagonal (``2·√2·half_width_m``) of a test cell are dropped, so no
    training patch overlaps a test patch whatever the raster's orientation;
    an area too small to spare 2 training cells is left unbuffered. Every
    shortfall is named in ``warnings``.

    Args:
        n: Number of cells.
        seed: Seed of the group order (same seed, same split).
        test_fraction: Share of cells to hold out for scoring, in (0, 1).
        groups: Optional ``(N,)`` labels (e.g. H3 parents) that must not straddle the split.
        lat: Optional ``(N,)`` latitudes of the patch centres, degrees (EPSG:4326).
        lng: Optional ``(N,)`` longitudes, degrees.
        half_width_m: Half the side of a patch on the ground, metres; required with ``lat``/``lng``.
        min_groups: Fewest groups on each side that the split is trusted with.

    Returns:
        The :class:`ProbeSplit`; its ``warnings`` say when it rests on too few groups.

    Raises:
        InvalidInputError: for bad arguments, or when a side would hold fewer than 2 cells.
    """
    if not 0 < test_fraction < 1:
        raise InvalidInputError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    n_test = round(n * test_fraction)
    if n < 4 or not 2 <= n_test <= n - 2:
        raise InvalidInputError(
            f"{n} samples with test_fraction={test_fraction} leave {n_test} test and {n - n_test} train "
            "samples; at least 2 of each are needed"
        )
    if min_groups < 1:
        raise InvalidInputError(f"min_groups must be >= 1, got {min_groups}")
    if (lat is None) != (lng is None):
        raise InvalidInputError("pass both lat and lng (degrees) or neither")
    xyz = None
    if lat is not None:
        lat, lng = np.asarray(lat, dtype=np.float64).ravel(), np.asarray(lng, dtype=np.float64).ravel()
        if lat.size != n or lng.size != n:
            raise InvalidInputError(f"lat and lng must hold one value per cell (N={n}), got {lat.size} and {lng.size}")
        if not (np.isfinite(lat).all() and np.isfinite(lng).all()) or np.abs(lat).max() > 90:
            raise InvalidInputError("lat/lng hold NaN, infinite or out-of-range values; pass degrees (EPSG:4326)")
        if half_width_m is None or not half_width_m > 0:
            raise InvalidInputError(
                f"half_width_m must be > 0 (half a patch side on the ground, metres) with lat/lng, got {half_width_m}"
            )
        xyz = _latlng_to_unit_xyz(lat, lng)
    if groups is not None and np.shape(groups) != (n,):
        raise InvalidInputError(f"groups must be (N={n},), got {np.shape(groups)}")

    notes: list[str] = []
    if groups is not None:
        labels = np.unique(np.asarray(groups), return_inverse=True)[1].ravel()
        is_test, grouping, block_km = _split_groups(labels, n_test, seed), "groups", None
    else:
        labels = None
        is_test = np.zeros(n, dtype=bool)
        is_test[np.random.default_rng(seed).permutation(n)[:n_test]] = True
        grouping, block_km = "random", None
    if xyz is not None and (labels is None or min(_groups_per_side(labels, is_test)) < min_groups):
        # the largest blocks (2 patch widths up to 2^20 of them, by factors of √2) that give enough groups a
        # side; failing that, the blocks that give the most, if they beat the caller's groups
        best = (0 if labels is None else min(_groups_per_side(labels, is_test)), None, None, None)
        for block_m in 4 * half_width_m * np.sqrt(2.0) ** np.arange(40, -1, -1):
            blocks = _latlng_to_blocks(lat, lng, block_m)
            in_test = _split_groups(blocks, n_test, seed)
            if min(in_test.sum(), (~in_test).sum()) < 2:
                continue
            per_side = min(_groups_per_side(blocks, in_test))
            if per_side > best[0]:
                best = (per_side, float(block_m), blocks, in_test)
            if per_side >= min_groups:
                break
        if best[1] is not None:
            if labels is not None:
                logger.info("probe split: %d groups are too few; using %.2f km blocks", labels.max() + 1, best[1] / 1e3)
            _, block_m, labels, is_test = best
            grouping, block_km = "blocks", block_m / 1000

    buffer_m, n_dropped = None, 0
    is_train = ~is_test
    if xyz is not None:
        buffer_m = 2 * np.sqrt(2.0) * half_width_m
        chord = 2 * np.sin(buffer_m / EARTH_RADIUS_M / 2)
        candidates = np.flatnonzero(~is_test)
        dist, _ = cKDTree(xyz[is_test]).query(xyz[candidates], k=1, distance_upper_bound=chord)
        near = candidates[np.isfinite(dist)]
        if candidates.size - near.size >= 2:
            is_train[near] = False
            n_dropped = int(near.size)
        else:  # too small an area to buffer: keep the cells, and say so
            notes.append(
                f"a buffer of {buffer_m:.0f} m around test cells would leave {candidates.size - near.size} "
                "training cells, so the split is not buffered: overlapping patches may sit on both sides"
            )
    elif labels is None:
        notes.append(
            "the probe split is random: pass the cells' lat/lng and half_width_m (or groups) so that "
            "overlapping patches cannot sit on both sides"
        )
    test, train = np.flatnonzero(is_test), np.flatnonzero(is_train)
    if test.size < 2 or train.size < 2:
        raise InvalidInputError(
            f"the probe split ({grouping}) left {train.size} train and {test.size} test cells; at least 2 of "
            "each are needed: evaluate more cells or a larger area"
        )
    if labels is None:  # a random split: each cell is its own group
        n_groups_train, n_groups_test = int(train.size), int(test.size)
    else:
        n_groups_train, n_groups_test = _groups_per_side(labels[is_train | is_test], is_test[is_train | is_test])
    if min(n_groups_test, n_groups_train) < min_groups:
        unit = {"groups": "groups", "blocks": "spatial blocks", "random": "cells"}[grouping]
        notes.append(
            f"the probe split rests on {n_groups_train} training and {n_groups_test} test {unit}, "
            f"fewer than {min_groups} on a side: the R² values are noisy; "
            "pass the cells' lat/lng and half_width_m, or evaluate a larger area"
        )
    if n_dropped > train.size:
        notes.append(
            f"the buffer around test cells dropped {n_dropped} training cells, more than the "
            f"{train.size} left: the probes are trained on few cells"
        )
    return ProbeSplit(
        train=train,
        test=test,
        grouping=grouping,
        train_groups=None if labels is None else labels[train],
        n_groups_train=n_groups_train,
        n_groups_test=n_groups_test,
        n_buffer_dropped=n_dropped,
        block_km=block_km,
        buffer_m=buffer_m,
        warnings=tuple(notes),
    )


# ----------------------------------------------------------------------------- linear probe


def _centre_and_scale(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre by the training split's mean and divide every feature by one common scale.

    The scale is the root-mean-square standard deviation of the features in
    training, so the average feature has unit variance and the ridge grid
    means the same for any embedding. Features are not scaled one by one:
    a rare class present in one or two training cells would get a tiny
    standard deviation, test cells holding more of it huge standardised
    values, and the probe wild predictions (measured on a generated clip:
    edge-density R² of the class histogram -25 instead of 0.5); and an embedding's axes are
    arbitrary, so one common scale keeps the probe independent of the basis.
    Features constant in training become zero columns and are ignored.
    """
    mean = x_train.mean(axis=0)
    scale = math.sqrt(float(np.mean(x_train.var(axis=0))))
    scale = scale if scale > 0 else 1.0
    return (x_train - mean) / scale, (x_test - mean) / scale


def _cv_folds(train_groups: np.ndarray | None, n: int, n_folds: int = 5) -> np.ndarray:
    """Fold (0..K-1) of each training cell: whole groups per fold, or single cells without groups."""
    labels = np.arange(n) if train_groups is None else np.unique(train_groups, return_inverse=True)[1].ravel()
    n_labels = int(labels.max()) + 1
    if n_labels < 2:  # one group: nothing to hold out whole, fall back to cells
        labels, n_labels = np.arange(n), n
    rank = np.random.default_rng(0).permutation(n_labels)
    return rank[labels] % min(n_folds, n_labels)


def _choose_ridge(x: np.ndarray, ys: list[np.ndarray], folds: np.ndarray, penalties: np.ndarray) -> list[float]:
    """Per target matrix, the penalty with the least K-fold cross-validated squared error.

    Each fold costs one thin SVD of the other folds; all penalties and targets
    reuse it. Folds hold whole groups (spatial blocks), because with
    leave-one-out a cell's overlapping neighbours stay in training, the error
    looks too good and the penalty comes out too small (measured on a
    generated clip: edge-density R² of encoder-like features 0.32 with
    leave-one-out, 0.55 with grouped folds). Near-ties go to the larger
    penalty (:data:`_RIDGE_TIE`).

    Args:
        x: ``(n, F)`` scaled training features.
        ys: Target matrices ``(n, T)``, one penalty chosen for each.
        folds: ``(n,)`` fold of each training cell, ``0..K-1``.
        penalties: Candidate penalties, ascending.

    Returns:
        The chosen penalty per target matrix.
    """
    n_folds = int(folds.max()) + 1
    errors = np.zeros((len(ys), n_folds, penalties.size))  # mean squared error per target, fold, penalty
    for fold in range(n_folds):
        held = folds == fold
        mean = x[~held].mean(axis=0)
        u, s, vt = np.linalg.svd(x[~held] - mean, full_matrices=False)
        projected = (x[held] - mean) @ vt.T  # (h, r)
        shrink = s / (s**2 + penalties[:, None])  # (L, r): ridge gain per penalty and singular value
        for t, y in enumerate(ys):
            y_mean = y[~held].mean(axis=0)
            uty = u.T @ (y[~held] - y_mean)  # (r, T)
            predicted = np.einsum("hr,lr,rt->lht", projected, shrink, uty) + y_mean
            errors[t, fold] = np.sum((predicted - y[held]) ** 2, axis=(1, 2)) / held.sum()
    chosen = []
    for per_fold in errors:
        mean_error = per_fold.mean(axis=0)
        best = int(np.argmin(mean_error))
        best = int(np.flatnonzero(mean_error <= mean_error[best] * (1 + _RIDGE_TIE)).max())
        chosen.append(float(penalties[best]))
    return chosen


def _probe_r2s(
    features: np.ndarray, targets: dict[str, np.ndarray], split: ProbeSplit, ridge: float | None = None
) -> dict[str, float]:
    """R² of one ridge probe per target set on ``split``, sharing the SVDs between targets."""
    x = np.asarray(features, dtype=np.float64)
    train, test = split.train, split.test
    x_train, x_test = _centre_and_scale(x[train], x[test])
    ys = {name: np.asarray(y, dtype=np.float64).reshape(x.shape[0], -1) for name, y in targets.items()}
    if ridge is None:
        folds = _cv_folds(split.train_groups, train.size)
        chosen = _choose_ridge(x_train, [y[train] for y in ys.values()], folds, _RIDGE_GRID * train.size)
        logger.debug("linear probe: cross-validation chose ridge %s on %d training cells", chosen, train.size)
    else:
        chosen = [float(ridge)] * len(ys)
    u, s, vt = np.linalg.svd(x_train, full_matrices=False)  # x_train is centred already
    rank = s > s.max(initial=0.0) * max(x_train.shape) * np.finfo(np.float64).eps
    scores = {}
    for (name, y), penalty in zip(ys.items(), chosen, strict=True):
        y_mean = y[train].mean(axis=0)
        uty = u.T @ (y[train] - y_mean)
        # ridge = 0 is least squares: the pseudo-inverse, ignoring null directions
        gain = np.where(rank, s / np.where(rank, s**2 + penalty, 1.0), 0.0)
        predicted = x_test @ (vt.T @ (gain[:, None] * uty)) + y_mean
        y_test = y[test]
        varies = np.ptp(y_test, axis=0) > 0
        if not varies.any():
            logger.warning("linear probe: no %s output varies in the %d test cells; R² is undefined", name, test.size)
            scores[name] = math.nan
            continue
        ss_res = np.sum((y_test - predicted)[:, varies] ** 2)
        ss_tot = np.sum((y_test - y_test.mean(axis=0))[:, varies] ** 2)
        scores[name] = float(1.0 - ss_res / ss_tot)
    return scores


def linear_probe_r2(
    features: np.ndarray,
    targets: np.ndarray,
    *,
    seed: int = 0,
    test_fraction: float = 0.3,
    ridge: float | None = None,
    groups: np.ndarray | None = None,
    split: ProbeSplit | None = None,
) -> float:
    """R² of a ridge regression from features to targets, on a held-out split.

    Features are centred on the training split's mean and divided by one
    common scale, their RMS standard deviation in training (not feature by
    feature: a rare class seen in one training cell would get a tiny scale
    and blow up test predictions). The model is closed-form ridge
    ``(XᵀX + λI)⁻¹Xᵀy`` on those features plus an unpenalised intercept. By
    default λ is chosen on the training split alone, by 5-fold
    cross-validation over a log grid (``1e-8·n .. 1e2·n`` for n training
    cells) whose folds keep the split's groups whole.

    For multi-output targets (class fractions) the result is the
    variance-weighted R², ``1 - sum(SS_res) / sum(SS_tot)`` over all outputs:
    a rare class with tiny test variance weighs little, so it cannot drag
    the score below zero on its own, and constant outputs add nothing.

    Args:
        features: ``(N, F)`` predictors (embeddings).
        targets: ``(N,)`` or ``(N, T)`` values to predict.
        seed: Seed of the split when ``split`` is not given (same seed, same split).
        test_fraction: Share of samples held out for scoring, in (0, 1), when ``split`` is not given.
        ridge: Fixed non-negative L2 penalty on the scaled coefficients;
            None chooses it by cross-validation on the training split.
        groups: Optional ``(N,)`` group labels (e.g. H3 parent cells) kept whole by the split,
            when ``split`` is not given; see :func:`probe_split`.
        split: A ready :class:`ProbeSplit` (from :func:`probe_split`); overrides the three above.

    Returns:
        R² on the test split (1 is perfect, 0 is no better than the test mean,
        negative is worse); NaN when no output varies in the test split.

    Raises:
        InvalidInputError: for mismatched shapes, non-finite values, a negative ridge or a split
            that indexes other cells.
    """
    x = _check_vectors(features, "features")
    y = np.asarray(targets, dtype=np.float64)
    n = x.shape[0]
    if y.ndim not in (1, 2) or y.shape[0] != n:
        raise InvalidInputError(f"targets must be (N={n},) or (N={n}, T), got {np.shape(targets)}")
    if not np.isfinite(y).all():
        raise InvalidInputError("targets hold NaN or infinite values")
    if ridge is not None and ridge < 0:
        raise InvalidInputError(f"ridge must be >= 0 or None (chosen by cross-validation), got {ridge}")
    if split is None:
        split = probe_split(n, seed=seed, test_fraction=test_fraction, groups=groups)
    elif max(int(split.train.max()), int(split.test.max())) >= n:
        raise InvalidInputError(f"the split indexes cells beyond the {n} given; build it with probe_split({n}, ...)")
    return _probe_r2s(x, {"targets": y}, split, ridge)["targets"]
