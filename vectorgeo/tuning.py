"""Hyper-parameter search: the search space, the score, the validation patches, the result document.

A tuning trial trains an encoder on pairs that touch neither held-out nor
validation ground, embeds random patches lying wholly on validation ground
(:data:`vectorgeo.holdout.VALIDATION`), and scores them with
:func:`vectorgeo.evaluate.evaluate_embeddings`. Held-out ground, which
flow 05 scores, is never read: :func:`sample_validation_cells` checks it.

The trials live in an Optuna study (:mod:`vectorgeo.studies`). The best
trial is written as ``models/{name}.tuning.json`` (:func:`vectorgeo.artifacts.tuning_key`) beside the
model, and :func:`read_best` hands it to training (flow 02).

Nothing here imports Optuna at run time; reading a result (:func:`read_best`) loads no study.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from vectorgeo.artifacts import read_tuning, tuning_key
from vectorgeo.encoder import ENCODER_DEFAULTS
from vectorgeo.errors import InvalidInputError
from vectorgeo.holdout import HOLDOUT, patch_held_out, patch_on_validation
from vectorgeo.land import is_land
from vectorgeo.raster import extract_patches, pixel_sides_m, raster_bounds_latlng
from vectorgeo.sampling import random_points_in_bounds
from vectorgeo.training import OBJECTIVES, TrainingParams

if TYPE_CHECKING:
    import optuna
    import rasterio

    from vectorgeo.legends import Legend
    from vectorgeo.transfer import Bucket

__all__ = [
    "BUDGET_FIELDS",
    "SCORE_R2_METRICS",
    "SEARCH_SPACE",
    "TRIPLET_SPACE",
    "ValidationCells",
    "read_best",
    "sample_validation_cells",
    "suggest_settings",
    "validation_score",
    "write_tuning",
]

logger = logging.getLogger(__name__)

SEARCH_SPACE = {
    "learning_rate": {"low": 3e-4, "high": 5e-3, "log": True},
    "batch_size": [128, 256, 512],
    "num_filters": [16, 32, 48],
    "composition_skip": [False, True],
    "temperature": {"low": 0.05, "high": 0.5, "log": True},
    "neighbor_weight": [0.0, 0.25, 0.5],
    "vicreg_weight": [0.0, 0.05, 0.2],
    "composition_weight": [0.0, 1.0, 4.0, 10.0],
}
"""What a trial draws. Ranges (``low``/``high``, log-uniform when ``log``) are
floats; lists are categorical choices. ``learning_rate`` is AdamW's peak rate,
``batch_size`` the pairs per batch (the in-batch negatives), ``num_filters``
and ``composition_skip`` shape the encoder (:class:`vectorgeo.encoder.EncoderConfig`).
``composition_weight`` weighs the composition task (any objective);
``temperature``, ``neighbor_weight`` and ``vicreg_weight`` belong to the
InfoNCE objective and are drawn only for InfoNCE trials. Everything else
(``embed_dim``, ``n_conv_blocks``, ``use_se``, weight decay, warm-up) keeps
the caller's value or its default; ``use_dem`` is always False, because
validation patches carry no DEM."""

TRIPLET_SPACE = {"margin": {"low": 0.05, "high": 0.5, "log": False}}
"""Drawn only for triplet trials (when the caller allows the triplet objective)."""

SCORE_R2_METRICS = ("r2_class_fractions", "r2_edge_density", "r2_shannon")
"""Linear-probe R² metrics that enter :func:`validation_score`."""

BUDGET_FIELDS = ("epochs", "patience", "seed")
"""Training fields that are a run's budget, not a tuned choice: :func:`read_best` leaves them to the caller."""


def _suggest(trial: optuna.Trial, name: str, space: dict):
    spec = space[name]
    if isinstance(spec, list):
        return trial.suggest_categorical(name, spec)
    return trial.suggest_float(name, spec["low"], spec["high"], log=spec["log"])


