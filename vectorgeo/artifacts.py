"""The one place that names bucket keys, and reads the JSON sidecars and manifests stored under them.

The bucket layout (``{name}`` is a model's name, its file name without ``.keras``; ``{R}`` an H3
resolution), with what writes each key:

- ``rasters/synthetic-v{V}-seed{S}/landcover.tif``, ``dem.tif``: the synthetic default (:mod:`vectorgeo.sources`)
- ``stencil/res{R}.parquet``: flow 00
- ``train/{set}/part-{i:05d}.npz``, ``train/{set}/manifest.json``: flow 01
- ``tuning/{study}/journal.log``, ``tuning/{study}/validation.npz``, ``models/{name}.tuning.json``: flow 01b
- ``models/{name}.keras``, ``models/{name}.json`` (the sidecar), ``models/{name}.png``: flow 02
- ``embeddings/{name}/res{R}/part-{i:05d}.parquet``, ``embeddings/{name}/res{R}/manifest.json``: flow 03
- ``indexes/{name}/res{R}/`` (FAISS files), ``indexes/{name}/res{R}/search/`` (search sidecars): flow 04
- ``reports/{name}/res{R}/evaluation.json``, ``evaluation.png``: flow 05
- ``classifiers/{clf}/{version}.skops`` (the model, skops, never pickle), ``{version}.json`` (its sidecar with the
  cross-validation report): flow 06 (``{clf}`` a classifier's name, ``{version}`` the start of its inputs' checksum)
- ``predictions/{clf}/{version}/res{R}/parts/part-{i:05d}.parquet``, ``predictions.parquet`` (GeoParquet),
  ``classes.tif`` (COG), ``probability-{class}.tif`` (COG), ``summary.json``, ``map.png``: flow 06

File names inside the two ``indexes`` prefixes belong to the code that writes them
(:data:`vectorgeo.stores.faiss.INDEX_FILES`, :data:`vectorgeo.search_index.SIDECAR_FILES`).
Flow 04's Qdrant collection and pgvector table default to :func:`collection_name`.

The readers parse JSON only (never pickles) and raise one clear error per case: the file is
missing (what to run to make it), or it is unreadable or not the expected JSON object (what to rerun).

Imports stay light (``json``, ``re``, the errors): the Lambda imports this module through :mod:`vectorgeo.search`.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from vectorgeo.errors import BucketKeyNotFoundError, InvalidInputError, NotFoundError

if TYPE_CHECKING:
    from vectorgeo.transfer import Bucket

__all__ = [
    "STENCIL_PREFIX",
    "classifier_keys",
    "collection_name",
    "embeddings_manifest_key",
    "embeddings_part_key",
    "embeddings_prefix",
    "index_prefix",
    "is_plain_name",
    "model_keys",
    "model_name",
    "prediction_keys",
    "prediction_part_key",
    "read_embeddings_manifest",
    "read_model_sidecar",
    "read_train_manifest",
    "read_tuning",
    "report_keys",
    "search_prefix",
    "shard_key",
    "stencil_key",
    "stencil_names",
    "synthetic_raster_keys",
    "train_manifest_key",
    "train_prefix",
    "tuning_key",
    "tuning_keys",
]

STENCIL_PREFIX = "stencil/"
"""Prefix under which every stencil lives."""

_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def is_plain_name(name: str) -> bool:
    """True for a name safe to put in a bucket key: letters, digits, ``_``, ``-``, ``.``, not leading ``.``."""
    return isinstance(name, str) and _PLAIN_NAME.fullmatch(name) is not None


def model_name(model_filename: str) -> str:
    """``"test.keras"`` -> ``"test"``; refuses names that are not plain file names.

    Raises:
        InvalidInputError: the name holds a path separator or other characters a key must not carry.
    """
    name = model_filename[: -len(".keras")] if model_filename.endswith(".keras") else model_filename
    if not is_plain_name(name):
        raise InvalidInputError(
            f"model_filename {model_filename!r} must be a plain file name like 'demo.keras' "
            "(letters, digits, '_', '-', '.')"
        )
    return name


# --- rasters, stencil, training pairs, tuning ---


def synthetic_raster_keys(seed: int) -> tuple[str, str]:
    """Keys of the synthetic land cover and DEM for a seed (and the current generator version)."""
    from vectorgeo.synthetic import GENERATOR_VERSION  # lazily: it loads rasterio

    base = f"rasters/synthetic-v{GENERATOR_VERSION}-seed{seed}"
    return f"{base}/landcover.tif", f"{base}/dem.tif"


def stencil_key(h3_resolution: int) -> str:
    """Key of the stencil at a resolution: ``stencil/res{R}.parquet``."""
    return f"{STENCIL_PREFIX}res{h3_resolution}.parquet"


def stencil_names(bucket: Bucket) -> list[str]:
    """The stencils present in a bucket, as ``["res5", "res7"]`` (for error messages)."""
    return sorted(k.removeprefix(STENCIL_PREFIX).removesuffix(".parquet") for k in bucket.list(STENCIL_PREFIX))


def train_prefix(train_set: str) -> str:
    """Prefix of a training set: ``train/{set}/``."""
    return f"train/{train_set}/"


def shard_key(train_set: str, index: int) -> str:
    """Key of training shard ``index`` of a set: ``train/{set}/part-{i:05d}.npz``."""
    return f"{train_prefix(train_set)}part-{index:05d}.npz"


def train_manifest_key(train_set: str) -> str:
    """Key of a training set's manifest: ``train/{set}/manifest.json``."""
    return train_prefix(train_set) + "manifest.json"


