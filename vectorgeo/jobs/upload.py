"""Flow 04's units of work: stream embedding parts from the bucket into the stores, and write the search sidecars."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
from tqdm import tqdm

from vectorgeo.artifacts import (
    index_prefix,
    model_keys,
    model_name,
    read_embeddings_manifest,
    read_model_sidecar,
    search_prefix,
)
from vectorgeo.errors import InvalidInputError, NotFoundError
from vectorgeo.inference import read_part_arrays
from vectorgeo.search_index import SIDECAR_FILES, build_search_sidecars
from vectorgeo.stores import STORE_KINDS, open_store
from vectorgeo.transfer import Bucket

__all__ = ["plan_upload", "load_store", "write_search_sidecars"]

logger = logging.getLogger(__name__)


def plan_upload(
    bucket: Bucket, *, stores: str, model_filename: str, h3_resolution: int, collection: str = "vectorgeo"
) -> list[str]:
    """Check the store list, the collection/table name and that embeddings exist; return the stores to load."""
    kinds = [s.strip() for s in stores.split(",") if s.strip()]
    unknown = sorted(set(kinds) - set(STORE_KINDS))
    if unknown or not kinds:
        raise InvalidInputError(f"--stores must list some of {', '.join(STORE_KINDS)}, got {stores!r}")
    if "pgvector" in kinds:
        from vectorgeo.stores.pgvector import check_table_name

        check_table_name(collection)
    manifest = read_embeddings_manifest(bucket, model_name(model_filename), h3_resolution)
    if manifest["n_embedded"] == 0:
        raise InvalidInputError(f"the embeddings at resolution {h3_resolution} hold no cell: nothing to load")
    return list(dict.fromkeys(kinds))


def load_store(
    bucket: Bucket,
    kind: str,
    *,
    model_filename: str,
    h3_resolution: int,
    collection: str,
    data_dir: str | Path,
    wipe: bool = False,
    max_rows: int = 0,
    qdrant_url: str | None = None,
    qdrant_api_key: str | None = None,
    database_url: str | None = None,
    pg_maintenance_work_mem: str | None = None,
) -> dict:
    """Load every embedding part into one store, resumably, then build its indexes.

    Loads are idempotent upserts keyed by H3 id; parts already loaded into
    this store (by key and checksum, recorded in ``data_dir``) are skipped,
    so a killed load resumes. The FAISS index is written to the bucket under
    :func:`~vectorgeo.artifacts.index_prefix` and not rebuilt when its metadata already names the
    same source parts.

    Returns:
        ``{"store", "collection", "count", "parts_loaded", "parts_skipped", "rows_loaded"}``.
    """
    name = model_name(model_filename)
    manifest = read_embeddings_manifest(bucket, name, h3_resolution)
    parts = list(manifest["parts"])
    sources = {key: _checksum(bucket, key) for key in parts}
    data_dir = Path(data_dir)
    if kind == "faiss":
        return _load_faiss(bucket, name, h3_resolution, parts, sources, data_dir, max_rows)

    target = (
        qdrant_url if kind == "qdrant" and qdrant_url else database_url if kind == "pgvector" and database_url else ""
    )
    identity = hashlib.sha256(
        f"{kind}|{_without_secrets(target) or data_dir.resolve()}|{collection}".encode()
    ).hexdigest()
    progress_path = data_dir / "progress" / f"{kind}-{collection}-{identity[:12]}.json"
    done = {} if wipe or not progress_path.is_file() else _read_progress(progress_path)
    store = open_store(
        kind, collection, data_dir=data_dir, qdrant_url=qdrant_url, qdrant_api_key=qdrant_api_key,
        database_url=database_url, pg_maintenance_work_mem=pg_maintenance_work_mem,
    )  # fmt: skip
    try:
        dim = int(read_part_arrays(bucket.download(parts[0]), 1)[3].shape[1])
        store.create(dim, wipe=wipe)
        if store.count() == 0:
            done = {}  # the store was emptied or recreated: the record of past loads is stale
        loaded = skipped = rows = 0
        for key in tqdm(parts, desc=f"load {kind}", unit="part", disable=None):
            if done.get(key) == sources[key]:
                skipped += 1
                continue
            if max_rows and rows >= max_rows:
                break
            h3, lat, lng, vectors = read_part_arrays(bucket.download(key), max_rows - rows if max_rows else 1 << 62)
            whole = len(h3) == pq.read_metadata(bucket.download(key)).num_rows
            if len(h3):
                rows += store.upsert(h3, lat, lng, vectors)
            loaded += 1
            if whole:  # a part cut short by max_rows is not done: a later full run loads it again
                done[key] = sources[key]
                _write_progress(progress_path, done)
        store.finish_load()
        count = store.count()
    finally:
        store.close()
    logger.info("%s/%s: %d rows (%d parts loaded, %d already there)", kind, collection, count, loaded, skipped)
    return {"store": kind, "collection": collection, "count": count, "parts_loaded": loaded,
            "parts_skipped": skipped, "rows_loaded": rows}  # fmt: skip


def _load_faiss(
    bucket: Bucket, name: str, h3_resolution: int, parts: list[str], sources: dict, data_dir: Path, max_rows: int
) -> dict:
    from vectorgeo.stores.faiss import INDEX_FILES, METADATA_FILE, FaissStore

    prefix = index_prefix(name, h3_resolution)
    meta = bucket.read_json(prefix + METADATA_FILE) if bucket.exists(prefix + METADATA_FILE) else {}
    whole = all(bucket.exists(prefix + file) for file in INDEX_FILES)
    if meta.get("sources") == sources and meta.get("max_rows") is None and whole and not max_rows:
        logger.info("faiss index %s already matches its %d source parts: not rebuilt", prefix, len(parts))
        return {"store": "faiss", "collection": prefix, "count": meta["count"], "parts_loaded": 0,
                "parts_skipped": len(parts), "rows_loaded": 0}  # fmt: skip
    data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vg-faiss-", dir=data_dir) as tmp:
        store = FaissStore(tmp)
        rows = 0
        for key in tqdm(parts, desc="load faiss", unit="part", disable=None):
            if max_rows and rows >= max_rows:
                break
            h3, lat, lng, vectors = read_part_arrays(bucket.download(key), max_rows - rows if max_rows else 1 << 62)
            if rows == 0:
                store.create(vectors.shape[1], wipe=True)
            if len(h3):
                rows += store.upsert(h3, lat, lng, vectors)
        # a capped build names no sources, so it is never mistaken for the full index
        store.finish_load(sources=None if max_rows else sources, model=name, h3_resolution=h3_resolution)
        count = store.count()
        store.close()
        bucket.delete(prefix + METADATA_FILE)  # readers see no index while files change, never a mix
        for file in INDEX_FILES:  # metadata.json last: its presence means the index beside it is whole
            bucket.upload(Path(tmp) / file, prefix + file)
    return {"store": "faiss", "collection": prefix, "count": count, "parts_loaded": len(parts),
            "parts_skipped": 0, "rows_loaded": rows}  # fmt: skip


def write_search_sidecars(
    bucket: Bucket,
    *,
    model_filename: str,
    h3_resolution: int,
    n_pairs: int = 200_000,
    n_quantiles: int = 1001,
    seed: int = 0,
) -> dict:
    """Write the search service's sidecars (score calibration, per-cell attributes) to the bucket, once.

    They go under :func:`~vectorgeo.artifacts.search_prefix`, ``calibration.json`` last, and are
    not rebuilt while that file names the same source parts (by checksum) and settings. Class names
    and colours come from the model's sidecar legend (generic names when the model is not in the bucket).

    Returns:
        ``{"prefix", "count", "n_pairs", "skipped"}``.
    """
    name = model_name(model_filename)
    parts = list(read_embeddings_manifest(bucket, name, h3_resolution)["parts"])
    sources = {key: _checksum(bucket, key) for key in parts}
    params = {"n_pairs": n_pairs, "n_quantiles": n_quantiles, "seed": seed}
    prefix = search_prefix(name, h3_resolution)
    calibration = prefix + SIDECAR_FILES[-1]
    meta = bucket.read_json(calibration) if bucket.exists(calibration) else {}
    if (meta.get("sources"), meta.get("params")) == (sources, params) and all(
        bucket.exists(prefix + file) for file in SIDECAR_FILES
    ):
        logger.info("search sidecars %s already match their %d source parts: not rebuilt", prefix, len(parts))
        return {"prefix": prefix, "count": meta["count"], "n_pairs": meta["n_pairs"], "skipped": True}
    with tempfile.TemporaryDirectory(prefix="vg-search-") as tmp:
        meta = build_search_sidecars(
            [bucket.download(key) for key in parts], tmp, model=name, h3_resolution=h3_resolution, sources=sources,
            classes=_legend_classes(bucket, model_filename), **params,
        )  # fmt: skip
        bucket.delete(calibration)  # readers see no sidecars while files change, never a mix
        for file in SIDECAR_FILES:
            bucket.upload(Path(tmp) / file, prefix + file)
    return {"prefix": prefix, "count": meta["count"], "n_pairs": meta["n_pairs"], "skipped": False}


def _legend_classes(bucket: Bucket, model_filename: str) -> list[dict] | None:
    """``[{"name", "color"}]`` per class from the model's sidecar, or None when the model is not in the bucket."""
    try:
        sidecar = read_model_sidecar(bucket, model_filename)
    except NotFoundError:
        key = model_keys(model_filename)["sidecar"]
        logger.warning("no model sidecar %s: classes get generic names in search explanations", key)
        return None
    return [{"name": c["name"], "color": c.get("color")} for c in sidecar["legend"]["classes"]]


def _without_secrets(url: str) -> str:
    """A server URL or DSN reduced to what identifies the server (never a password or key)."""
    if not url:
        return ""
    if "://" in url:
        rest = url.split("://", 1)[1]
        return url.split("://", 1)[0] + "://" + rest.split("@")[-1].split("?")[0]
    fields = dict(part.split("=", 1) for part in url.split() if "=" in part)
    return " ".join(f"{k}={fields[k]}" for k in ("host", "port", "dbname") if k in fields)


def _read_progress(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        logger.warning("load progress %s is unreadable; loading every part again (loads are idempotent)", path)
        return {}


def _write_progress(path: Path, done: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(done))
    os.replace(tmp, path)


def _checksum(bucket: Bucket, key: str) -> str:
    """A part's content checksum (parts are small; this also warms the cache for the load)."""
    return hashlib.sha256(bucket.download(key).read_bytes()).hexdigest()
