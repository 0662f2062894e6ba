"""Flow 06's units of work: train and cross-validate a classifier, then predict every cell in parts.

Train (:func:`train_classifier`) reads the labels and only the labelled rows of the embeddings,
cross-validates by H3 blocks on the embeddings and on the class histogram side by side, fits the
final classifier on every label and saves it as a skops file with a JSON sidecar, under a version
named by the checksum of its inputs (labels, embeddings, settings): the same inputs reuse it, new
ones never overwrite a file the registry points to.
Predict (:func:`run_prediction`) writes one Parquet part per embeddings part, skipping parts
already made from the same embeddings part by the same classifier, so a rerun resumes.
The map outputs and the registry are :mod:`vectorgeo.jobs.classify_maps`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vectorgeo.artifacts import (
    classifier_keys,
    model_name,
    prediction_part_key,
    read_embeddings_manifest,
    read_model_sidecar,
)
from vectorgeo.classifiers import classifier_params, make_classifier
from vectorgeo.classify import cross_validate_features, predict_in_chunks
from vectorgeo.errors import InvalidInputError, NotFoundError
from vectorgeo.inference import assign_parts, read_part_metadata
from vectorgeo.labels import check_footprint, read_labels
from vectorgeo.sources import local_or_key

__all__ = [
    "VERSION_CHARS",
    "class_colours",
    "plan_prediction",
    "probability_columns",
    "read_classifier",
    "run_prediction",
    "train_classifier",
]

logger = logging.getLogger(__name__)

VERSION_CHARS = 12
"""Hex digits of the inputs' checksum that name a classifier version."""
_PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
    "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d",
)  # fmt: skip
"""Colours of classes that the legend does not name (matplotlib's tab10 and tab20 light shades)."""