def suggest_settings(
    trial: optuna.Trial,
    *,
    objectives: tuple[str, ...] = ("infonce",),
    encoder: dict | None = None,
    epochs: int = 3,
    seed: int = 0,
) -> tuple[dict, TrainingParams]:
    """Draw one trial's encoder settings and training parameters from :data:`SEARCH_SPACE`.

    Args:
        trial: The Optuna trial (``study.ask()``, or a ``FixedTrial`` in tests).
        objectives: Objectives to choose from; ``("infonce",)`` fixes it, adding
            ``"triplet"`` makes it a choice (with :data:`TRIPLET_SPACE`).
        encoder: Fixed encoder settings (keys of :data:`vectorgeo.encoder.ENCODER_DEFAULTS`),
            e.g. ``{"embed_dim": 16}``; the tuned keys override them.
        epochs: The trial's training budget, epochs.
        seed: Seed of the weights, shuffles and augmentation (the same for every trial,
            so trials differ by their settings only).

    Returns:
        ``(encoder settings, training parameters)``: the encoder dict holds every key of
        ``ENCODER_DEFAULTS``.

    Raises:
        InvalidInputError: an unknown objective or encoder setting.
    """
    objectives = tuple(objectives)
    if not objectives or set(objectives) - set(OBJECTIVES):
        raise InvalidInputError(f"objectives must be a non-empty subset of {OBJECTIVES}, got {list(objectives)}")
    unknown = set(encoder or {}) - set(ENCODER_DEFAULTS)
    if unknown:
        raise InvalidInputError(f"unknown encoder settings {sorted(unknown)}; known: {sorted(ENCODER_DEFAULTS)}")
    objective = objectives[0] if len(objectives) == 1 else trial.suggest_categorical("objective", list(objectives))
    training = {"objective": objective, "epochs": epochs, "seed": seed}
    names = ("learning_rate", "batch_size", "composition_weight")
    training.update({name: _suggest(trial, name, SEARCH_SPACE) for name in names})
    settings = {**ENCODER_DEFAULTS, **(encoder or {}), "use_dem": False}
    settings.update({name: _suggest(trial, name, SEARCH_SPACE) for name in ("num_filters", "composition_skip")})
    if objective == "infonce":
        names = ("temperature", "neighbor_weight", "vicreg_weight")
        training.update({name: _suggest(trial, name, SEARCH_SPACE) for name in names})
    else:
        training["margin"] = _suggest(trial, "margin", TRIPLET_SPACE)
    return settings, TrainingParams(**training)


def validation_score(report: dict) -> float:
    """The number a trial minimises, from a validation report of :func:`~vectorgeo.evaluate.evaluate_embeddings`.

    ``score = jsd_encoder / jsd_pca + sum over m in SCORE_R2_METRICS of (1 - clip(r2_m, -1, 1))``

    The first term is retrieval quality relative to the PCA-of-one-hot baseline on the
    same cells (below 1 beats it; the ratio removes how hard the cells are). Each probe
    term is 0 for a perfect linear probe and 1 for one no better than the mean; clipping
    at -1 keeps one wild probe on few cells from swamping the rest, and an undefined R²
    (None) counts as the worst, 2. A perfect encoder scores 0 plus its JSD ratio.

    Raises:
        InvalidInputError: the report lacks the retrieval JSD of the encoder or of PCA.
    """
    methods = report["methods"]
    jsd, jsd_pca = methods["encoder"]["retrieval_jsd"], methods["pca_onehot"]["retrieval_jsd"]
    if jsd is None or jsd_pca is None or not math.isfinite(jsd) or not math.isfinite(jsd_pca):
        raise InvalidInputError(
            f"the validation report has no retrieval JSD (encoder {jsd}, PCA {jsd_pca}); "
            "score more validation cells (--max_validation_cells)"
        )
    score = jsd / max(jsd_pca, 1e-9)
    for metric in SCORE_R2_METRICS:
        r2 = methods["encoder"][metric]
        r2 = -1.0 if r2 is None or not math.isfinite(r2) else r2
        score += 1.0 - min(max(r2, -1.0), 1.0)
    return float(score)


@dataclass
class ValidationCells:
    """Patches lying wholly on validation ground, scored by every trial.

    Attributes:
        classes: uint8 ``(N, P, P)`` class indices.
        lat: float64 ``(N,)`` patch-centre latitudes, degrees (EPSG:4326).
        lng: float64 ``(N,)`` patch-centre longitudes, degrees.
        half_width_m: Half a patch's ground side, metres.
    """

    classes: np.ndarray
    lat: np.ndarray
    lng: np.ndarray
    half_width_m: float


