"""Few-shot classification on cell features, scored by spatially blocked cross-validation.

Neighbouring H3 cells share most of their patch, so a random split scores a classifier on
near-copies of its training cells. Here folds are whole H3 parent cells
(:func:`blocked_groups`): every labelled cell under one parent sits on the same side of
every split. Out-of-fold predictions of all folds are pooled, then scored once
(:func:`score_predictions`: accuracy, macro-F1, per-class precision and recall, confusion
matrix), the same way for the embeddings and for the class-histogram baseline, so the
embeddings' value is measured, not assumed (:func:`cross_validate_features`).
"""

from __future__ import annotations

import logging
import math
import warnings

import h3.api.numpy_int as h3n
import numpy as np

from vectorgeo.classifiers import classifier_params, make_classifier
from vectorgeo.errors import InvalidInputError

__all__ = [
    "MAX_FOLDS",
    "blocked_groups",
    "cross_validate",
    "spatial_folds",
    "cross_validate_features",
    "predict_in_chunks",
    "score_predictions",
]

logger = logging.getLogger(__name__)

MAX_FOLDS = 5


def blocked_groups(h3: np.ndarray, *, parent_res: int | None = None, min_groups: int = 2 * MAX_FOLDS) -> tuple:
    """The H3 parent of each labelled cell: the blocks of the cross-validation.

    Args:
        h3: uint64 labelled cells, all at one resolution ``R`` (at least 1).
        parent_res: Resolution of the blocks, ``0 .. R-1``; None picks the coarsest of ``R-3 .. R-1``
            that still gives ``min_groups`` blocks (coarse blocks keep neighbourhoods apart; too few leave
            no folds), else ``R-1`` with however many blocks it gives.

    Returns:
        ``(groups uint64, parent_res)``.
    """
    h3 = np.asarray(h3, np.uint64)
    res = int(h3n.get_resolution(h3[0]))
    if res == 0:
        raise InvalidInputError("labels at H3 resolution 0 have no parent cells to block by; use a finer resolution")
    if parent_res is not None:
        if not 0 <= parent_res < res:
            raise InvalidInputError(
                f"parent_res must lie in 0..{res - 1} (coarser than the labels' {res}), got {parent_res}"
            )
        return _parents(h3, parent_res), parent_res
    for candidate in range(max(0, res - 3), res):
        groups = _parents(h3, candidate)
        if np.unique(groups).size >= min_groups or candidate == res - 1:
            return groups, candidate
    raise AssertionError("unreachable")  # the loop returns at candidate == res - 1


