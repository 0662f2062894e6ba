"""The classifiers users train on embeddings: one factory, shared by flow 06 and ``POST /classify``.

Each is a scikit-learn estimator with ``predict_proba``, built from a short name and a few
parameters, so a registry row (``classifier``, ``params``) says exactly what was trained:

* ``logistic``: standardised features, multinomial logistic regression, classes balanced.
  Fast and calibrated enough for maps; the default.
* ``random_forest``: 200 trees, classes balanced; no scaling needed.
* ``knn``: cosine distance, neighbours weighted by closeness; ``n_neighbors`` shrinks to
  the smallest class so a few-shot class can still win.

scikit-learn is imported inside :func:`make_classifier`, so importing this module stays light.
"""

from __future__ import annotations

from typing import Any

from vectorgeo.errors import InvalidInputError

__all__ = ["CLASSIFIERS", "DEFAULT_CLASSIFIER", "classifier_params", "make_classifier"]

CLASSIFIERS = ("logistic", "random_forest", "knn")
"""Names accepted by :func:`make_classifier`."""
DEFAULT_CLASSIFIER = "logistic"

_DEFAULTS: dict[str, dict[str, Any]] = {
    "logistic": {"C": 1.0, "max_iter": 2000},
    "random_forest": {"n_estimators": 200, "min_samples_leaf": 1, "max_features": "sqrt"},
    "knn": {"n_neighbors": 5},
}


def classifier_params(kind: str, params: dict[str, Any] | None = None, *, seed: int = 0) -> dict[str, Any]:
    """The full parameters of a classifier: its defaults, overridden by ``params``, plus the seed.

    Raises:
        InvalidInputError: an unknown classifier, or a parameter it does not take.
    """
    if kind not in CLASSIFIERS:
        raise InvalidInputError(f"unknown classifier {kind!r}; use one of {', '.join(CLASSIFIERS)}")
    params = dict(params or {})
    unknown = sorted(set(params) - set(_DEFAULTS[kind]))
    if unknown:
        raise InvalidInputError(
            f"classifier {kind!r} takes {', '.join(sorted(_DEFAULTS[kind]))}, not {', '.join(unknown)}"
        )
    full = {**_DEFAULTS[kind], **params}
    if kind != "knn":
        full["random_state"] = int(seed)
    return full


def make_classifier(kind: str, params: dict[str, Any] | None = None, *, seed: int = 0, min_class_size: int = 0):
    """A fresh, unfitted classifier.

    Args:
        kind: One of :data:`CLASSIFIERS`.
        params: Overrides of the defaults (see the module docstring).
        seed: Random state of the random forest and of the logistic solver.
        min_class_size: Examples in the smallest class of the training set (k-NN: caps ``n_neighbors``).

    Returns:
        A scikit-learn estimator with ``fit``, ``predict_proba`` and ``classes_``.
    """
    full = classifier_params(kind, params, seed=seed)
    if kind == "logistic":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", **full))
    if kind == "random_forest":
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(class_weight="balanced", n_jobs=1, **full)
    from sklearn.neighbors import KNeighborsClassifier

    k = int(full["n_neighbors"])
    if min_class_size > 0:
        k = max(1, min(k, min_class_size))
    return KNeighborsClassifier(n_neighbors=k, weights="distance", metric="cosine")
