"""The Keras 3 patch encoder: its configuration, its custom layers, building it and embedding with it.

The encoder maps a uint8 ``(P, P)`` class-index patch (plus, optionally, a
float32 DEM patch in metres) to an L2-normalised float32 embedding. One-hot
encoding and DEM normalisation happen inside the model, so callers feed raw
class indices (one byte per pixel) and raw metres. The model uses only
``keras`` and ``keras.ops``: a ``.keras`` file saved under TensorFlow loads and
runs under ``KERAS_BACKEND=jax`` or ``torch``. Training lives in
:mod:`vectorgeo.training`, its objectives in :mod:`vectorgeo.losses`, the model
files (``.keras`` + JSON sidecar) in :mod:`vectorgeo.model_files`.

Keras is imported lazily, so ``import vectorgeo.encoder`` never loads
TensorFlow. Call :func:`register_layers` (or any function that builds or loads
a model) before ``keras.saving.load_model`` so the custom layers are registered.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, fields
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np

from vectorgeo.errors import InvalidInputError
from vectorgeo.legends import NODATA_INDEX

if TYPE_CHECKING:
    import keras

__all__ = [
    "ENCODER_DEFAULTS",
    "EncoderConfig",
    "build_encoder",
    "embed",
    "register_layers",
]

_SE_RATIO = 4  # squeeze-and-excitation bottleneck: channels // 4

ENCODER_DEFAULTS = {
    "embed_dim": 16,
    "num_filters": 32,
    "n_conv_blocks": 3,
    "use_se": True,
    "use_dem": False,
    "composition_skip": True,
}
"""Architecture settings flow 02 and the tuning flow pass to :class:`EncoderConfig` (the pipeline's defaults)."""


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
        composition_skip: Feed the patch's class fractions (the global mean of its one-hot
            input) to the embedding layer beside the pooled convolution features, so
            composition need not be rebuilt by the convolutions.
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
    composition_skip: bool = False
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
    from vectorgeo.keras_env import import_keras

    return import_keras()


@functools.cache
def register_layers() -> SimpleNamespace:
    """Define (once) the custom layers, which subclass Keras types, and register them for loading.

    Call it before ``keras.saving.load_model`` on an encoder file (:func:`vectorgeo.model_files.load_model` does).
    """
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

    return SimpleNamespace(OneHot=OneHot, NormalizeDem=NormalizeDem)


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
    keras, lz = _keras(), register_layers()
    layers = keras.layers
    p = config.patch_px
    inputs = {"classes": keras.Input((p, p), dtype="uint8", name="classes")}
    x = one_hot = lz.OneHot(config.n_classes, name="one_hot")(inputs["classes"])
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
    if config.composition_skip:
        fractions = layers.GlobalAveragePooling2D(name="class_fractions")(one_hot)
        x = layers.Concatenate(name="pool_and_fractions")([x, fractions])
    x = layers.Dense(config.embed_dim, name="embedding")(x)
    out = layers.UnitNormalization(name="l2_normalize")(x)
    model = keras.Model(inputs, out, name="vectorgeo_encoder")
    model.vg_config = config
    return model


def embed(
    encoder: keras.Model, classes: np.ndarray, dem: np.ndarray | None = None, *, batch_size: int = 512
) -> np.ndarray:
    """Embed patches in batches.

    Uses ``predict_on_batch`` (one compiled call per batch, no ``predict`` per-call set-up); the
    last batch is padded to full size so JAX compiles one shape only.

    Args:
        encoder: From :func:`build_encoder` / :func:`vectorgeo.model_files.load_model`.
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
