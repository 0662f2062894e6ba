"""Flow 03's units of work: plan parts, embed them resumably, check the totals."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

from vectorgeo.artifacts import (
    embeddings_manifest_key,
    embeddings_part_key,
    model_keys,
    model_name,
    read_model_sidecar,
    stencil_key,
    stencil_names,
)
from vectorgeo.errors import IncompleteOutputError, InvalidInputError
from vectorgeo.inference import (
    assign_parts,
    embed_cells,
    embeddings_table,
    plan_parts,
    read_part_arrays,
    read_part_metadata,
    write_part,
)
from vectorgeo.raster import open_raster, pixel_size_m
from vectorgeo.sources import resolve_legend, resolve_rasters
from vectorgeo.stencil import check_resolution
from vectorgeo.stores import open_store

__all__ = ["plan_inference", "run_inference", "finish_inference"]

logger = logging.getLogger(__name__)


def _stencil(bucket, h3_resolution: int) -> Path:
    key = stencil_key(h3_resolution)
    if not bucket.exists(key):
        present = stencil_names(bucket)
        raise InvalidInputError(
            f"no stencil at resolution {h3_resolution} ({key!r}) in bucket {bucket.url!r}; stencils present: "
            f"{present or 'none'}. Run flows/00_h3_stencil_flow.py --h3_resolution={h3_resolution} "
            "or pick a present one"
        )
    return bucket.download(key)


def _check_pixel_size(sidecar: dict, raster_pixel_m: float, tolerance: float = 0.25) -> None:
    """A model sees patches of a fixed ground size; refuse a raster whose pixels change it."""
    trained_m = float(sidecar["pixel_size_m"])
    if abs(raster_pixel_m - trained_m) > tolerance * trained_m:
        px = int(sidecar["patch_px"])
        raise InvalidInputError(
            f"the model was trained on {trained_m:.1f} m pixels ({px} px = {px * trained_m / 1000:.2f} km patches) "
            f"but this raster has {raster_pixel_m:.1f} m pixels ({px * raster_pixel_m / 1000:.2f} km patches); "
            "use a model trained on a raster of this resolution"
        )


def plan_inference(
    bucket,
    *,
    model_filename: str,
    h3_resolution: int,
    chunk_size: int,
    n_workers: int,
    max_iters: int,
    legend: str,
    landcover: str = "",
    synthetic_seed: int = 0,
    qdrant: dict | None = None,
) -> list[list[dict]]:
    """Check model, legend, pixel size and stencil once; split the stencil into parts per worker.

    Args:
        qdrant: Upsert into Qdrant as parts are written: ``collection``, ``data_dir``,
            ``url``, ``api_key``, ``wipe``. The collection is created (or wiped) here, once.

    Returns:
        One list of part specs (``part``, ``start``, ``stop``) per worker.

    Raises:
        NotFoundError: the model is not in the bucket.
        InvalidInputError: empty stencil, mismatched legend or ground patch size, bad sizes.
    """
    from vectorgeo.model_files import check_compatible

    check_resolution(h3_resolution)
    if not 1 <= n_workers <= 100:
        raise InvalidInputError(
            f"n_workers must lie in 1..100 (Metaflow's default foreach limit), got {n_workers}; "
            "each worker embeds several parts in turn"
        )
    sidecar = read_model_sidecar(bucket, model_filename)
    check_compatible(sidecar, resolve_legend(bucket, legend), int(sidecar["patch_px"]))
    rasters = resolve_rasters(bucket, landcover, synthetic_seed=synthetic_seed)
    with open_raster(rasters.landcover) as dataset:
        _check_pixel_size(sidecar, pixel_size_m(dataset))
    n_cells = pq.read_metadata(_stencil(bucket, h3_resolution)).num_rows
    if n_cells == 0:
        raise InvalidInputError(f"the stencil at resolution {h3_resolution} holds no cell: nothing to embed")
    parts = plan_parts(n_cells, chunk_size)
    if max_iters > 0:
        parts = parts[:max_iters]
    if qdrant:
        if not qdrant.get("url") and min(n_workers, len(parts)) > 1:
            raise InvalidInputError(
                "the embedded Qdrant Edge takes one process at a time: with --qdrant_collection pass --n_workers=1, "
                "set QDRANT_URL to a server, or load the stores afterwards with flows/04_upload_flow.py"
            )
        with _qdrant_sink(qdrant) as store:
            store.create(int(sidecar["embed_dim"]), wipe=bool(qdrant.get("wipe")))
    specs = [{"part": i, "start": start, "stop": stop} for i, (start, stop) in enumerate(parts)]
    return [[specs[i] for i in worker] for worker in assign_parts(len(specs), n_workers)]


def run_inference(
    bucket,
    parts: list[dict],
    *,
    model_filename: str,
    h3_resolution: int,
    batch_size: int,
    landcover: str,
    dem: str,
    legend: str,
    synthetic_seed: int,
    qdrant: dict | None = None,
) -> dict:
    """Embed this worker's parts; parts already written by this model are skipped.

    A part counts as done when its key exists (writes are atomic, so it is
    whole) and its metadata names this model file's checksum, its row range,
    and the same inputs (stencil checksum, rasters, legend).
    With ``qdrant`` (see :func:`plan_inference`) every part, new or reused,
    is also upserted into that collection (idempotent, keyed by H3 id).

    Returns:
        ``{"parts": {key: {"n_cells", "n_valid", "n_invalid", "skipped"}}}``.
    """
    from vectorgeo.model_files import check_compatible, load_model

    name = model_name(model_filename)
    keys = model_keys(model_filename)
    model_path = bucket.download(keys["model"])
    bucket.download(keys["sidecar"])
    checksum = hashlib.sha256(model_path.read_bytes()).hexdigest()
    stencil_path = _stencil(bucket, h3_resolution)
    stencil = pq.read_table(stencil_path)
    # everything that decides a part's rows: a part made from other inputs is made again
    inputs = {
        "stencil_sha256": hashlib.sha256(stencil_path.read_bytes()).hexdigest(),
        "landcover": landcover,
        "dem": dem,
        "legend": legend,
        "synthetic_seed": synthetic_seed,
    }
    done: dict[str, dict] = {}
    todo = []
    for spec in parts:
        key = embeddings_part_key(name, h3_resolution, spec["part"])
        meta = read_part_metadata(bucket.download(key)) if bucket.exists(key) else {}
        same_rows = (meta.get("start"), meta.get("stop")) == (spec["start"], spec["stop"])
        if meta.get("model_sha256") == checksum and meta.get("inputs") == inputs and same_rows:
            done[key] = {**meta["counts"], "skipped": True}
        else:
            todo.append((key, spec))
    if qdrant:
        with _qdrant_sink(qdrant) as store:
            for key in done:
                _upsert_part(store, bucket.download(key))
    if not todo:
        return {"parts": done}
    encoder, sidecar = load_model(model_path)
    legend_obj = resolve_legend(bucket, legend)
    patch_px = int(sidecar["patch_px"])
    check_compatible(sidecar, legend_obj, patch_px)
    use_dem = bool(sidecar["encoder_config"].get("use_dem"))
    rasters = resolve_rasters(bucket, landcover, dem, with_dem=True, synthetic_seed=synthetic_seed)
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory(prefix="vg-infer-") as tmp:
        landcover_ds = stack.enter_context(open_raster(rasters.landcover))
        dem_ds = stack.enter_context(open_raster(rasters.dem)) if rasters.dem else None
        for key, spec in todo:
            rows = stencil.slice(spec["start"], spec["stop"] - spec["start"])
            h3, lat, lng = (rows.column(c).to_numpy() for c in ("h3", "lat", "lng"))
            cells = embed_cells(
                encoder, landcover_ds, legend_obj, lat, lng, patch_px=patch_px, use_dem=use_dem, dem=dem_ds,
                batch_size=batch_size,
            )  # fmt: skip
            counts = {
                "n_cells": int(h3.size),
                "n_valid": int(cells.valid.sum()),
                "n_invalid": int((~cells.valid).sum()),
            }
            meta = {
                "model": name, "model_sha256": checksum, "h3_resolution": h3_resolution, **spec, "counts": counts,
                "inputs": inputs,
            }  # fmt: skip
            path = write_part(embeddings_table(h3, lat, lng, cells, name), Path(tmp) / "part.parquet", meta)
            bucket.upload(path, key)
            if qdrant:
                with _qdrant_sink(qdrant) as store:
                    _upsert_part(store, path)
            done[key] = {**counts, "skipped": False}
            logger.info(
                "wrote %s: %d cells embedded, %d invalid patches skipped", key, counts["n_valid"], counts["n_invalid"]
            )
    return {"parts": done}


def finish_inference(
    bucket, results: list[dict], *, model_filename: str, h3_resolution: int, n_parts: int, qdrant: dict | None = None
) -> dict:
    """Check every planned part exists and write the embeddings manifest (and finish the Qdrant load).

    Raises:
        InvalidInputError: when a part is missing.
    """
    name = model_name(model_filename)
    parts = {key: info for result in results for key, info in result["parts"].items()}
    expected = [embeddings_part_key(name, h3_resolution, i) for i in range(n_parts)]
    missing = [k for k in expected if k not in parts or not bucket.exists(k)]
    if missing:
        raise IncompleteOutputError(
            f"{len(missing)} of {n_parts} embedding parts are missing from the bucket: {missing[:5]}; rerun flow 03 "
            "(finished parts are kept)"
        )
    manifest = {
        "model": name,
        "h3_resolution": h3_resolution,
        "n_parts": n_parts,
        "n_cells": sum(p["n_cells"] for p in parts.values()),
        "n_embedded": sum(p["n_valid"] for p in parts.values()),
        "n_invalid": sum(p["n_invalid"] for p in parts.values()),
        "n_parts_skipped": sum(p["skipped"] for p in parts.values()),
        "parts": sorted(parts),
    }
    if qdrant:
        with _qdrant_sink(qdrant) as store:
            store.finish_load()
            manifest["qdrant"] = {"collection": qdrant["collection"], "count": store.count()}
    bucket.write_json(embeddings_manifest_key(name, h3_resolution), manifest)
    return manifest


def _upsert_part(store, path: Path) -> None:
    """Upsert one embeddings part into a store (a part with no valid cell adds nothing)."""
    h3, lat, lng, vectors = read_part_arrays(path)
    if len(h3):
        store.upsert(h3, lat, lng, vectors)


@contextlib.contextmanager
def _qdrant_sink(qdrant: dict):
    """The Qdrant collection that inference upserts into, opened for one use and closed after."""
    store = open_store(
        "qdrant", qdrant["collection"], data_dir=qdrant["data_dir"], qdrant_url=qdrant.get("url"),
        qdrant_api_key=qdrant.get("api_key"),
    )  # fmt: skip
    try:
        yield store
    finally:
        store.close()
