"""Keras 3 patch encoder, semi-hard triplet loss, training, and model files.

The encoder maps a uint8 ``(P, P)`` class-index patch (plus, optionally, a
float32 DEM patch in metres) to an L2-normalised float32 embedding. One-hot
encoding and DEM normalisation happen inside the model, so callers feed raw
class indices (one byte per pixel) and raw metres. The model and loss use only
``keras`` and ``keras.ops``: a ``.keras`` file saved under TensorFlow loads and
runs under ``KERAS_BACKEND=jax`` or ``torch``.

Keras is imported lazily (inside functions, and for :class:`PairBatches`
through the module ``__getattr__``), so ``import vectorgeo.model`` never loads
TensorFlow. Call :func:`load_model`, or touch any model function, before
``keras.saving.load_model`` so the custom layers are registered.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import tempfile
import time
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np

from vectorgeo.errors import InvalidInputError, NotFoundError
from vectorgeo.legends import NODATA_INDEX, Legend

if TYPE_CHECKING:
    import keras

__all__ = [
    "EncoderConfig",
    "PairBatches",  # noqa: F822 - created on first access by the module __getattr__ (needs keras)
    "build_encoder",
    "build_siamese",
    "check_compatible",
    "dem_stats",
    "diagnostics_figure",
    "dihedral",
    "embed",
    "load_model",
    "save_model",
    "train_encoder",
    "triplet_semihard_loss",
]

logger = logging.getLogger(__name__)

_BIG = 1e6  # stands in for +/- infinity in masked min/max (squared distances of unit vectors are <= 4)
_SE_RATIO = 4  # squeeze-and-excitation bottleneck: channels // 4


@dataclass
class EncoderConfig:
    """Architecture and input description of a patch encoder.

    Attributes:
        n_classes: Legend classes (one-hot depth); class index 255 is nodata.
        patch_px: Patch side, pixels.
        embed_dim: Embedding length.
        num_filters: Width of the stem; residual block ``i`` has ``num_filters * 2**i``.
        n_conv_blocks: Residual blocks, each halving the spatial size.
        use_se: Add squeeze-and-excitation to each block.
        use_dem: Take a second input, a DEM patch in metres.
        dem_mean_m: DEM mean used for normalisation, metres.
        dem_std_m: DEM standard deviation used for normalisation, metres.
    """

    n_classes: int
    patch_px: int
    embed_dim: int = 16
    num_filters: int = 32
    n_conv_blocks: int = 3
    use_se: bool = True
    use_dem: bool = False
    dem_mean_m: float = 0.0
    dem_std_m: float = 1.0

    def __post_init__(self) -> None:
        if not 1 <= self.n_classes < NODATA_INDEX:
            raise InvalidInputError(f"n_classes must lie in 1..{NODATA_INDEX - 1}, got {self.n_classes}")
        if self.patch_px < 2 ** (self.n_conv_blocks + 1):
            raise InvalidInputError(
                f"patch_px={self.patch_px} is too small for a stride-2 stem and {self.n_conv_blocks} downsampling "
                f"blocks; use patch_px >= {2 ** (self.n_conv_blocks + 1)} or fewer blocks"
            )
        for name in ("embed_dim", "num_filters", "n_conv_blocks"):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (np.isfinite(self.dem_std_m) and self.dem_std_m > 0 and np.isfinite(self.dem_mean_m)):
            raise InvalidInputError(
                f"DEM normalisation must be finite with std > 0, got mean {self.dem_mean_m}, std {self.dem_std_m}; "
                "compute it with dem_stats()"
            )

    def to_dict(self) -> dict:
        """JSON-ready dict of every field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> EncoderConfig:
        """Inverse of :meth:`to_dict`; unknown keys are ignored (newer sidecars).

        Raises:
            InvalidInputError: when a required field is missing or a value is invalid.
        """
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in dict(data).items() if k in known})
        except TypeError as exc:
            raise InvalidInputError(f"encoder config {data!r} is malformed: {exc}") from exc


def _keras():
    import keras

    return keras


