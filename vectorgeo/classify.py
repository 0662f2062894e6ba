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
    "cross_validate_features",
    "predict_in_chunks",
    "score_predictions",
]

logger = logging.getLogger(__name__)

MAX_FOLDS = 5


def blocked_groups(h3: np.ndarray, *, parent_res: int | None = None, min_groups: int = 2 * MAX_FOLDS) -> tuple:
    """The H3 parent of each labelled cell, the blocks of the cross-validation.

    Args:
        h3: uint64 labelled cells, all at one resolution ``R``.
        parent_res: Resolution of the blocks; None picks the coarsest of ``R-3 .. R-1`` that still
            gives ``min_groups`` blocks (coarse blocks keep neighbours apart; too few leave no folds).

    Returns:
        ``(groups uint64, parent_res)``.
    """
    h3 = np.asarray(h3, np.uint64)
    res = int(h3n.get_resolution(h3[0]))
    if parent_res is not None:
        if not 0 <= parent_res <= res:
            raise InvalidInputError(f"parent_res must lie in 0..{res} (the labels' resolution), got {parent_res}")
        return _parents(h3, parent_res), parent_res
    for candidate in range(max(0, res - 3), res + 1):
        groups = _parents(h3, candidate)
        if np.unique(groups).size >= min_groups or candidate == res:
            return groups, candidate
    raise AssertionError("unreachable")  # the loop returns at candidate == res


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
    kind: str,
    params: dict | None = None,
    seed: int = 0,
) -> dict:
    """Blocked k-fold cross-validation of one classifier on one feature set.

    ``StratifiedGroupKFold`` keeps each block in one fold and the class mix of the folds
    alike; k is at most :data:`MAX_FOLDS` and at most the number of blocks. A fold whose
    training part lacks a class simply never predicts it (its recall shows that).

    Returns:
        :func:`score_predictions` of the pooled out-of-fold predictions, plus ``n_folds``.

    Raises:
        InvalidInputError: fewer than 2 blocks (nothing to hold out).
    """
    from sklearn.model_selection import StratifiedGroupKFold

    n_groups = np.unique(groups).size
    if n_groups < 2:
        raise InvalidInputError(
            "all labelled cells lie in one block (H3 parent cell): blocked cross-validation needs labels in at "
            "least 2 places apart; label more widely spread places"
        )
    n_folds = min(MAX_FOLDS, n_groups)
    # an unsplittable class only warns: sklearn's warning would repeat for every feature set
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        splits = list(
            StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(features, y, groups)
        )
    predicted = np.empty_like(y)
    for train, test in splits:
        counts = np.bincount(y[train], minlength=len(classes))
        model = make_classifier(kind, params, seed=seed, min_class_size=int(counts[counts > 0].min()))
        model.fit(features[train], y[train])
        predicted[test] = model.predict(features[test])
    return {**score_predictions(y, predicted, classes), "n_folds": n_folds}


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
        report["features"][name] = cross_validate(features, y, groups, classes, kind=kind, params=params, seed=seed)
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