def tuning_keys(study_name: str) -> dict[str, str]:
    """Keys of a study's journal (local buckets) and its validation patches, under ``tuning/{study}/``."""
    return {"journal": f"tuning/{study_name}/journal.log", "cells": f"tuning/{study_name}/validation.npz"}


# --- models ---


def model_keys(model_filename: str) -> dict[str, str]:
    """Keys of a model (``model``), its JSON sidecar (``sidecar``) and its diagnostics figure (``figure``)."""
    name = model_name(model_filename)
    return {"model": f"models/{name}.keras", "sidecar": f"models/{name}.json", "figure": f"models/{name}.png"}


def tuning_key(model_filename: str) -> str:
    """Key of a model's tuning result: ``models/{name}.tuning.json``."""
    return f"models/{model_name(model_filename)}.tuning.json"


# --- embeddings, indexes, reports ---


def embeddings_prefix(name: str, h3_resolution: int) -> str:
    """Prefix of a model's embeddings at a resolution: ``embeddings/{name}/res{R}/``."""
    return f"embeddings/{name}/res{h3_resolution}/"


def embeddings_part_key(name: str, h3_resolution: int, part: int) -> str:
    """Key of one embeddings part: ``embeddings/{name}/res{R}/part-{i:05d}.parquet``."""
    return f"{embeddings_prefix(name, h3_resolution)}part-{part:05d}.parquet"


def embeddings_manifest_key(name: str, h3_resolution: int) -> str:
    """Key of the embeddings manifest: ``embeddings/{name}/res{R}/manifest.json``."""
    return embeddings_prefix(name, h3_resolution) + "manifest.json"


def index_prefix(name: str, h3_resolution: int) -> str:
    """Prefix of the FAISS files built from a model's embeddings at a resolution: ``indexes/{name}/res{R}/``."""
    return f"indexes/{name}/res{h3_resolution}/"


def search_prefix(name: str, h3_resolution: int) -> str:
    """Prefix of the search sidecars: ``indexes/{name}/res{R}/search/``."""
    return index_prefix(name, h3_resolution) + "search/"


def report_keys(name: str, h3_resolution: int) -> dict[str, str]:
    """Keys of an evaluation report (``report``) and its figure (``figure``) under ``reports/{name}/res{R}/``."""
    base = f"reports/{name}/res{h3_resolution}/evaluation"
    return {"report": f"{base}.json", "figure": f"{base}.png"}


def classifier_keys(name: str, version: str) -> dict[str, str]:
    """Keys of one version of a trained classifier: the ``model`` (a skops file) and its JSON ``sidecar``,
    ``classifiers/{clf}/{version}.skops`` and ``.json``. A version names its inputs (labels, embeddings,
    settings), so a file the registry points to is never overwritten by a later training.

    Raises:
        InvalidInputError: the name or version is not a plain name.
    """
    for what, value in (("classifier name", name), ("classifier version", version)):
        if not is_plain_name(value):
            raise InvalidInputError(
                f"{what} {value!r} must be plain: letters, digits, '_', '-', '.' (pass --classifier_name)"
            )
    return {"model": f"classifiers/{name}/{version}.skops", "sidecar": f"classifiers/{name}/{version}.json"}


def _prediction_prefix(name: str, version: str, h3_resolution: int) -> str:
    classifier_keys(name, version)  # checks the name and version
    return f"predictions/{name}/{version}/res{h3_resolution}/"


def prediction_part_key(name: str, version: str, h3_resolution: int, part: int) -> str:
    """Key of one part of a classifier version's predictions: ``predictions/{clf}/{version}/res{R}/parts/part-{i}``."""
    return f"{_prediction_prefix(name, version, h3_resolution)}parts/part-{part:05d}.parquet"


