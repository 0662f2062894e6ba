"""Flow 06's last step: the map a user opens (GeoParquet, class and probability COGs, a preview) and the registry.

:func:`finish_prediction` checks every prediction part of a classifier version, writes the outputs,
then opens the registry (only now: a remote database may drop a connection left idle through long
writes) and records the model and the prediction, idempotently.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vectorgeo.artifacts import classifier_keys, prediction_keys, prediction_part_key
from vectorgeo.errors import IncompleteOutputError, InvalidInputError
from vectorgeo.jobs.classify import probability_columns
from vectorgeo.legends import hex_to_rgb

__all__ = ["NODATA_CLASS", "finish_prediction"]

logger = logging.getLogger(__name__)

NODATA_CLASS = 255
"""The class COG's value outside the embedded cells."""


def finish_prediction(
    bucket,
    results: list[dict],
    *,
    name: str,
    version: str,
    h3_resolution: int,
    n_parts: int,
    probability_class: str = "",
    pixels_per_edge: float = 4.0,
    open_registry: Callable[[], object] | None = None,
) -> dict:
    """Check every part; write the GeoParquet, the class COG, an optional probability COG, summary and preview.

    Args:
        probability_class: Also write this class's probability as a float32 COG ("" = none).
        pixels_per_edge: COG pixels along a hexagon's edge (the grid is fine enough to see hexagons).
        open_registry: Opens the :class:`vectorgeo.registry.Registry` to record model and prediction in (called
            after the outputs are written, closed here); None = no registry.

    Returns:
        The summary: keys, class counts, bounds, cell count, registry ids.

    Raises:
        IncompleteOutputError: a part is missing.
        InvalidInputError: ``probability_class`` is not one of the classifier's classes.
    """
    from vectorgeo.cell_raster import grid_for_cells, validate_cog, write_cells_cog
    from vectorgeo.geoparquet import write_cells_geoparquet

    sidecar = bucket.read_json(classifier_keys(name, version)["sidecar"])
    classes = sidecar["classes"]
    if probability_class and probability_class not in classes:
        raise InvalidInputError(f"probability_class {probability_class!r} is not a class of {name!r}: {classes}")
    parts = {key: info for result in results for key, info in result["parts"].items()}
    expected = [prediction_part_key(name, version, h3_resolution, i) for i in range(n_parts)]
    missing = [k for k in expected if k not in parts or not bucket.exists(k)]
    if missing:
        raise IncompleteOutputError(
            f"{len(missing)} of {n_parts} prediction parts are missing: {missing[:5]}; rerun flow 06 (finished "
            "parts are kept)"
        )
    keys = prediction_keys(name, version, h3_resolution, probability_class)
    table = pa.concat_tables([pq.read_table(bucket.download(k)) for k in expected]).combine_chunks()
    table = table.replace_schema_metadata(None)
    if table.num_rows == 0:
        raise InvalidInputError(f"the embeddings of {name!r}'s model hold no cell: nothing to map")
    h3 = table.column("h3").to_numpy()
    lat, lng = table.column("lat").to_numpy(), table.column("lng").to_numpy()
    index = table.column("class_index").to_numpy()
    counts = {c: int(n) for c, n in zip(classes, np.bincount(index, minlength=len(classes)), strict=True)}
    colours = sidecar["colours"]
    meta = {"classifier": name, "classes": classes, "colours": colours,
            "probability_columns": dict(zip(probability_columns(classes), classes, strict=True))}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="vg-map-") as tmp:
        tmp = Path(tmp)
        bucket.upload(write_cells_geoparquet(table, tmp / "predictions.parquet", metadata=meta), keys["geoparquet"])
        grid = grid_for_cells(h3, pixels_per_edge=pixels_per_edge)
        colormap = {i: (*hex_to_rgb(c), 255) for i, c in enumerate(colours)}
        tags = {"classifier": name, "classes": json.dumps(classes), "h3_resolution": str(h3_resolution)}
        cog = write_cells_cog(
            tmp / "classes.tif", h3, index, grid, dtype="uint8", nodata=NODATA_CLASS, colormap=colormap,
            band_description="predicted class", tags=tags,
        )  # fmt: skip
        validate_cog(cog)
        bucket.upload(cog, keys["cog"])
        if probability_class:
            column = probability_columns(classes)[classes.index(probability_class)]
            prob = write_cells_cog(
                tmp / "probability.tif", h3, table.column(column).to_numpy(), grid, dtype="float32",
                nodata=float("nan"), band_description=f"probability of {probability_class}", tags=tags,
                resampling="average",
            )  # fmt: skip
            validate_cog(prob)
            bucket.upload(prob, keys["probability_cog"])
        bucket.upload(_preview(lat, lng, index, classes, colours, tmp / "map.png"), keys["map"])
    summary = {
        "classifier": name,
        "version": version,
        "h3_resolution": h3_resolution,
        "n_cells": int(table.num_rows),
        "class_counts": counts,
        "bounds": [float(lng.min()), float(lat.min()), float(lng.max()), float(lat.max())],
        "n_parts": n_parts,
        "n_parts_skipped": sum(bool(p["skipped"]) for p in parts.values()),
        "keys": keys,
        "pixel_size_deg": grid.pixel_size_deg,
        "raster_size": [grid.width, grid.height],
    }
    if open_registry is not None:
        registry = open_registry()
        try:
            summary["registry"] = _register(registry, sidecar, summary, keys)
        finally:
            registry.close()
    bucket.write_json(keys["summary"], summary)
    return summary