def sample_validation_cells(
    dataset: rasterio.DatasetReader,
    legend: Legend,
    *,
    patch_px: int,
    n_cells: int,
    seed: int = 0,
    max_rounds: int = 8,
) -> ValidationCells:
    """Up to ``n_cells`` random valid land patches lying wholly on validation ground.

    Points are drawn uniformly over the raster footprint, kept when all five points
    of their patch (centre, corners; :func:`vectorgeo.holdout.patch_on_validation`)
    lie on validation ground, then when on land and inside the raster without nodata.
    Held-out ground (:data:`vectorgeo.holdout.HOLDOUT`) is disjoint from validation
    ground; that is checked on the result, so tuning never sees what flow 05 scores.

    Args:
        dataset: Open land-cover raster, any CRS.
        legend: Its legend.
        patch_px: Patch side, pixels (the training set's).
        n_cells: Most patches to return.
        seed: Seed of the draw.
        max_rounds: Draws of ``20 * n_cells`` points before giving up on reaching ``n_cells``.

    Returns:
        The patches, fewer than ``n_cells`` when the footprint holds too little validation land.

    Raises:
        InvalidInputError: ``n_cells < 1`` or no patch found.
        AssertionError: a patch touches held-out ground (the two grounds overlap: a bug).
    """
    if n_cells < 1:
        raise InvalidInputError(f"n_cells must be >= 1, got {n_cells}")
    rng = np.random.default_rng([seed, 7])
    half_width_m = patch_px * max(pixel_sides_m(dataset)) / 2
    bounds = raster_bounds_latlng(dataset)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    have = 0
    for _ in range(max_rounds):
        lat, lng = random_points_in_bounds(bounds, 20 * n_cells, rng)
        keep = patch_on_validation(lat, lng, half_width_m)[0]
        lat, lng = lat[keep], lng[keep]
        keep = is_land(lat, lng, dataset, legend)
        lat, lng = lat[keep], lng[keep]
        patches = extract_patches(dataset, lat, lng, legend, patch_px=patch_px)
        ok = np.flatnonzero(patches.valid)[: n_cells - have]
        parts.append((patches.classes[ok], lat[ok], lng[ok]))
        have += ok.size
        if have >= n_cells:
            break
    if have == 0:
        raise InvalidInputError(
            f"no valid land patch of {patch_px} px lies wholly on validation ground in the raster footprint {bounds}; "
            "tuning needs a raster several H3 res-5 cells (~250 km2 each) across"
        )
    classes, lat, lng = (np.concatenate(column) for column in zip(*parts, strict=True))
    if patch_held_out(lat, lng, half_width_m, **HOLDOUT)[1].any():
        raise AssertionError("a validation patch touches held-out ground; VALIDATION and HOLDOUT must not overlap")
    if have < n_cells:
        logger.warning("found only %d of %d validation patches after %d rounds", have, n_cells, max_rounds)
    return ValidationCells(classes, lat, lng, float(half_width_m))


def write_tuning(bucket: Bucket, model_filename: str, document: dict) -> str:
    """Write the tuning result atomically to ``models/{name}.tuning.json``; returns the key.

    The document holds ``study``, ``n_trials``, ``best_trial``, ``best_score``,
    ``best_metrics``, ``encoder`` (every key of ``ENCODER_DEFAULTS``), ``training``
    (a :meth:`TrainingParams.to_dict`), ``trials`` (one summary per trial) and
    ``wall_seconds``; see :func:`vectorgeo.jobs.tune.finish_tuning`.
    """
    missing = {"study", "n_trials", "best_trial", "best_score", "encoder", "training", "trials"} - set(document)
    if missing:
        raise InvalidInputError(f"tuning document lacks {sorted(missing)}")
    key = tuning_key(model_filename)
    bucket.write_json(key, document)
    return key


def read_best(bucket: Bucket, model_filename: str) -> dict:
    """The best settings found for a model, ready for flow 02's training.

    Args:
        bucket: The pipeline bucket.
        model_filename: ``{name}.keras``; reads ``models/{name}.tuning.json``.

    Returns:
        ``{"encoder": {...}, "training": {...}, "source": key, "study": str, "best_trial": int,
        "best_score": float}``. ``encoder`` holds every key of
        :data:`vectorgeo.encoder.ENCODER_DEFAULTS`; ``training`` holds the
        :class:`~vectorgeo.training.TrainingParams` fields except :data:`BUDGET_FIELDS`
        (``epochs``, ``patience``, ``seed``), which stay the trainer's own; so
        ``TrainingParams(**best["training"], epochs=..., seed=...)`` and
        ``train_model(..., encoder=best["encoder"], training=..., tuning=best)`` work.

    Raises:
        NotFoundError: the model was never tuned.
        InvalidInputError: the document is malformed (unknown settings, invalid values).
    """
    document = read_tuning(bucket, model_filename)
    key = tuning_key(model_filename)
    try:
        encoder, training = dict(document["encoder"]), dict(document["training"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInputError(f"tuning result {key!r} lacks its 'encoder' or 'training' settings; retune") from exc
    unknown = set(encoder) - set(ENCODER_DEFAULTS)
    if unknown:
        raise InvalidInputError(f"tuning result {key!r} has unknown encoder settings {sorted(unknown)}; retune")
    tuned = TrainingParams.from_dict(training).to_dict()  # validates the values
    return {
        "encoder": {**ENCODER_DEFAULTS, **encoder},
        "training": {k: v for k, v in tuned.items() if k not in BUDGET_FIELDS},
        "source": key,
        "study": document.get("study"),
        "best_trial": document.get("best_trial"),
        "best_score": document.get("best_score"),
    }
