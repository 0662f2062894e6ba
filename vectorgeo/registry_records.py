"""The rows of the model and prediction registry, checked before they reach PostgreSQL.

:class:`ModelRecord` and :class:`PredictionRecord` validate on construction, so a bad value is one
:class:`~vectorgeo.errors.InvalidInputError` naming the field, raised before any connection is used;
:func:`json_text` is the one place a mapping becomes jsonb text (no NaN, no NUL).
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vectorgeo.errors import InvalidInputError

__all__ = ["ModelRecord", "PredictionRecord", "check_text", "json_text"]

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ModelRecord:
    """A trained classifier, as :meth:`Registry.register_model` stores it (validated on construction).

    Args:
        name: Model name (e.g. ``"wetlands"``); with ``artifact_sha256``, the row's identity.
        classifier: Estimator kind (``vectorgeo.classifiers.CLASSIFIERS``, e.g. ``"logistic"``).
        artifact_key: Bucket key of the saved classifier.
        artifact_sha256: SHA-256 of that file, 64 hex digits (stored lowercase).
        feature_source: What it was trained on; flow 06 writes ``{"kind": "embeddings", "model": embeddings model
            name, "model_sha256": its checksum, "h3_resolution": R, "embed_dim", "manifest_parts"}``.
        label_source: Flow 06 writes ``{"source": label file path or key, "sha256", "class_property", "n_cells",
            "classes": [...], "counts": {...}}``. Any JSON object is accepted.
        params: The classifier's full parameters (``vectorgeo.classifiers.classifier_params``).
        cv_metrics: Cross-validation metrics; ``"macro_f1"`` is shown by ``vectorgeo registry models``.

    Raises:
        InvalidInputError: an empty text field, a checksum that is not 64 hex digits, or a mapping that
            is not JSON (NaN and infinity included: PostgreSQL's jsonb rejects them).
    """

    name: str
    classifier: str
    artifact_key: str
    artifact_sha256: str
    feature_source: Mapping[str, Any]
    label_source: Mapping[str, Any]
    params: Mapping[str, Any] = field(default_factory=dict)
    cv_metrics: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("name", "classifier", "artifact_key"):
            check_text(name, getattr(self, name))
        object.__setattr__(self, "artifact_sha256", _check_sha256(self.artifact_sha256))
        for name in ("feature_source", "label_source", "params", "cv_metrics"):
            json_text(name, getattr(self, name))


@dataclass(frozen=True)
class PredictionRecord:
    """A prediction raster of a registered model, as :meth:`Registry.register_prediction` stores it.

    Args:
        model_id: The model's id (from :meth:`Registry.register_model`).
        embeddings_source: The embeddings predicted on: ``{"model": name, "model_sha256": its checksum,
            "version": the classifier version}`` (flow 06 writes these; any JSON object is accepted).
        h3_resolution: H3 resolution of the cells, 0..15.
        cog_key: Bucket key of the class COG.
        geoparquet_key: Bucket key of the per-cell GeoParquet; with ``model_id``, the row's identity.
        bounds: ``(west, south, east, north)``, degrees (EPSG:4326); west > east is accepted for a box that
            crosses the antimeridian (flow 06 writes the min/max of cell centres, so never that).
        n_cells: Cells predicted.
        class_counts: Cells per class name.
        probability_cog_key: Bucket key of the class-probability COG, if one was written.

    Raises:
        InvalidInputError: a bad id, resolution, count, key or mapping, or bounds that are not four
            finite numbers in range with ``south <= north``.
    """

    model_id: int
    embeddings_source: Mapping[str, Any]
    h3_resolution: int
    cog_key: str
    geoparquet_key: str
    bounds: tuple[float, float, float, float]
    n_cells: int
    class_counts: Mapping[str, int] = field(default_factory=dict)
    probability_cog_key: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_id", _check_int("model_id", self.model_id, 1))
        object.__setattr__(self, "h3_resolution", _check_int("h3_resolution", self.h3_resolution, 0, 15))
        object.__setattr__(self, "n_cells", _check_int("n_cells", self.n_cells, 0))
        for name in ("cog_key", "geoparquet_key"):
            check_text(name, getattr(self, name))
        if self.probability_cog_key is not None:
            check_text("probability_cog_key", self.probability_cog_key)
        object.__setattr__(self, "bounds", _check_bounds(self.bounds))
        if not isinstance(self.class_counts, Mapping):
            raise InvalidInputError(f"class_counts must map class names to cell counts, got {self.class_counts!r}")
        counts = {str(k): _check_int(f"class_counts[{k!r}]", v, 0) for k, v in self.class_counts.items()}
        object.__setattr__(self, "class_counts", counts)
        json_text("embeddings_source", self.embeddings_source)


def check_text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(f"{name} must be a non-empty string, got {value!r}")
    if "\x00" in value:
        raise InvalidInputError(f"{name} must not hold a NUL character (PostgreSQL text cannot), got {value!r}")
    return value


def _check_sha256(value: object) -> str:
    if not isinstance(value, str) or not _SHA256_RE.match(value.lower()):
        raise InvalidInputError(f"artifact_sha256 must be a SHA-256 hex digest (64 hex digits), got {value!r}")
    return value.lower()


def _check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise InvalidInputError(f"{name} must be an integer, got {value!r}") from None
    if number < low or (high is not None and number > high):
        span = f">= {low}" if high is None else f"in {low}..{high}"
        raise InvalidInputError(f"{name} must be {span}, got {number}")
    return number


def _check_bounds(bounds: object) -> tuple[float, float, float, float]:
    """``(west, south, east, north)`` as floats, or InvalidInputError naming the bad value."""
    try:
        values = tuple(float(v) for v in bounds)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        values = ()
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise InvalidInputError(f"bounds must be 4 finite numbers (west, south, east, north), got {bounds!r}")
    west, south, east, north = values
    if not (-180 <= west <= 180 and -180 <= east <= 180 and -90 <= south <= north <= 90):
        raise InvalidInputError(
            f"bounds must be (west, south, east, north) in degrees with longitudes in -180..180 and "
            f"-90 <= south <= north <= 90, got {bounds!r}"
        )
    return west, south, east, north


def json_text(name: str, value: object) -> str:
    """``value`` as JSON text for a jsonb column, or InvalidInputError saying why it cannot be stored."""
    if not isinstance(value, Mapping):
        raise InvalidInputError(f"{name} must be a mapping (a JSON object), got {type(value).__name__}")
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as err:
        raise InvalidInputError(
            f"{name} must hold only JSON values (dicts, lists, strings, finite numbers, booleans, None): {err}"
        ) from None
    if "\\u0000" in text:
        raise InvalidInputError(f"{name} must not hold a NUL character (PostgreSQL jsonb cannot)")
    return text