def _register(registry, sidecar: dict, summary: dict, keys: dict) -> dict:
    from vectorgeo.registry import ModelRecord, PredictionRecord

    model_id = registry.register_model(ModelRecord(
        name=sidecar["name"],
        classifier=sidecar["classifier"],
        params=sidecar["params"],
        feature_source=sidecar["features"],
        label_source={**sidecar["labels"], "classes": sidecar["classes"], "counts": sidecar["counts"]},
        cv_metrics=_cv_summary(sidecar["cv"]),
        artifact_key=sidecar["artifact_key"],
        artifact_sha256=sidecar["artifact_sha256"],
    ))  # fmt: skip
    prediction_id = registry.register_prediction(PredictionRecord(
        model_id=model_id,
        embeddings_source={
            "model": sidecar["features"]["model"],
            "model_sha256": sidecar["features"]["model_sha256"],
            "version": sidecar["version"],
        },
        h3_resolution=summary["h3_resolution"],
        cog_key=keys["cog"],
        geoparquet_key=keys["geoparquet"],
        probability_cog_key=keys.get("probability_cog"),
        class_counts=summary["class_counts"],
        bounds=tuple(summary["bounds"]),
        n_cells=summary["n_cells"],
    ))  # fmt: skip
    return {"model_id": model_id, "prediction_id": prediction_id}


def _cv_summary(cv: dict) -> dict:
    """The registry's ``cv_metrics``: the embeddings' scores at the top, the histogram's beside them."""
    emb = cv["features"]["embeddings"]
    return {
        "accuracy": emb["accuracy"],
        "macro_f1": emb["macro_f1"],
        "per_class": emb["per_class"],
        "confusion": emb["confusion"],
        "histogram": {k: cv["features"]["histogram"][k] for k in ("accuracy", "macro_f1")},
        "n_folds": emb["n_folds"],
        "parent_res": cv["parent_res"],
        "n_labels": cv["n_labels"],
    }


def _preview(lat, lng, index, classes, colours, path: Path, max_points: int = 200_000) -> Path:
    """A small PNG of the predicted classes at the cell centres, for the card."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    step = max(1, lat.size // max_points)
    fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
    palette = np.array(colours)
    ax.scatter(lng[::step], lat[::step], c=palette[index[::step]], s=2, marker="h", linewidths=0)
    ax.set_aspect(1 / max(np.cos(np.radians(float(np.mean(lat)))), 0.1))
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    ax.legend(handles=[Patch(color=c, label=n) for n, c in zip(classes, colours, strict=True)], fontsize=7,
              loc="upper right")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
