"""Train the patch encoder: objectives, augmented views, schedule, early stopping.

Two objectives share one loop (Keras ``fit``):

- ``infonce`` (the default, chosen by measurement: ``docs/encoder.md``):
  NT-Xent over in-batch negatives. The positives of a patch are a second
  randomly rotated/flipped view of the same patch and, with
  ``neighbor_weight > 0``, its spatial neighbour (Tile2Vec's idea).
- ``triplet``: the semi-hard triplet loss of the first version, for comparison.

Keras is imported lazily so ``import vectorgeo.training`` stays light.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np

from vectorgeo.encoder import EncoderConfig, build_encoder, embed
from vectorgeo.errors import InvalidInputError
from vectorgeo.model_files import replace_atomically
from vectorgeo.views import make_views, view_batches, view_source

if TYPE_CHECKING:
    import keras

__all__ = [
    "OBJECTIVES",
    "TrainingParams",
    "dem_stats",
    "participation_ratio",
    "train_encoder",
    "view_diagnostics",
]

logger = logging.getLogger(__name__)

OBJECTIVES = ("infonce", "triplet")


@dataclass(frozen=True)
class TrainingParams:
    """How to train (not what the encoder looks like: that is :class:`EncoderConfig`).

    Attributes:
        objective: ``"infonce"`` or ``"triplet"``.
        epochs: Most epochs.
        batch_size: Pairs per batch; every other pair of the batch is a negative.
        learning_rate: Peak AdamW learning rate, after a linear warm-up; cosine decay follows.
        warmup_epochs: Length of the warm-up, epochs (fractions allowed); at most a fifth of the run.
        weight_decay: AdamW decoupled weight decay.
        temperature: InfoNCE softmax temperature on cosine similarity.
        neighbor_weight: InfoNCE weight of the spatial-neighbour positive, 0..1; the
            augmented second view of the same patch gets ``1 - neighbor_weight``.
        vicreg_weight: InfoNCE variance/covariance penalty weight (0 = off).
        composition_weight: Weight of an auxiliary task (0 = off): a linear head on the embedding
            predicts the patch's class fractions (computed from the input itself, no labels), and its
            squared error joins the loss. It makes composition linearly readable from the vector.
        margin: Triplet margin, squared-distance units (0..4).
        patience: Epochs without validation improvement before stopping (best weights kept).
        seed: Seeds Keras, the shuffles and the augmentation.
    """

    objective: str = "infonce"
    epochs: int = 6
    batch_size: int = 256
    learning_rate: float = 2e-3
    warmup_epochs: float = 1.0
    weight_decay: float = 1e-4
    temperature: float = 0.1
    neighbor_weight: float = 0.5
    vicreg_weight: float = 0.0
    composition_weight: float = 10.0
    margin: float = 0.2
    patience: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            (self.objective in OBJECTIVES, f"objective must be one of {OBJECTIVES}, got {self.objective!r}"),
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 2, f"batch_size must be >= 2 (in-batch negatives), got {self.batch_size}"),
            (0 < self.learning_rate < 1, f"learning_rate must lie in (0, 1), got {self.learning_rate}"),
            (self.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {self.warmup_epochs}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (0.01 <= self.temperature <= 10, f"temperature must lie in 0.01..10, got {self.temperature}"),
            (0 <= self.neighbor_weight <= 1, f"neighbor_weight must lie in 0..1, got {self.neighbor_weight}"),
            (self.vicreg_weight >= 0, f"vicreg_weight must be >= 0, got {self.vicreg_weight}"),
            (self.composition_weight >= 0, f"composition_weight must be >= 0, got {self.composition_weight}"),
            (0 <= self.margin <= 4, f"margin must lie in 0..4 (squared distance of unit vectors), got {self.margin}"),
            (self.patience >= 1, f"patience must be >= 1, got {self.patience}"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidInputError(message)

    def to_dict(self) -> dict:
        """JSON-ready dict of every field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainingParams:
        """Inverse of :meth:`to_dict`; unknown keys are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in dict(data).items() if k in known})

    @property
    def views(self) -> tuple[str, ...]:
        """The inputs of one training example, view 0 first."""
        if self.objective == "triplet":
            return ("anchor", "neighbor")
        views = ["anchor"]
        if self.neighbor_weight < 1:
            views.append("anchor_view")
        if self.neighbor_weight > 0:
            views.append("neighbor")
        return tuple(views)

    @property
    def view_weights(self) -> tuple[float, ...]:
        """InfoNCE weight of each positive view (views[1:])."""
        weight = {"anchor_view": 1.0 - self.neighbor_weight, "neighbor": self.neighbor_weight}
        return tuple(weight[v] for v in self.views[1:])


def _keras():
    from vectorgeo.keras_env import import_keras

    return import_keras()


def dem_stats(arrays: np.ndarray | Sequence[np.ndarray]) -> tuple[float, float]:
    """Mean and standard deviation of DEM values in metres, ignoring NaN.

    Args:
        arrays: One array or a sequence of arrays (e.g. anchor and neighbour DEMs), any shape.

    Returns:
        ``(mean_m, std_m)``; ``std_m`` is 1.0 for perfectly flat terrain so normalisation never divides by 0.

    Raises:
        InvalidInputError: when no finite value is present.
    """
    parts = [arrays] if isinstance(arrays, np.ndarray) else list(arrays)
    n = total = total_sq = 0.0
    for arr in parts:
        v = np.asarray(arr, dtype=np.float64)
        v = v[np.isfinite(v)]
        n, total, total_sq = n + v.size, total + v.sum(), total_sq + np.square(v).sum()
    if n == 0:
        raise InvalidInputError("DEM arrays hold no finite values; check the DEM raster's nodata and coverage")
    mean = total / n
    std = float(np.sqrt(max(total_sq / n - mean**2, 0.0)))
    return float(mean), std if std > 1e-6 else 1.0


def participation_ratio(embeddings: np.ndarray) -> float | None:
    """Effective number of used dimensions, ``(sum l)^2 / sum l^2`` over covariance eigenvalues: 1 (collapsed) .. D.

    None when undefined (fewer than two embeddings: a smoke-test run).
    """
    d = embeddings.shape[1]
    if embeddings.shape[0] < 2:
        return None
    eig = np.clip(np.linalg.eigvalsh(np.atleast_2d(np.cov(embeddings, rowvar=False)).reshape(d, d)), 0, None)
    return float(eig.sum() ** 2 / max(float(np.square(eig).sum()), 1e-30))


@functools.cache
def _lazy() -> SimpleNamespace:
    """Keras subclasses, defined once keras is imported."""
    keras = _keras()

    class EpochLog(keras.callbacks.Callback):
        """Log each epoch with its learning rate; checkpoint the encoder when ``val_loss`` improves."""

        def __init__(self, encoder, path, total_epochs):
            super().__init__()
            self.encoder, self.path, self.best, self.total = encoder, path, np.inf, total_epochs
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            logger.info(
                "epoch %d/%d: loss %.4f val_loss %.4f lr %.2e (%.0f s)",
                epoch + 1,
                self.total,
                logs.get("loss", np.nan),
                logs.get("val_loss", np.nan),
                lr,
                time.perf_counter() - self.started,
            )
            if self.path is not None and logs.get("val_loss", np.inf) < self.best:
                self.best = logs["val_loss"]
                replace_atomically(Path(self.path), self.encoder.save)

    return SimpleNamespace(EpochLog=EpochLog)


def build_trainer(
    encoder: keras.Model, config: EncoderConfig, views: Sequence[str], *, composition_head: bool = False
) -> keras.Model:
    """Shared-weight wrapper: one input per view (+ ``{view}_dem``), output ``(B, V, D)`` stacked embeddings.

    With ``composition_head`` the output is a dict: ``views`` as above, and ``fractions``, a
    linear map of the anchor's embedding to ``n_classes`` values (the auxiliary composition task).
    """
    keras = _keras()
    p, d = config.patch_px, config.embed_dim
    inputs, rows = {}, []
    for view in views:
        inputs[view] = keras.Input((p, p), dtype="uint8", name=view)
        feed = {"classes": inputs[view]}
        if config.use_dem:
            feed["dem"] = inputs[view + "_dem"] = keras.Input((p, p), dtype="float32", name=view + "_dem")
        rows.append(keras.layers.Reshape((1, d), name=view + "_row")(encoder(feed)))
    out = keras.layers.Concatenate(axis=1, name="views")(rows)
    if composition_head:
        anchor = keras.layers.Reshape((d,), name="anchor_embedding")(rows[0])
        out = {"views": out, "fractions": keras.layers.Dense(config.n_classes, name="composition_head")(anchor)}
    return keras.Model(inputs, out, name="vectorgeo_trainer")


def _loss(params: TrainingParams, n_classes: int) -> dict:
    """``compile`` arguments: the objective, plus the weighted composition error when that task is on."""
    from vectorgeo.losses import loss_classes

    classes = loss_classes()
    if params.objective == "triplet":
        main = classes.TripletSemiHardLoss(margin=params.margin)
    else:
        main = classes.InfoNCELoss(params.temperature, params.view_weights, params.vicreg_weight)
    if params.composition_weight <= 0:
        return {"loss": main}
    # keras's mse averages over the C outputs; times C it is the squared L2 error of the fractions
    return {
        "loss": {"views": main, "fractions": "mse"},
        "loss_weights": {"views": 1.0, "fractions": params.composition_weight * n_classes},
    }


def _schedule(params: TrainingParams, steps_per_epoch: int):
    keras = _keras()
    total = max(1, params.epochs * steps_per_epoch)
    warmup = min(round(params.warmup_epochs * steps_per_epoch), total // 5)  # short runs (tuning) warm up briefly
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=params.learning_rate / 100 if warmup else params.learning_rate,
        decay_steps=total - warmup,
        alpha=0.01,
        warmup_target=params.learning_rate if warmup else None,
        warmup_steps=warmup,
    )


def view_diagnostics(encoder: keras.Model, pairs: dict, config: EncoderConfig, params: TrainingParams) -> dict:
    """How the embedding separates a patch's positives from other patches, on pairs never trained on.

    Returns:
        JSON-ready: ``mean_d_view`` (squared distance between two views of a patch),
        ``mean_d_neighbor`` (patch to its spatial neighbour), ``mean_d_other`` (to other
        patches), ``active_triplet_fraction`` (share of semi-hard triplets with non-zero loss at
        ``params.margin``), ``embedding_std`` per dimension, ``n_inactive_dims`` (std < 0.01),
        ``effective_dims`` (participation ratio, 1..D) and ``collapsed`` (``effective_dims < 2``).
    """
    from vectorgeo.losses import semihard_terms

    ops = _keras().ops
    n = len(pairs["anchor"])
    take = np.arange(n)
    views = make_views(pairs, take, ("anchor", "anchor_view", "neighbor"), None, config.use_dem)
    emb = {v: embed(encoder, views[v], views.get(v + "_dem")) for v in ("anchor", "anchor_view", "neighbor")}
    a = emb["anchor"]
    d_other = 2.0 - 2.0 * (a[: n // 2] @ a[n - n // 2 :].T).mean() if n > 1 else float("nan")
    active = []
    for s in range(0, n, params.batch_size):
        t = semihard_terms(
            ops, np.stack([a[s : s + params.batch_size], emb["neighbor"][s : s + params.batch_size]], 1), params.margin
        )
        active.append(ops.convert_to_numpy(t["loss"]) > 0)
    effective, std = participation_ratio(a), a.std(axis=0)
    return {
        "mean_d_view": float(np.square(a - emb["anchor_view"]).sum(axis=1).mean()),
        "mean_d_neighbor": float(np.square(a - emb["neighbor"]).sum(axis=1).mean()),
        "mean_d_other": float(d_other),
        "active_triplet_fraction": float(np.concatenate(active).mean()),
        "embedding_std": [float(s) for s in std],
        "n_inactive_dims": int((std < 0.01).sum()),
        "effective_dims": effective,
        "collapsed": None if effective is None else bool(effective < 2.0),
    }


def _check_arrays(name: str, arrays: dict, config: EncoderConfig, params: TrainingParams) -> dict:
    needed = {view_source(v) for v in params.views} | {"anchor", "neighbor"}
    needed |= {k + "_dem" for k in needed} if config.use_dem else set()
    missing = sorted(needed - set(arrays))
    if missing:
        raise InvalidInputError(f"{name} arrays lack {missing}; got keys {sorted(arrays)}")
    shape = np.shape(arrays["anchor"])
    if len(shape) != 3 or shape[1:] != (config.patch_px, config.patch_px):
        raise InvalidInputError(
            f"{name}['anchor'] must be (N, {config.patch_px}, {config.patch_px}) to match patch_px, got {shape}"
        )
    n = shape[0]
    if n == 0 or any(len(arrays[k]) != n for k in needed):
        raise InvalidInputError(
            f"{name} arrays must be non-empty and equally long, got {[len(arrays[k]) for k in needed]}"
        )
    return {k: np.asarray(arrays[k]) for k in needed}


def train_encoder(
    train: dict[str, np.ndarray],
    val: dict[str, np.ndarray],
    config: EncoderConfig,
    params: TrainingParams = TrainingParams(),
    *,
    checkpoint_path: str | Path | None = None,
) -> tuple[keras.Model, dict]:
    """Train an encoder with the chosen objective, augmentation, a warm-up/cosine schedule and early stopping.

    Args:
        train: ``anchor``, ``neighbor`` uint8 ``(N, P, P)`` class indices (+ ``anchor_dem``,
            ``neighbor_dem`` float32/float16 metres when ``config.use_dem``).
        val: Pairs never trained on, same keys; fixed transforms, so ``val_loss`` is comparable
            across epochs.
        config: Encoder architecture; set its DEM normalisation with :func:`dem_stats` first.
        params: Objective and optimisation settings.
        checkpoint_path: Where to save the best encoder (``.keras``) as training goes, if given.

    Returns:
        ``(encoder, history)``; the encoder holds the best epoch's weights. ``history`` is
        JSON-ready: per-epoch ``loss``/``val_loss``, ``best_epoch`` (1-based), ``best_val_loss``,
        ``epochs_run``, ``seconds`` (fit wall time, validation included), ``train_pairs_per_s``,
        ``params``, and ``diagnostics`` of :func:`view_diagnostics` on ``val`` at initialisation
        (``diagnostics_init``) and after training (``diagnostics``).
    """
    keras, lz = _keras(), _lazy()
    if config.use_dem and (config.dem_mean_m, config.dem_std_m) == (0.0, 1.0):
        logger.warning("use_dem with identity DEM normalisation (mean 0 m, std 1 m); compute it with dem_stats()")
    train, val = _check_arrays("train", train, config, params), _check_arrays("val", val, config, params)
    keras.utils.set_random_seed(params.seed)
    encoder = build_encoder(config)
    diag_val = {k: v[:2048] for k, v in val.items()}
    diagnostics_init = view_diagnostics(encoder, diag_val, config, params)
    head = params.composition_weight > 0
    trainer = build_trainer(encoder, config, params.views, composition_head=head)
    n_classes = config.n_classes if head else 0
    train_ds = view_batches(
        train,
        params.batch_size,
        params.views,
        augment=True,
        seed=params.seed,
        use_dem=config.use_dem,
        n_classes=n_classes,
    )
    val_ds = view_batches(
        val, params.batch_size, params.views, augment=False, use_dem=config.use_dem, n_classes=n_classes
    )
    optimizer = keras.optimizers.AdamW(learning_rate=_schedule(params, len(train_ds)), weight_decay=params.weight_decay)
    trainer.compile(optimizer=optimizer, jit_compile=False, **_loss(params, config.n_classes))
    stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=params.patience, restore_best_weights=True)
    path = None if checkpoint_path is None else str(checkpoint_path)
    start = time.perf_counter()
    fit = trainer.fit(
        train_ds,
        validation_data=val_ds,
        epochs=params.epochs,
        callbacks=[stopper, lz.EpochLog(encoder, path, params.epochs)],
        verbose=0,
    )
    seconds = time.perf_counter() - start
    loss, val_loss = [float(v) for v in fit.history["loss"]], [float(v) for v in fit.history["val_loss"]]
    n_trained = min(len(train["anchor"]), len(train_ds) * params.batch_size)  # a last partial batch is dropped
    history = {
        "loss": loss,
        "val_loss": val_loss,
        "best_epoch": int(np.argmin(val_loss)) + 1,
        "best_val_loss": float(min(val_loss)),
        "epochs_run": len(loss),
        "stopped_early": len(loss) < params.epochs,
        "seconds": seconds,
        "train_pairs_per_s": n_trained * len(loss) / seconds,
        "n_train": len(train["anchor"]),
        "n_val": len(val["anchor"]),
        "params": params.to_dict(),
        "diagnostics_init": diagnostics_init,
        "diagnostics": view_diagnostics(encoder, diag_val, config, params),
    }
    logger.info(
        "trained %d epochs in %.1f s (%.0f pairs/s); best epoch %d, val_loss %.4f",
        *(history[k] for k in ("epochs_run", "seconds", "train_pairs_per_s", "best_epoch", "best_val_loss")),
    )
    return encoder, history
