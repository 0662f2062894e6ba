"""A small search index built by flow 04's own jobs, shared by the search, handler, server and browser tests."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import h3.api.basic_int as h3i
import numpy as np

from vectorgeo.inference import CellEmbeddings, embeddings_table, write_part
from vectorgeo.jobs.upload import load_store, write_search_sidecars
from vectorgeo.legends import BUILTIN_LEGENDS
from vectorgeo.search import SearchService, open_search_service
from vectorgeo.service_settings import ServiceSettings
from vectorgeo.transfer import Bucket

RES, DIM = 7, 8
CENTRE = (44.6, -123.9)
STORES = ("faiss", "qdrant", "pgvector")


def build_search_bucket(root: Path, kinds: tuple[str, ...] = STORES) -> SimpleNamespace:
    """A bucket with embeddings of the res-7 cells around the Oregon coast, loaded into ``kinds`` by flow 04's jobs.

    Vectors follow smooth land-cover fractions (WorldCover classes), so neighbours tend to be similar;
    20 cells of the disk are left out (they play the sea).
    """
    root.mkdir(parents=True, exist_ok=True)
    bucket = Bucket(root / "bucket", root / "cache")
    rng = np.random.default_rng(7)
    legend = BUILTIN_LEGENDS["worldcover"]
    disk = np.array(sorted(h3i.grid_disk(h3i.latlng_to_cell(*CENTRE, RES), 12)), np.uint64)
    missing = rng.choice(np.arange(1, len(disk)), 20, replace=False)
    cells = np.delete(disk, missing)
    n = len(cells)
    lat, lng = np.array([h3i.cell_to_latlng(int(c)) for c in cells]).T
    field = np.stack([lat - CENTRE[0], lng - CENTRE[1], (lat - CENTRE[0]) * (lng - CENTRE[1]) * 10], axis=1) * 8
    logits = field @ rng.normal(size=(3, legend.n_classes)) + 0.7 * rng.normal(size=(n, legend.n_classes))
    fractions = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    fractions[fractions < 0.02] = 0.0
    fractions = (fractions / fractions.sum(axis=1, keepdims=True)).astype(np.float32)
    vectors = fractions @ rng.normal(size=(legend.n_classes, DIM)) + 0.05 * rng.normal(size=(n, DIM))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    elevation = (50 + 4000 * (lat - CENTRE[0]) ** 2).astype(np.float32)
    elevation[::5] = np.nan
    keys = []
    for i, rows in enumerate(np.array_split(np.arange(n), 3)):
        embedded = CellEmbeddings(np.ones(len(rows), bool), vectors[rows], fractions[rows], elevation[rows])
        table = embeddings_table(cells[rows], lat[rows], lng[rows], embedded, "m")
        keys.append(f"embeddings/m/res{RES}/part-{i:05d}.parquet")
        bucket.upload(write_part(table, root / f"part-{i}.parquet", {}), keys[-1])
    bucket.write_json(f"embeddings/m/res{RES}/manifest.json", {"parts": keys, "n_embedded": n})
    bucket.write_json("models/m.json", {"legend": legend.to_dict()})
    for kind in kinds:
        load_store(bucket, kind, model_filename="m.keras", h3_resolution=RES, collection="m_res7", data_dir=root / "s")
    write_search_sidecars(bucket, model_filename="m.keras", h3_resolution=RES)
    return SimpleNamespace(
        bucket=bucket, data_dir=root / "s", h3=cells, lat=lat, lng=lng, vectors=vectors, fractions=fractions,
        elevation=elevation, missing=disk[missing], legend=legend,
    )  # fmt: skip


def open_test_service(data: SimpleNamespace, kinds: tuple[str, ...] = STORES) -> SearchService:
    return open_search_service(data.bucket, model="m", h3_resolution=RES, stores=kinds, data_dir=data.data_dir)


def service_settings_for(data: SimpleNamespace, cache_dir: Path, kinds: tuple[str, ...] = STORES) -> ServiceSettings:
    """The settings an entry point would read for the test index (the service they open is the test service's)."""
    return ServiceSettings(bucket=data.bucket.url, cache_dir=str(cache_dir / "{step}"), model="m", h3_resolution=RES,
                           stores=kinds, data_dir=str(data.data_dir))  # fmt: skip