def prediction_keys(name: str, version: str, h3_resolution: int, probability_class: str = "") -> dict[str, str]:
    """Keys of a classifier version's map: ``geoparquet``, ``cog`` (classes), ``summary``, ``map`` (a PNG
    preview), and ``probability_cog`` when ``probability_class`` names a class (its name made safe for a key)."""
    base = _prediction_prefix(name, version, h3_resolution)
    keys = {
        "geoparquet": f"{base}predictions.parquet",
        "cog": f"{base}classes.tif",
        "summary": f"{base}summary.json",
        "map": f"{base}map.png",
    }
    if probability_class:
        keys["probability_cog"] = f"{base}probability-{re.sub(r'[^A-Za-z0-9_.-]+', '_', probability_class)}.tif"
    return keys


def collection_name(model: str, h3_resolution: int) -> str:
    """Flow 04's default Qdrant collection / pgvector table: ``{model}_res{R}`` as a safe identifier.

    Lower case, every character other than ``a-z``, ``0-9`` and ``_`` replaced by ``_``.
    """
    return re.sub(r"[^a-z0-9_]", "_", f"{model}_res{h3_resolution}".lower())


# --- readers ---

_JSON_KINDS = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


def _read_object(bucket: Bucket, key: str, *, missing: Exception, fix: str, required: tuple[str, ...] = ()) -> dict:
    """A JSON object from the bucket; ``missing`` is raised (from the bucket's error) when the key is absent."""
    try:
        data: Any = bucket.read_json(key)
    except BucketKeyNotFoundError as exc:
        raise missing from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{key!r} in bucket {bucket.url!r} is not readable JSON ({exc}); {fix}") from exc
    if not isinstance(data, dict):
        kind = _JSON_KINDS.get(type(data), type(data).__name__)
        raise InvalidInputError(f"{key!r} in bucket {bucket.url!r} holds a JSON {kind}, not an object; {fix}")
    lacking = [field for field in required if field not in data]
    if lacking:
        raise InvalidInputError(f"{key!r} in bucket {bucket.url!r} lacks {lacking}; {fix}")
    return data


def read_train_manifest(bucket: Bucket, train_set: str) -> dict:
    """The manifest flow 01 wrote for a training set (``shards``, ``legend``, ``patch_px``, ...).

    Raises:
        InvalidInputError: there is no such training set, or its manifest is unreadable.
    """
    return _read_object(
        bucket,
        train_manifest_key(train_set),
        missing=InvalidInputError(
            f"no training set {train_set!r} in bucket {bucket.url!r}; run flows/01_preprocess_flow.py first"
        ),
        fix="rerun flows/01_preprocess_flow.py",
    )


def read_model_sidecar(bucket: Bucket, model_filename: str) -> dict:
    """A model's JSON sidecar (legend, patch size, pixel size, encoder config, training record).

    Raises:
        NotFoundError: the model is not in the bucket.
        InvalidInputError: the sidecar is unreadable or has no ``legend``.
    """
    keys = model_keys(model_filename)
    return _read_object(
        bucket,
        keys["sidecar"],
        missing=NotFoundError(
            f"model {keys['model']!r} (with its sidecar {keys['sidecar']!r}) is not in bucket {bucket.url!r}; "
            "train it with flows/02_train_flow.py or check --model_filename"
        ),
        fix="retrain the model with flows/02_train_flow.py",
        required=("legend",),
    )


def read_tuning(bucket: Bucket, model_filename: str) -> dict:
    """A model's whole tuning result (``models/{name}.tuning.json``, written by flow 01b).

    Raises:
        NotFoundError: the model was never tuned.
        InvalidInputError: the result is unreadable.
    """
    key = tuning_key(model_filename)
    return _read_object(
        bucket,
        key,
        missing=NotFoundError(
            f"no tuning result {key!r} in bucket {bucket.url!r}; run flows/01b_tune_flow.py "
            f"--model_filename={model_name(model_filename)}.keras first, or train without --from_tuning"
        ),
        fix="rerun flows/01b_tune_flow.py",
    )


def read_embeddings_manifest(bucket: Bucket, name: str, h3_resolution: int) -> dict:
    """The manifest flow 03 wrote for a model and resolution (``parts``, ``n_embedded``, ...).

    Raises:
        InvalidInputError: there is none yet (flow 03 has not run), or it is unreadable or has no ``parts``.
    """
    return _read_object(
        bucket,
        embeddings_manifest_key(name, h3_resolution),
        missing=InvalidInputError(
            f"no embeddings of model {name!r} at resolution {h3_resolution} in bucket {bucket.url!r}; "
            "run flows/03_inference_flow.py first"
        ),
        fix="rerun flows/03_inference_flow.py",
        required=("parts",),
    )
