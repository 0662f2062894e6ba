"""Model files: an encoder's ``.keras`` file and its JSON sidecar, saved and loaded together.

The sidecar holds everything inference needs to reproduce the encoder's input
(legend, patch size, pixel size, channels, DEM normalisation) beside the
training record; :func:`check_compatible` compares it with what inference is
about to feed. Both files are written atomically, the sidecar last. Bucket keys
of model files are named in :mod:`vectorgeo.artifacts`.

Keras is imported lazily, inside :func:`save_model` and :func:`load_model`.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vectorgeo.encoder import EncoderConfig, register_layers
from vectorgeo.errors import InvalidInputError, NotFoundError
from vectorgeo.keras_env import import_keras
from vectorgeo.legends import Legend

if TYPE_CHECKING:
    import keras

__all__ = [
    "check_compatible",
    "load_model",
    "replace_atomically",
    "save_model",
]

logger = logging.getLogger(__name__)


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
        encoder: From :func:`~vectorgeo.encoder.build_encoder` or :func:`~vectorgeo.training.train_encoder`.
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
    keras = import_keras()
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
        ``(encoder, sidecar)``; ``encoder.vg_config`` is the sidecar's :class:`~vectorgeo.encoder.EncoderConfig`.

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
            "copy it from where the model was trained or re-save the model with vectorgeo.model_files.save_model()"
        )
    try:
        sidecar = json.loads(json_path.read_text())
        config = EncoderConfig.from_dict(sidecar["encoder_config"])
        Legend.from_dict(sidecar["legend"])
        int(sidecar["patch_px"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"model sidecar {str(json_path)!r} is malformed ({type(exc).__name__}: {exc}); it needs JSON with "
            "encoder_config, legend and patch_px, as written by vectorgeo.model_files.save_model()"
        ) from exc
    register_layers()
    try:
        encoder = import_keras().saving.load_model(model_path, compile=False)
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