def spatial_folds(
    h3: np.ndarray, y: np.ndarray, groups: np.ndarray, *, n_folds: int, seed: int = 0, buffer_rings: int = 1
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Blocked folds with a buffer: ``(train, test)`` row indices.

    Whole blocks go to one fold (``StratifiedGroupKFold``, class mix kept alike); then each fold's
    training rows lose every cell within ``buffer_rings`` grid rings of a test cell, so cells that
    touch across a block edge never sit on both sides of a split.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    h3 = np.asarray(h3, np.uint64)
    row = {int(c): i for i, c in enumerate(h3.tolist())}
    near = [
        [row[n] for n in h3n.grid_disk(c, buffer_rings).tolist() if int(n) in row and int(n) != c]
        for c in h3.tolist()
    ] if buffer_rings > 0 else [[] for _ in range(h3.size)]  # fmt: skip
    with warnings.catch_warnings():  # an unsplittable class is reported once, by cross_validate_features
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        splits = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(h3, y, groups)
        splits = list(splits)
    folds = []
    for train, test in splits:
        in_test = np.zeros(h3.size, bool)
        in_test[test] = True
        touching = np.array([in_test[near[i]].any() if near[i] else False for i in train.tolist()], bool)
        folds.append((train[~touching], test))
    return folds


def _parents(h3: np.ndarray, res: int) -> np.ndarray:
    """H3 parents at ``res``, vectorised on the bit layout: the resolution field set to ``res`` (bits 52-55) and
    the 3-bit digits of the finer resolutions set to 7 (unused), as h3's ``cell_to_parent`` does."""
    unused = np.uint64((1 << (3 * (15 - res))) - 1)
    resolution = np.uint64(0xF << 52)
    return (h3 & ~resolution & ~unused) | np.uint64(res << 52) | unused


def cross_validate(
    features: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    classes: tuple[str, ...],
    *,
    h3: np.ndarray,
    kind: str,
    params: dict | None = None,
    seed: int = 0,
    buffer_rings: int = 1,
) -> dict:
    """Blocked, buffered k-fold cross-validation of one classifier on one feature set.

    Folds come from :func:`spatial_folds` (whole blocks, and a buffer of ``buffer_rings`` grid
    rings dropped from training around the test cells); k is at most :data:`MAX_FOLDS` and at
    most the number of blocks. A fold whose training part lacks a class never predicts it (its
    recall shows that); one whose training part holds a single class predicts that class.

    Returns:
        :func:`score_predictions` of the pooled out-of-fold predictions, plus ``n_folds`` and
        ``buffer_dropped_per_fold`` (training cells dropped by the buffer, mean over folds).

    Raises:
        InvalidInputError: fewer than 2 blocks, or a fold left with no training cell.
    """
    n_groups = np.unique(groups).size
    if n_groups < 2:
        raise InvalidInputError(
            "all labelled cells lie in one block (H3 parent cell): blocked cross-validation needs labels in at "
            "least 2 places apart; label more widely spread places"
        )
    n_folds = min(MAX_FOLDS, n_groups)
    splits = spatial_folds(h3, y, groups, n_folds=n_folds, seed=seed, buffer_rings=buffer_rings)
    predicted = np.empty_like(y)
    for train, test in splits:
        if train.size == 0:
            raise InvalidInputError(
                "a fold has no training cell left once the cells touching its test cells are dropped: the labels "
                "form one contiguous patch; label places further apart"
            )
        counts = np.bincount(y[train], minlength=len(classes))
        if np.count_nonzero(counts) < 2:  # the other classes all sit in the held-out blocks
            predicted[test] = int(np.argmax(counts))
            continue
        model = make_classifier(kind, params, seed=seed, min_class_size=int(counts[counts > 0].min()))
        model.fit(features[train], y[train])
        predicted[test] = model.predict(features[test])
    dropped = float(np.mean([len(y) - len(test) - len(train) for train, test in splits]))
    return {
        **score_predictions(y, predicted, classes),
        "n_folds": n_folds,
        "buffer_dropped_per_fold": round(dropped, 1),
    }


def score_predictions(y_true: np.ndarray, y_pred: np.ndarray, classes: tuple[str, ...]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix (rows = truth)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    labels = np.arange(len(classes))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0.0
    )  # fmt: skip
    per_class = {
        name: {"precision": _r(p), "recall": _r(r), "f1": _r(f), "support": int(s)}
        for name, p, r, f, s in zip(classes, precision, recall, f1, support, strict=True)
    }
    return {
        "accuracy": _r(accuracy_score(y_true, y_pred)),
        "macro_f1": _r(float(np.mean(f1))),
        "per_class": per_class,
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "classes": list(classes),
    }


def cross_validate_features(
    feature_sets: dict[str, np.ndarray],
    y: np.ndarray,
    h3: np.ndarray,
    classes: tuple[str, ...],
    *,
    kind: str,
    params: dict | None = None,
    seed: int = 0,
    parent_res: int | None = None,
) -> dict:
    """The same blocked cross-validation on several feature sets (embeddings, histogram), side by side.

    Returns:
        ``{"classifier", "params", "parent_res", "n_blocks", "n_labels", "counts", "features": {name: scores},
        "warnings": [...]}``.
    """
    y = np.asarray(y)
    groups, parent_res = blocked_groups(h3, parent_res=parent_res)
    full_params = classifier_params(kind, params, seed=seed)
    report = {
        "classifier": kind,
        "params": full_params,
        "parent_res": parent_res,
        "n_blocks": int(np.unique(groups).size),
        "n_labels": int(y.size),
        "counts": {name: int(n) for name, n in zip(classes, np.bincount(y, minlength=len(classes)), strict=True)},
        "features": {},
        "warnings": [],
    }
    for name, features in feature_sets.items():
        report["features"][name] = cross_validate(
            features, y, groups, classes, h3=h3, kind=kind, params=params, seed=seed
        )
    for index, name in enumerate(classes):
        blocks = np.unique(groups[y == index]).size
        if blocks < 2:
            report["warnings"].append(
                f"class {name!r} lies in {blocks} block (H3 parent at res {parent_res}): its scores come from "
                "folds that never trained on it; label it in more places"
            )
    for message in report["warnings"]:
        logger.warning(message)
    return report


def predict_in_chunks(model, features: np.ndarray, *, chunk: int = 65_536) -> np.ndarray:
    """``predict_proba`` over chunks of rows, float32 ``(N, C)`` (bounded memory for a random forest)."""
    n = features.shape[0]
    n_classes = len(model.classes_)
    out = np.empty((n, n_classes), np.float32)
    for start in range(0, n, chunk):
        out[start : start + chunk] = model.predict_proba(features[start : start + chunk])
    return out


def _r(value: float) -> float:
    value = float(value)
    return round(value, 4) if math.isfinite(value) else value