@functools.cache
def _lazy() -> SimpleNamespace:
    """Define (once) the classes that subclass Keras types, and register them."""
    keras = _keras()
    ops = keras.ops
    register = keras.saving.register_keras_serializable(package="vectorgeo")

    @register
    class OneHot(keras.layers.Layer):
        """uint8 ``(B, P, P)`` class indices -> float32 ``(B, P, P, n_classes)``; 255 (nodata) -> zeros."""

        def __init__(self, n_classes: int, **kwargs):
            super().__init__(**kwargs)
            self.n_classes = int(n_classes)

        def call(self, x):
            x = ops.cast(x, "int32")
            x = ops.where(x < self.n_classes, x, -1)  # out of range -> all-zero row on every backend
            return ops.one_hot(x, self.n_classes, dtype=self.compute_dtype)

        def compute_output_shape(self, input_shape):
            return (*input_shape, self.n_classes)

        def get_config(self):
            return {**super().get_config(), "n_classes": self.n_classes}

    @register
    class NormalizeDem(keras.layers.Layer):
        """float ``(B, P, P)`` metres -> float32 ``(B, P, P, 1)`` ``(x - mean_m) / std_m``; NaN -> 0 (the mean)."""

        def __init__(self, mean_m: float, std_m: float, **kwargs):
            super().__init__(**kwargs)
            self.mean_m, self.std_m = float(mean_m), float(std_m)

        def call(self, x):
            x = (ops.cast(x, self.compute_dtype) - self.mean_m) / self.std_m
            return ops.expand_dims(ops.where(ops.isnan(x), 0.0, x), -1)

        def compute_output_shape(self, input_shape):
            return (*input_shape, 1)

        def get_config(self):
            return {**super().get_config(), "mean_m": self.mean_m, "std_m": self.std_m}

    @register
    class TripletSemiHardLoss(keras.losses.Loss):
        """Semi-hard triplet loss on stacked ``(B, 2, D)`` anchor/positive embeddings; see triplet_semihard_loss."""

        def __init__(self, margin: float = 0.2, name: str = "triplet_semihard", **kwargs):
            super().__init__(name=name, **kwargs)
            self.margin = float(margin)

        def call(self, y_true, y_pred):
            return _semihard_terms(ops, y_pred, self.margin)["loss"]

        def get_config(self):
            return {**super().get_config(), "margin": self.margin}

    class PairBatches(keras.utils.PyDataset):
        """Shuffled, dihedrally augmented batches of anchor/neighbour pairs for ``fit``.

        Yields ``(inputs, y)``: ``inputs`` maps ``anchor``/``neighbor`` to uint8 ``(B, P, P)`` (and
        ``anchor_dem``/``neighbor_dem`` to float32 metres with ``use_dem``); ``y`` is a dummy zeros
        ``(B,)``. Anchor and neighbour get independent transforms; a patch's classes and DEM share one.
        Batch ``i`` of epoch ``e`` draws from ``np.random.default_rng([seed, e, i])``, so batches are
        reproducible in any order.

        Args:
            arrays: ``anchor``, ``neighbor`` (+ ``anchor_dem``, ``neighbor_dem``) arrays, same length N.
            batch_size: Pairs per batch; the last batch may be smaller.
            augment: Random dihedral transforms and reshuffling each epoch; False for validation
                (fixed order, no transforms, so val loss is comparable across epochs).
            seed: Seed of the shuffles and transforms.
            use_dem: Yield the DEM arrays too.
            **kwargs: ``workers``/``use_multiprocessing``/``max_queue_size`` for PyDataset.
        """

        def __init__(self, arrays, batch_size, *, augment=True, seed=0, use_dem=False, **kwargs):
            super().__init__(**kwargs)
            self.keys = ["anchor", "neighbor"] + (["anchor_dem", "neighbor_dem"] if use_dem else [])
            missing = [k for k in self.keys if k not in arrays]
            if missing:
                raise InvalidInputError(f"training arrays lack {missing}; got keys {sorted(arrays)}")
            self.arrays = {k: np.asarray(arrays[k]) for k in self.keys}
            self.n = len(self.arrays["anchor"])
            if self.n == 0 or any(len(v) != self.n for v in self.arrays.values()):
                raise InvalidInputError(
                    f"training arrays must be non-empty and equally long, got {[len(v) for v in self.arrays.values()]}"
                )
            self.batch_size, self.augment, self.seed, self.epoch = int(batch_size), augment, seed, 0
            self._order = self._permutation()

        def _permutation(self):
            if not self.augment:
                return np.arange(self.n)
            return np.random.default_rng([self.seed, self.epoch]).permutation(self.n)

        def __len__(self):
            return -(-self.n // self.batch_size)

        def __getitem__(self, idx):
            take = np.sort(self._order[idx * self.batch_size : (idx + 1) * self.batch_size])
            out = {k: v[take] for k, v in self.arrays.items()}
            if self.augment:
                rng = np.random.default_rng([self.seed, self.epoch, idx])
                ks = {"anchor": rng.integers(0, 8, take.size), "neighbor": rng.integers(0, 8, take.size)}
                out = {k: dihedral(v, ks[k.removesuffix("_dem")]) for k, v in out.items()}
            for k in self.keys[2:]:
                out[k] = out[k].astype(np.float32, copy=False)
            return out, np.zeros(take.size, dtype=np.float32)

        def on_epoch_end(self):
            self.epoch += 1
            self._order = self._permutation()

    class BestEncoder(keras.callbacks.Callback):
        """Log each epoch; save the encoder whenever ``val_loss`` improves (when a path is given)."""

        def __init__(self, encoder, path):
            super().__init__()
            self.encoder, self.path, self.best = encoder, path, np.inf

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            logger.info("epoch %d: loss %.4f val_loss %.4f", epoch + 1, logs.get("loss", np.nan), logs["val_loss"])
            if self.path is not None and logs["val_loss"] < self.best:
                self.best = logs["val_loss"]
                _replace_atomically(Path(self.path), self.encoder.save)

    return SimpleNamespace(
        OneHot=OneHot,
        NormalizeDem=NormalizeDem,
        TripletSemiHardLoss=TripletSemiHardLoss,
        PairBatches=PairBatches,
        BestEncoder=BestEncoder,
    )


def __getattr__(name: str):
    # PEP 562: PairBatches subclasses keras.utils.PyDataset, so it exists only once keras is imported.
    if name == "PairBatches":
        return _lazy().PairBatches
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_encoder(config: EncoderConfig) -> keras.Model:
    """Build the ResNet-style patch encoder.

    Inputs (a dict): ``classes`` uint8 ``(N, P, P)`` class indices and, with ``use_dem``, ``dem``
    float32 ``(N, P, P)`` metres (NaN allowed: it becomes the mean). Output: float32
    ``(N, embed_dim)``, unit L2 norm. Layout: 3x3 stride-2 stem conv (its overlapping windows
    still see every pair of adjacent pixels; stride 1 trains 2.5x slower on CPU), then
    ``n_conv_blocks`` residual blocks (conv-BN-ReLU-conv-BN, optional squeeze-and-excitation,
    1x1 projection shortcut, stride 2, width doubling), global average pooling, Dense, L2
    normalisation.
    """
    keras, lz = _keras(), _lazy()
    layers = keras.layers
    p = config.patch_px
    inputs = {"classes": keras.Input((p, p), dtype="uint8", name="classes")}
    x = lz.OneHot(config.n_classes, name="one_hot")(inputs["classes"])
    if config.use_dem:
        inputs["dem"] = keras.Input((p, p), dtype="float32", name="dem")
        dem = lz.NormalizeDem(config.dem_mean_m, config.dem_std_m, name="dem_norm")(inputs["dem"])
        x = layers.Concatenate(name="channels")([x, dem])
    x = layers.Conv2D(config.num_filters, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = layers.ReLU(name="stem_relu")(layers.BatchNormalization(name="stem_bn")(x))
    for i in range(config.n_conv_blocks):
        f, b = config.num_filters * 2**i, f"block{i + 1}_"
        shortcut = layers.Conv2D(f, 1, strides=2, use_bias=False, name=b + "proj")(x)
        shortcut = layers.BatchNormalization(name=b + "proj_bn")(shortcut)
        y = layers.Conv2D(f, 3, strides=2, padding="same", use_bias=False, name=b + "conv1")(x)
        y = layers.ReLU(name=b + "relu1")(layers.BatchNormalization(name=b + "bn1")(y))
        y = layers.Conv2D(f, 3, padding="same", use_bias=False, name=b + "conv2")(y)
        y = layers.BatchNormalization(name=b + "bn2")(y)
        if config.use_se:
            s = layers.GlobalAveragePooling2D(keepdims=True, name=b + "se_squeeze")(y)
            s = layers.Dense(max(f // _SE_RATIO, 4), activation="relu", name=b + "se_reduce")(s)
            s = layers.Dense(f, activation="sigmoid", name=b + "se_expand")(s)
            y = layers.Multiply(name=b + "se_scale")([y, s])
        x = layers.ReLU(name=b + "out")(layers.Add(name=b + "add")([shortcut, y]))
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dense(config.embed_dim, name="embedding")(x)
    out = layers.UnitNormalization(name="l2_normalize")(x)
    model = keras.Model(inputs, out, name="vectorgeo_encoder")
    model.vg_config = config
    return model


def build_siamese(encoder: keras.Model, config: EncoderConfig) -> keras.Model:
    """Wrap the encoder for training: shared weights over anchor and neighbour.

    Inputs (a dict): ``anchor``, ``neighbor`` uint8 ``(B, P, P)`` (+ ``anchor_dem``,
    ``neighbor_dem`` float32 metres with ``use_dem``). Output: float32 ``(B, 2, D)``,
    ``[:, 0]`` anchor and ``[:, 1]`` neighbour embeddings, for :func:`triplet_semihard_loss`.
    """
    keras = _keras()
    p, d = config.patch_px, config.embed_dim
    inputs, embeddings = {}, []
    for side in ("anchor", "neighbor"):
        inputs[side] = keras.Input((p, p), dtype="uint8", name=side)
        feed = {"classes": inputs[side]}
        if config.use_dem:
            feed["dem"] = inputs[side + "_dem"] = keras.Input((p, p), dtype="float32", name=side + "_dem")
        embeddings.append(keras.layers.Reshape((1, d), name=side + "_row")(encoder(feed)))
    out = keras.layers.Concatenate(axis=1, name="pair")(embeddings)
    return keras.Model(inputs, out, name="vectorgeo_siamese")


def _semihard_terms(ops, pairs, margin: float) -> dict:
    """Per-anchor semi-hard triplet terms of a ``(B, 2, D)`` batch, in any backend's ops (or numpy via keras.ops)."""
    a, p = pairs[:, 0, :], pairs[:, 1, :]
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


def triplet_semihard_loss(margin: float = 0.2) -> keras.losses.Loss:
    """Semi-hard triplet loss over in-batch negatives (FaceNet / TF-Addons convention).

    ``y_pred`` is ``(B, 2, D)`` (anchor, positive) as from :func:`build_siamese`; ``y_true`` is
    ignored. For anchor ``i`` the candidate negatives are every other sample's positive and
    anchor (``2B - 2`` of them). Distances are squared Euclidean (``2 - 2 cos`` on unit vectors,
    range 0..4). The negative is the nearest one farther than the positive (semi-hard); if no
    candidate is farther, the farthest candidate is used, as in TF-Addons, which gives the
    gentlest gradient instead of collapsing the embedding on hard negatives early on. The loss is
    the mean over anchors of ``relu(d_ap - d_an + margin)``; a batch of one contributes zero.
    """
    return _lazy().TripletSemiHardLoss(margin=margin)


def dihedral(batch: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Apply one of the 8 square symmetries per sample.

    Args:
        batch: ``(N, P, P, ...)`` patches, any dtype; axes 1 and 2 are rows and columns.
        k: int ``(N,)`` in 0..7: ``k % 4`` counter-clockwise quarter turns, applied after a
            left-right flip when ``k >= 4``. Reflections (4..7) are their own inverse; the
            inverse of a rotation ``k < 4`` is ``(4 - k) % 4``.

    Returns:
        New array, same shape and dtype. Vectorised: one numpy call per distinct ``k``.
    """
    k = np.asarray(k)
    if k.shape != batch.shape[:1] or (k.size and (k.min() < 0 or k.max() > 7)):
        raise InvalidInputError(f"k must be (N,) = {batch.shape[:1]} in 0..7, got shape {k.shape}")
    out = np.empty_like(batch)
    for t in np.unique(k):
        sel = k == t
        part = batch[sel][:, :, ::-1] if t >= 4 else batch[sel]
        out[sel] = np.rot90(part, int(t) % 4, axes=(1, 2))
    return out


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


def _participation_ratio(embeddings: np.ndarray) -> float | None:
    """Effective number of used dimensions, ``(sum l)^2 / sum l^2`` over covariance eigenvalues: 1 (collapsed) .. D.

    None when undefined (fewer than two embeddings: a smoke-test run).
    """
    d = embeddings.shape[1]
    if embeddings.shape[0] < 2:
        return None
    eig = np.clip(np.linalg.eigvalsh(np.atleast_2d(np.cov(embeddings, rowvar=False)).reshape(d, d)), 0, None)
    return float(eig.sum() ** 2 / max(float(np.square(eig).sum()), 1e-30))


def _held_out_diagnostics(encoder, val: dict, config: EncoderConfig, batch_size: int, margin: float) -> dict:
    ops = _keras().ops
    dem = (val["anchor_dem"], val["neighbor_dem"]) if config.use_dem else (None, None)
    ea, en = embed(encoder, val["anchor"], dem[0]), embed(encoder, val["neighbor"], dem[1])
    terms: dict[str, list] = {"loss": [], "d_ap": [], "d_an_mean": []}
    for s in range(0, len(ea), batch_size):  # same in-batch negatives as the validation loss
        t = _semihard_terms(ops, np.stack([ea[s : s + batch_size], en[s : s + batch_size]], axis=1), margin)
        for key in terms:
            terms[key].append(ops.convert_to_numpy(t[key]))
    loss, d_ap, d_an = (np.concatenate(terms[k]) for k in ("loss", "d_ap", "d_an_mean"))
    effective, std = _participation_ratio(ea), ea.std(axis=0)
    return {
        "val_loss": float(loss.mean()),
        "mean_d_anchor_positive": float(d_ap.mean()),
        "mean_d_anchor_negative": float(d_an.mean()),
        "active_triplet_fraction": float((loss > 0).mean()),
        "embedding_std": [float(s) for s in std],
        "n_inactive_dims": int((std < 0.01).sum()),
        "effective_dims": effective,
        "collapsed": None if effective is None else bool(effective < 2.0),
    }


def train_encoder(
    train: dict[str, np.ndarray],
    val: dict[str, np.ndarray],
    config: EncoderConfig,
    *,
    epochs: int = 10,
    batch_size: int = 128,
    margin: float = 0.2,
    learning_rate: float = 1e-3,
    patience: int = 3,
    seed: int = 0,
    checkpoint_path: str | Path | None = None,
) -> tuple[keras.Model, dict]:
    """Train an encoder with semi-hard triplet loss, augmentation and early stopping.

    Args:
        train: ``anchor``, ``neighbor`` uint8 ``(N, P, P)`` class indices (+ ``anchor_dem``,
            ``neighbor_dem`` float32/float16 metres when ``config.use_dem``).
        val: Held-out pairs, same keys; never augmented.
        config: Encoder architecture; set its DEM normalisation with :func:`dem_stats` first.
        epochs: Most epochs to run.
        batch_size: Pairs per batch (also the pool of in-batch negatives).
        margin: Triplet margin, squared-distance units (0..4).
        learning_rate: Adam learning rate.
        patience: Epochs without ``val_loss`` improvement before stopping; the best weights are restored.
        seed: Seeds Keras, the shuffles and the augmentation.
        checkpoint_path: Where to save the best encoder (``.keras``) as training goes, if given.

    Returns:
        ``(encoder, history)``; the encoder holds the best epoch's weights. ``history`` is
        JSON-ready: per-epoch ``loss``/``val_loss``, ``best_epoch`` (1-based), ``best_val_loss``,
        ``epochs_run``, ``seconds`` (fit wall time, validation included), ``train_pairs_per_s``
        (one pair = two patches through the encoder, forward and backward), ``params``, and
        held-out ``diagnostics``: ``val_loss``, ``mean_d_anchor_positive``,
        ``mean_d_anchor_negative`` (over all in-batch negatives), ``active_triplet_fraction``
        (non-zero loss), ``embedding_std`` per dimension, ``n_inactive_dims`` (std < 0.01),
        ``effective_dims`` (participation ratio of the covariance eigenvalues, 1..D) and
        ``collapsed`` (``effective_dims < 2``).
    """
    keras, lz = _keras(), _lazy()
    if config.use_dem and (config.dem_mean_m, config.dem_std_m) == (0.0, 1.0):
        logger.warning("use_dem with identity DEM normalisation (mean 0 m, std 1 m); compute it with dem_stats()")
    for name, arrays in (("train", train), ("val", val)):
        shape = np.shape(arrays.get("anchor"))
        if len(shape) != 3 or shape[1:] != (config.patch_px, config.patch_px):
            raise InvalidInputError(
                f"{name}['anchor'] must be (N, {config.patch_px}, {config.patch_px}) to match patch_px, got {shape}"
            )
    keras.utils.set_random_seed(seed)
    encoder = build_encoder(config)
    siamese = build_siamese(encoder, config)
    siamese.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=triplet_semihard_loss(margin))
    train_ds = lz.PairBatches(train, batch_size, augment=True, seed=seed, use_dem=config.use_dem)
    val_ds = lz.PairBatches(val, batch_size, augment=False, use_dem=config.use_dem)
    stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
    path = None if checkpoint_path is None else str(checkpoint_path)
    start = time.perf_counter()
    fit = siamese.fit(
        train_ds, validation_data=val_ds, epochs=epochs, callbacks=[stopper, lz.BestEncoder(encoder, path)], verbose=0
    )
    seconds = time.perf_counter() - start
    loss, val_loss = [float(v) for v in fit.history["loss"]], [float(v) for v in fit.history["val_loss"]]
    history = {
        "loss": loss,
        "val_loss": val_loss,
        "best_epoch": int(np.argmin(val_loss)) + 1,
        "best_val_loss": float(min(val_loss)),
        "epochs_run": len(loss),
        "stopped_early": len(loss) < epochs,
        "seconds": seconds,
        "train_pairs_per_s": len(train_ds.arrays["anchor"]) * len(loss) / seconds,
        "n_train": len(train_ds.arrays["anchor"]),
        "n_val": len(val_ds.arrays["anchor"]),
        "params": {
            "epochs": epochs,
            "batch_size": batch_size,
            "margin": margin,
            "learning_rate": learning_rate,
            "patience": patience,
            "seed": seed,
        },
        "diagnostics": _held_out_diagnostics(encoder, val, config, batch_size, margin),
    }
    logger.info(
        "trained %d epochs in %.1f s (%.0f pairs/s); best epoch %d, val_loss %.4f",
        *(history[k] for k in ("epochs_run", "seconds", "train_pairs_per_s", "best_epoch", "best_val_loss")),
    )
    return encoder, history


def embed(
    encoder: keras.Model, classes: np.ndarray, dem: np.ndarray | None = None, *, batch_size: int = 512
) -> np.ndarray:
    """Embed patches in batches.

    Uses ``predict_on_batch`` (one compiled call per batch, no ``predict`` per-call set-up); the
    last batch is padded to full size so JAX compiles one shape only.

    Args:
        encoder: From :func:`build_encoder` / :func:`load_model`.
        classes: uint8 ``(N, P, P)`` class indices (other integer dtypes are narrowed).
        dem: float ``(N, P, P)`` metres; required when the encoder has a DEM input.
        batch_size: Patches per call.

    Returns:
        float32 ``(N, D)`` unit vectors.
    """
    p = encoder.inputs[0].shape[1]
    classes = np.asarray(classes)
    if classes.ndim != 3 or classes.shape[1:] != (p, p) or not np.issubdtype(classes.dtype, np.integer):
        raise InvalidInputError(
            f"classes must be integer (N, {p}, {p}) class indices, got {classes.dtype} {classes.shape}"
        )
    feeds = {"classes": classes.astype(np.uint8, copy=False)}
    if len(encoder.inputs) > 1:
        if dem is None or np.shape(dem) != classes.shape:
            raise InvalidInputError(f"this encoder takes a DEM: pass dem as float (N, {p}, {p}) metres")
        feeds["dem"] = np.asarray(dem, dtype=np.float32)
    n, d = classes.shape[0], encoder.outputs[0].shape[-1]
    out = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, batch_size):
        chunk = {k: v[s : s + batch_size] for k, v in feeds.items()}
        m = len(chunk["classes"])
        if n > batch_size and m < batch_size:
            chunk = {
                k: np.concatenate([v, np.zeros((batch_size - m, *v.shape[1:]), v.dtype)]) for k, v in chunk.items()
            }
        out[s : s + m] = np.asarray(encoder.predict_on_batch(chunk))[:m]
    return out


def _model_paths(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    model = path if path.suffix == ".keras" else path.with_name(path.name + ".keras")
    return model, model.with_suffix(".json")


def _json_default(value: Any):
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"sidecar value {value!r} of type {type(value).__name__} is not JSON-serialisable")


def _replace_atomically(target: Path, write) -> None:
    """Call ``write(tmp)`` on a temporary beside ``target``, then move it into place (never a half file)."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.", suffix=target.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


def save_model(encoder: keras.Model, path: str | Path, sidecar: dict) -> tuple[Path, Path]:
    """Write ``{name}.keras`` and its ``{name}.json`` sidecar, each atomically.

    Args:
        encoder: From :func:`build_encoder` or :func:`train_encoder`.
        path: ``models/{name}.keras`` (the suffix is added when missing).
        sidecar: What the caller knows: at least ``legend`` (:meth:`Legend.to_dict`) and
            ``pixel_size_m``; usually training parameters and metrics too. This function adds
            ``encoder_config``, ``patch_px``, ``embed_dim``, ``channels``, ``dem_normalisation``,
            ``keras_version`` and ``keras_backend``.

    Returns:
        ``(model_path, sidecar_path)``. Each file is written to a temporary in the same
        directory and moved into place with ``os.replace``; the sidecar lands last.

    Raises:
        InvalidInputError: missing sidecar keys, or a legend whose class count differs from the encoder's.
    """
    keras = _keras()
    config: EncoderConfig | None = getattr(encoder, "vg_config", None)
    if config is None:
        raise InvalidInputError("encoder has no vg_config; build it with build_encoder() or load it with load_model()")
    missing = {"legend", "pixel_size_m"} - set(sidecar)
    if missing:
        raise InvalidInputError(f"sidecar lacks {sorted(missing)}; pass the legend dict and the raster's pixel size")
    n_legend = len(Legend.from_dict(sidecar["legend"]).codes)
    if n_legend != config.n_classes:
        raise InvalidInputError(f"legend has {n_legend} classes but the encoder one-hot encodes {config.n_classes}")
    meta = {
        **sidecar,
        "encoder_config": config.to_dict(),
        "patch_px": config.patch_px,
        "embed_dim": config.embed_dim,
        "channels": ["classes", "dem"] if config.use_dem else ["classes"],
        "dem_normalisation": {"mean_m": config.dem_mean_m, "std_m": config.dem_std_m} if config.use_dem else None,
        "keras_version": keras.__version__,
        "keras_backend": keras.backend.backend(),
    }
    text = json.dumps(meta, indent=2, default=_json_default)
    model_path, json_path = _model_paths(path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    _replace_atomically(model_path, encoder.save)
    _replace_atomically(json_path, lambda tmp: Path(tmp).write_text(text))
    logger.info("saved %s and %s", model_path, json_path)
    return model_path, json_path


def load_model(path: str | Path) -> tuple[keras.Model, dict]:
    """Load an encoder and its sidecar under whatever Keras backend is active.

    Args:
        path: ``{name}.keras`` (or ``{name}``); the sidecar ``{name}.json`` must sit beside it.

    Returns:
        ``(encoder, sidecar)``; ``encoder.vg_config`` is the sidecar's :class:`EncoderConfig`.

    Raises:
        NotFoundError: no model file.
        InvalidInputError: sidecar missing or malformed, or a corrupt model file.
    """
    model_path, json_path = _model_paths(path)
    if not model_path.is_file():
        raise NotFoundError(
            f"model file {str(model_path)!r} does not exist; train one (flows/02_train_flow.py) "
            "or check --model_filename and the bucket"
        )
    if not json_path.is_file():
        raise InvalidInputError(
            f"model sidecar {str(json_path)!r} is missing beside {model_path.name!r}; "
            "copy it from where the model was trained or re-save the model with vectorgeo.model.save_model()"
        )
    try:
        sidecar = json.loads(json_path.read_text())
        config = EncoderConfig.from_dict(sidecar["encoder_config"])
        Legend.from_dict(sidecar["legend"])
        int(sidecar["patch_px"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"model sidecar {str(json_path)!r} is malformed ({type(exc).__name__}: {exc}); it needs JSON with "
            "encoder_config, legend and patch_px, as written by vectorgeo.model.save_model()"
        ) from exc
    _lazy()  # register the custom layers
    try:
        encoder = _keras().saving.load_model(model_path, compile=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise InvalidInputError(
            f"model file {str(model_path)!r} is not a readable .keras archive ({exc}); re-download or retrain it"
        ) from exc
    encoder.vg_config = config
    return encoder, sidecar


def check_compatible(sidecar: dict, legend: Legend | dict, patch_px: int) -> None:
    """Check that inference is about to feed the model what it was trained on.

    Args:
        sidecar: From :func:`load_model`.
        legend: The legend of the raster about to be read.
        patch_px: The patch size about to be extracted, pixels.

    Raises:
        InvalidInputError: class codes or patch size differ; the message names both values.
    """
    model_legend = Legend.from_dict(sidecar["legend"])
    legend = legend if isinstance(legend, Legend) else Legend.from_dict(legend)
    if tuple(model_legend.codes) != tuple(legend.codes):
        raise InvalidInputError(
            f"the model was trained on legend {model_legend.name!r} (codes {list(model_legend.codes)}) but the raster "
            f"uses legend {legend.name!r} (codes {list(legend.codes)}); use a model trained on this legend"
        )
    if int(sidecar["patch_px"]) != int(patch_px):
        raise InvalidInputError(
            f"the model expects {sidecar['patch_px']} px patches but inference would extract {patch_px} px; "
            f"set the patch size to {sidecar['patch_px']} or use a model trained on {patch_px} px patches"
        )


def diagnostics_figure(
    history: dict, embeddings: np.ndarray, labels: np.ndarray, class_names: list[str], path: str | Path
) -> Path:
    """Write a three-panel PNG: loss curves, PCA of held-out embeddings, per-dimension std.

    Args:
        history: From :func:`train_encoder` (``loss``, ``val_loss``, ``best_epoch``).
        embeddings: float ``(N, D)`` held-out embeddings.
        labels: int ``(N,)`` class index per embedding (e.g. the patch's dominant class).
        class_names: Names indexed by class index.
        path: Output ``.png``.

    Returns:
        The PNG path.
    """
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    emb = np.asarray(embeddings, dtype=np.float64)
    labels = np.asarray(labels)
    fig, axes = plt.subplots(1, 3, figsize=(18, 5), constrained_layout=True, width_ratios=[1, 1.35, 1])
    ax = axes[0]
    epochs = np.arange(1, len(history["loss"]) + 1)
    ax.plot(epochs, history["loss"], "o-", label="train")
    ax.plot(epochs, history["val_loss"], "s-", label="held-out")
    if "best_epoch" in history:
        ax.axvline(history["best_epoch"], color="grey", ls="--", lw=1, label=f"best (epoch {history['best_epoch']})")
    ax.set(title="Triplet loss", xlabel="epoch", ylabel="loss")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.legend()
    ax = axes[1]
    centred = emb - emb.mean(axis=0)
    _, sing, vt = np.linalg.svd(centred, full_matrices=False)
    xy = np.zeros((len(emb), 2))
    xy[:, : min(2, len(vt))] = centred @ vt[:2].T  # a single held-out pair has one component
    share = sing[:2] ** 2 / max(float((sing**2).sum()), 1e-30)
    present, counts = np.unique(labels, return_counts=True)
    shown = present[np.argsort(-counts)][:10]  # the 10 commonest classes get colours; the rest are grey
    rest = ~np.isin(labels, shown)
    ax.scatter(xy[rest, 0], xy[rest, 1], s=6, c="lightgrey", label="other" if rest.any() else None)
    cmap = plt.get_cmap("tab10")
    for i, c in enumerate(shown):
        sel = labels == c
        ax.scatter(xy[sel, 0], xy[sel, 1], s=6, color=cmap(i), label=class_names[int(c)][:28])
    pc2 = f"PC2 ({share[1]:.0%})" if len(share) > 1 else "PC2"
    ax.set(title="Validation embeddings, PCA (colour: dominant class)", xlabel=f"PC1 ({share[0]:.0%})", ylabel=pc2)
    ax.legend(fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax = axes[2]
    std = emb.std(axis=0)
    ax.bar(np.arange(len(std)), std, color=np.where(std < 0.01, "tab:red", "tab:blue"))
    effective = _participation_ratio(emb)
    shown = "n/a" if effective is None else f"{effective:.1f}"
    title = f"Per-dimension std (red: inactive)\neffective dims {shown} of {len(std)}"
    collapsed = effective is not None and effective < 2
    ax.set(title=title + (" - COLLAPSED" if collapsed else ""), xlabel="embedding dimension", ylabel="std")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
