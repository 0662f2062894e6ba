"""Keras 3 patch encoder and its model files (``.keras`` + JSON sidecar).

The encoder maps a uint8 ``(P, P)`` class-index patch (plus, optionally, a
float32 DEM patch in metres) to an L2-normalised float32 embedding. One-hot
encoding and DEM normalisation happen inside the model, so callers feed raw
class indices (one byte per pixel) and raw metres. The model uses only
``keras`` and ``keras.ops``: a ``.keras`` file saved under TensorFlow loads and
runs under ``KERAS_BACKEND=jax`` or ``torch``. Training lives in
:mod:`vectorgeo.training`, its objectives in :mod:`vectorgeo.losses`.

Keras is imported lazily, so ``import vectorgeo.model`` never loads
TensorFlow. Call :func:`load_model`, or touch any model function, before
``keras.saving.load_model`` so the custom layers are registered.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import tempfile
import zipfile
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
    "build_encoder",
    "check_compatible",
    "embed",
    "load_model",
    "replace_atomically",
    "save_model",
]

logger = logging.getLogger(__name__)

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
    keras, lz = _keras(), _lazy()
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


def replace_atomically(target: Path, write) -> None:
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
    replace_atomically(model_path, encoder.save)
    replace_atomically(json_path, lambda tmp: Path(tmp).write_text(text))
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
