"""Flow 05's unit of work: score a model's embeddings on held-out ground."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from vectorgeo.artifacts import model_name, read_embeddings_manifest, read_model_sidecar, report_keys
from vectorgeo.errors import InvalidInputError
from vectorgeo.evaluate import evaluate_embeddings
from vectorgeo.evaluation_report import format_report, report_figure
from vectorgeo.holdout import latlng_to_cells, patch_held_out
from vectorgeo.inference import read_embeddings
from vectorgeo.raster import extract_patches, open_raster, pixel_sides_m
from vectorgeo.sources import resolve_legend, resolve_rasters

__all__ = ["evaluate_model"]

logger = logging.getLogger(__name__)


def evaluate_model(
    bucket,
    *,
    model_filename: str,
    h3_resolution: int,
    max_cells: int,
    k: int,
    landcover: str,
    legend: str,
    synthetic_seed: int,
    seed: int = 0,
) -> dict:
    """Evaluate embeddings of held-out cells against baselines; write JSON and PNG.

    Cells count as held out when their whole patch lies on ground the model
    never trained on (the ``holdout`` rule recorded in the model's sidecar).
    The linear probes split them by H3 parent cell, or by finer spatial
    blocks when the parents are too few, and drop training cells whose patch
    could overlap a test patch; the report's ``warnings`` say when the cells
    or groups are too few to trust the scores.

    Returns:
        The report (see :func:`vectorgeo.evaluate.evaluate_embeddings`) plus keys.

    Raises:
        InvalidInputError: no embeddings, or no held-out cells among them.
    """
    name = model_name(model_filename)
    sidecar = read_model_sidecar(bucket, model_filename)
    manifest = read_embeddings_manifest(bucket, name, h3_resolution)
    table = read_embeddings([bucket.download(key) for key in manifest["parts"]])
    lat, lng = table.column("lat").to_numpy(), table.column("lng").to_numpy()
    rule = sidecar.get("holdout") or {}
    legend_obj = resolve_legend(bucket, legend)
    rasters = resolve_rasters(bucket, landcover, synthetic_seed=synthetic_seed)
    patch_px = int(sidecar["patch_px"])
    with open_raster(rasters.landcover) as dataset:
        half_width_m = patch_px * max(pixel_sides_m(dataset)) / 2
    chosen = np.flatnonzero(patch_held_out(lat, lng, half_width_m, **rule)[0]) if rule else np.arange(lat.size)
    if chosen.size < 2 * k + 2:
        raise InvalidInputError(
            f"only {chosen.size} embedded cells lie on held-out ground; evaluation needs at least {2 * k + 2}: "
            "use a finer --h3_resolution or a larger area"
        )
    rng = np.random.default_rng(seed)
    if chosen.size > max_cells:
        chosen = np.sort(rng.choice(chosen, max_cells, replace=False))
    vectors = np.asarray(table.column("embedding").combine_chunks().flatten()).reshape(lat.size, -1)[chosen]
    with open_raster(rasters.landcover) as dataset:
        patches = extract_patches(dataset, lat[chosen], lng[chosen], legend_obj, patch_px=patch_px)
    parents = latlng_to_cells(lat[chosen], lng[chosen], rule.get("parent_res", 5))
    report = evaluate_embeddings(
        vectors,
        patches.classes,
        legend_obj.n_classes,
        k=k,
        seed=seed,
        groups=parents,
        lat=lat[chosen],
        lng=lng[chosen],
        half_width_m=half_width_m,
    )
    report.update(model=name, h3_resolution=h3_resolution, held_out_rule=rule or None)
    keys = report_keys(name, h3_resolution)
    with tempfile.TemporaryDirectory(prefix="vg-eval-") as tmp:
        bucket.upload(report_figure(report, Path(tmp) / "evaluation.png"), keys["figure"])
    bucket.write_json(keys["report"], report)
    logger.info("evaluation of %s on %d held-out cells:\n%s", name, chosen.size, format_report(report))
    return {**report, **keys}