def class_colours(classes: tuple[str, ...], legend: dict | None = None) -> list[str]:
    """A ``#rrggbb`` colour per class: the legend's colour for a class named like a legend class, else a palette's."""
    by_name = {c["name"].strip().lower(): c["color"] for c in (legend or {}).get("classes", []) if c.get("color")}
    colours, spare = [], iter(_PALETTE * (1 + len(classes) // len(_PALETTE)))
    for name in classes:
        colours.append(by_name.get(name.strip().lower()) or next(spare))
    return colours


def _local_file(bucket, spec: str, what: str) -> Path:
    path = local_or_key(bucket, spec)
    if path is not None:
        return path
    raise InvalidInputError(
        f"{what} {spec!r} is neither an existing local file nor a key in bucket {bucket.url!r}; fix the path or "
        "upload the file to the bucket"
    )


def _labelled_rows(bucket, parts: list[str], labels_h3: np.ndarray) -> tuple[np.ndarray, pa.Table]:
    """Every embedded cell id (sorted) and the rows of the labelled cells (h3, embedding, class_fractions)."""
    all_h3, taken = [], []
    for key in parts:
        path = bucket.download(key)
        h3 = pq.read_table(path, columns=["h3"]).column("h3").to_numpy()
        all_h3.append(h3)
        mask = np.isin(h3, labels_h3)
        if mask.any():
            table = pq.read_table(path, columns=["h3", "embedding", "class_fractions"])
            taken.append(table.filter(pa.array(mask)))
    embedded = np.sort(np.concatenate(all_h3)) if all_h3 else np.empty(0, np.uint64)
    rows = pa.concat_tables(taken).combine_chunks() if taken else None
    return embedded, rows


def _matrix(column: pa.ChunkedArray | pa.Array, n: int) -> np.ndarray:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return np.asarray(array.flatten(), dtype=np.float32).reshape(n, -1)


def train_classifier(
    bucket,
    *,
    model_filename: str,
    h3_resolution: int,
    labels: str,
    class_property: str,
    classifier: str,
    name: str,
    seed: int = 0,
) -> dict:
    """Read labels, cross-validate (embeddings vs histogram), fit on all labels, save model and sidecar.

    Args:
        labels: A label file (``.geojson``/``.json``/``.csv``): a local path or a bucket key.
        class_property: GeoJSON property (or CSV column) with the class.
        classifier: ``logistic``, ``random_forest`` or ``knn``.
        name: The classifier's name (its keys under ``classifiers/`` and ``predictions/``).

    Returns:
        The sidecar (classes, colours, counts, cross-validation report, keys, checksums).

    Raises:
        InvalidInputError: bad labels (see :mod:`vectorgeo.labels`), labels outside the embeddings, no embeddings.
        NotFoundError: the embeddings' model is missing.
    """
    started = time.perf_counter()
    classifier_params(classifier, seed=seed)  # an unknown classifier fails before any reading
    classifier_keys(name, "check")  # so does a name that cannot be a key
    model = model_name(model_filename)
    model_sidecar = read_model_sidecar(bucket, model_filename)
    manifest = read_embeddings_manifest(bucket, model, h3_resolution)
    label_set = read_labels(
        _local_file(bucket, labels, "label file"), h3_resolution=h3_resolution, class_property=class_property,
        source=labels,
    )  # fmt: skip
    # every part's footer: model checksum, row range, counts and inputs (stencil, rasters, legend, seed)
    parts_meta = [read_part_metadata(bucket.download(key)) for key in manifest["parts"]]
    fingerprint = _fingerprint(
        labels=label_set.sha256, class_property=class_property, classifier=classifier,
        params=classifier_params(classifier, seed=seed), parts=manifest["parts"], parts_meta=parts_meta,
        h3_resolution=h3_resolution,
    )  # fmt: skip
    version = fingerprint[:VERSION_CHARS]
    keys = classifier_keys(name, version)
    previous = _reusable(bucket, keys, fingerprint)
    if previous is not None:
        logger.info("classifier %s: same labels, embeddings and settings as the last run; reusing it", name)
        return previous
    embedded, rows = _labelled_rows(bucket, manifest["parts"], label_set.h3)
    check_footprint(label_set, embedded)
    order = np.searchsorted(label_set.h3, rows.column("h3").to_numpy())
    y = label_set.label[order]
    h3 = label_set.h3[order]
    features = {
        "embeddings": _matrix(rows.column("embedding"), rows.num_rows),
        "histogram": _matrix(rows.column("class_fractions"), rows.num_rows),
    }
    report = cross_validate_features(features, y, h3, label_set.classes, kind=classifier, seed=seed)
    counts = np.bincount(y, minlength=len(label_set.classes))
    final = make_classifier(classifier, seed=seed, min_class_size=int(counts.min()))
    final.fit(features["embeddings"], y)
    from vectorgeo.classifier_files import save_classifier

    with tempfile.TemporaryDirectory(prefix="vg-classify-") as tmp:
        path = save_classifier(final, Path(tmp) / "model.skops")
        artifact_sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        bucket.upload(path, keys["model"])
    sidecar = {
        "name": name,
        "version": version,
        "classifier": classifier,
        "params": report["params"],
        "classes": list(label_set.classes),
        "colours": class_colours(label_set.classes, model_sidecar.get("legend")),
        "counts": label_set.counts(),
        "features": {
            "kind": "embeddings",
            "model": model,
            "model_sha256": parts_meta[0].get("model_sha256"),
            "h3_resolution": h3_resolution,
            "embed_dim": int(features["embeddings"].shape[1]),
            "manifest_parts": len(manifest["parts"]),
        },
        "labels": {
            "source": labels,
            "sha256": label_set.sha256,
            "class_property": class_property,
            "n_cells": int(label_set.h3.size),
        },
        "cv": report,
        "artifact_key": keys["model"],
        "artifact_sha256": artifact_sha256,
        "fingerprint": fingerprint,
        "seed": seed,
        "seconds": round(time.perf_counter() - started, 2),
    }
    bucket.write_json(keys["sidecar"], sidecar)
    emb, hist = report["features"]["embeddings"], report["features"]["histogram"]
    logger.info(
        "classifier %s (%s): blocked CV macro-F1 %.3f on embeddings, %.3f on the class histogram "
        "(%d labels, %d blocks)",
        name, classifier, emb["macro_f1"], hist["macro_f1"], report["n_labels"], report["n_blocks"],
    )  # fmt: skip
    return sidecar


def _fingerprint(**inputs) -> str:
    """Checksum of everything that decides a trained classifier: labels, embeddings, classifier and settings."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def _reusable(bucket, keys: dict, fingerprint: str) -> dict | None:
    """The sidecar of a classifier trained from the same inputs, when its model file is intact; else None.

    skops files are not byte-identical between two fits, so reusing (not refitting) is what keeps a rerun's
    prediction parts and registry rows unchanged.
    """
    if not (bucket.exists(keys["sidecar"]) and bucket.exists(keys["model"])):
        return None
    try:
        sidecar = bucket.read_json(keys["sidecar"])
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(sidecar, dict) or sidecar.get("fingerprint") != fingerprint:
        return None
    model_sha = hashlib.sha256(bucket.download(keys["model"]).read_bytes()).hexdigest()
    return sidecar if model_sha == sidecar.get("artifact_sha256") else None


def read_classifier(bucket, name: str, version: str) -> tuple[object, dict, str]:
    """``(model, sidecar, checksum)`` of a classifier version, its file checked against the sidecar's checksum.

    Raises:
        NotFoundError: no such classifier version.
        InvalidInputError: the model file changed after training, or holds untrusted types.
    """
    from vectorgeo.classifier_files import load_classifier

    keys = classifier_keys(name, version)
    if not bucket.exists(keys["sidecar"]):
        raise NotFoundError(
            f"no classifier {name!r} version {version!r} in bucket {bucket.url!r}; train it with "
            "flows/06_classify_flow.py"
        )
    sidecar = bucket.read_json(keys["sidecar"])
    path = bucket.download(keys["model"])
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    if sha != sidecar.get("artifact_sha256"):
        raise InvalidInputError(
            f"{keys['model']!r} does not match its sidecar's checksum (the file changed after training); retrain it"
        )
    return load_classifier(path), sidecar, sha


def plan_prediction(bucket, *, model_filename: str, h3_resolution: int, n_workers: int) -> list[list[dict]]:
    """One list of ``{"part", "source"}`` specs per worker: one prediction part per embeddings part."""
    if not 1 <= n_workers <= 100:
        raise InvalidInputError(f"n_workers must lie in 1..100, got {n_workers}")
    manifest = read_embeddings_manifest(bucket, model_name(model_filename), h3_resolution)
    specs = [{"part": i, "source": key} for i, key in enumerate(manifest["parts"])]
    return [[specs[i] for i in worker] for worker in assign_parts(len(specs), n_workers)]


def _safe_column(name: str, taken: set[str]) -> str:
    base = "p_" + "".join(ch if ch.isalnum() else "_" for ch in name.lower()).strip("_")
    column, n = base, 2
    while column in taken:
        column, n = f"{base}_{n}", n + 1
    taken.add(column)
    return column


def probability_columns(classes: list[str]) -> list[str]:
    """Column names of the per-class probabilities: ``p_`` and the class name made safe for SQL and QGIS."""
    taken: set[str] = set()
    return [_safe_column(c, taken) for c in classes]


def run_prediction(bucket, parts: list[dict], *, name: str, version: str, h3_resolution: int) -> dict:
    """Predict this worker's parts; a part already made by this classifier from the same source is kept.

    Returns:
        ``{"parts": {key: {"n_cells", "skipped"}}}``.
    """
    model, sidecar, sha = read_classifier(bucket, name, version)
    classes = sidecar["classes"]
    columns = probability_columns(classes)
    done: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="vg-predict-") as tmp:
        for spec in parts:
            key = prediction_part_key(name, version, h3_resolution, spec["part"])
            source_path = bucket.download(spec["source"])
            source_sha = hashlib.sha256(source_path.read_bytes()).hexdigest()
            if bucket.exists(key):
                meta = read_part_metadata(bucket.download(key))
                if meta.get("classifier_sha256") == sha and meta.get("source_sha256") == source_sha:
                    done[key] = {"n_cells": meta["n_cells"], "skipped": True}
                    continue
            table = pq.read_table(source_path, columns=["h3", "lat", "lng", "embedding"])
            n = table.num_rows
            probs = (
                predict_in_chunks(model, _matrix(table.column("embedding"), n)) if n else np.zeros((0, len(classes)))
            )
            index = probs.argmax(axis=1).astype(np.uint8) if n else np.zeros(0, np.uint8)
            out = {
                "h3": table.column("h3"),
                "lat": table.column("lat"),
                "lng": table.column("lng"),
                "class": pa.DictionaryArray.from_arrays(pa.array(index.astype(np.int32)), pa.array(classes)),
                "class_index": pa.array(index, pa.uint8()),
                "probability": pa.array(probs.max(axis=1) if n else np.zeros(0), pa.float32()),
            }
            for column, i in zip(columns, range(len(classes)), strict=True):
                out[column] = pa.array(probs[:, i], pa.float32())
            meta = {"classifier": name, "classifier_sha256": sha, "source": spec["source"], "source_sha256": source_sha,
                    "n_cells": n}  # fmt: skip
            local = Path(tmp) / "part.parquet"
            schema_meta = {b"vectorgeo": json.dumps(meta).encode()}
            pq.write_table(pa.table(out).replace_schema_metadata(schema_meta), local, compression="zstd")
            bucket.upload(local, key)
            done[key] = {"n_cells": n, "skipped": False}
            logger.info("wrote %s: %d cells", key, n)
    return {"parts": done}
