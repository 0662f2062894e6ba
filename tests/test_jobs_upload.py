"""Flow 04's jobs: loads are idempotent, and an interrupted load resumes with nothing lost or doubled."""

import numpy as np
import pytest

import vectorgeo.jobs.upload as upload_job
from vectorgeo.artifacts import index_prefix
from vectorgeo.errors import InvalidInputError
from vectorgeo.inference import CellEmbeddings, embeddings_table, write_part
from vectorgeo.jobs.upload import load_store, plan_upload
from vectorgeo.transfer import Bucket

N_PARTS, PER_PART, DIM = 3, 400, 8


@pytest.fixture
def bucket(tmp_path):
    bucket = Bucket(tmp_path / "bucket", tmp_path / "cache")
    rng = np.random.default_rng(2)
    keys = []
    for part in range(N_PARTS):
        n = PER_PART
        vectors = rng.normal(size=(n, DIM)).astype(np.float32)
        cells = CellEmbeddings(
            valid=np.ones(n, bool),
            embeddings=vectors / np.linalg.norm(vectors, axis=1, keepdims=True),
            fractions=np.full((n, 2), 0.5, np.float32),
            mean_elevation_m=np.zeros(n, np.float32),
        )
        h3 = np.arange(part * n, (part + 1) * n, dtype=np.uint64) + np.uint64(6 * 10**17)
        table = embeddings_table(h3, rng.uniform(40, 50, n), rng.uniform(0, 10, n), cells, "m")
        key = f"embeddings/m/res7/part-{part:05d}.parquet"
        bucket.upload(write_part(table, tmp_path / f"p{part}.parquet", {}), key)
        keys.append(key)
    bucket.write_json("embeddings/m/res7/manifest.json", {"parts": keys, "n_embedded": N_PARTS * PER_PART})
    return bucket


def _load(bucket, kind, data_dir, **extra):
    return load_store(
        bucket, kind, model_filename="m.keras", h3_resolution=7, collection="m_res7", data_dir=data_dir, **extra
    )


@pytest.mark.parametrize("kind", ["qdrant", "pgvector"])
def test_an_interrupted_load_resumes_without_loss_or_duplicates(bucket, tmp_path, monkeypatch, kind):
    real_open = upload_job.open_store

    def dies_on_the_second_part(*args, **kwargs):
        store = real_open(*args, **kwargs)
        real_upsert, calls = store.upsert, []

        def upsert(*a, **k):
            calls.append(1)
            if len(calls) == 2:
                store.close()  # the process dies: connections and servers go with it
                raise KeyboardInterrupt("simulated kill")
            return real_upsert(*a, **k)

        store.upsert = upsert
        return store

    monkeypatch.setattr(upload_job, "open_store", dies_on_the_second_part)
    with pytest.raises(KeyboardInterrupt):
        _load(bucket, kind, tmp_path / "stores")
    monkeypatch.setattr(upload_job, "open_store", real_open)

    resumed = _load(bucket, kind, tmp_path / "stores")
    assert resumed["count"] == N_PARTS * PER_PART
    assert (resumed["parts_skipped"], resumed["parts_loaded"]) == (1, N_PARTS - 1)
    again = _load(bucket, kind, tmp_path / "stores")  # reloading leaves the count unchanged
    assert again["count"] == N_PARTS * PER_PART and again["parts_loaded"] == 0
    wiped = _load(bucket, kind, tmp_path / "stores", wipe=True)
    assert wiped["count"] == N_PARTS * PER_PART and wiped["parts_loaded"] == N_PARTS


def test_faiss_index_goes_to_the_bucket_and_is_not_rebuilt(bucket, tmp_path):
    first = _load(bucket, "faiss", tmp_path / "stores")
    assert first["count"] == N_PARTS * PER_PART and first["parts_loaded"] == N_PARTS
    assert bucket.read_json(index_prefix("m", 7) + "metadata.json")["count"] == N_PARTS * PER_PART
    second = _load(bucket, "faiss", tmp_path / "stores")
    assert second["parts_skipped"] == N_PARTS and second["count"] == first["count"]


def test_plan_checks_stores_and_embeddings(bucket):
    assert plan_upload(bucket, stores="faiss, qdrant,faiss", model_filename="m.keras", h3_resolution=7) == [
        "faiss",
        "qdrant",
    ]
    with pytest.raises(InvalidInputError, match="--stores must list"):
        plan_upload(bucket, stores="milvus", model_filename="m.keras", h3_resolution=7)
    with pytest.raises(InvalidInputError, match="table name must be lowercase"):
        plan_upload(bucket, stores="pgvector", model_filename="m.keras", h3_resolution=7, collection="2024_res7")
    with pytest.raises(InvalidInputError, match="no embeddings of model 'm' at resolution 8"):
        plan_upload(bucket, stores="faiss", model_filename="m.keras", h3_resolution=8)


@pytest.mark.parametrize("kind", ["qdrant", "faiss"])
def test_a_capped_load_is_not_mistaken_for_a_full_one(bucket, tmp_path, kind):
    capped = _load(bucket, kind, tmp_path / "stores", max_rows=100)
    assert capped["count"] == 100
    full = _load(bucket, kind, tmp_path / "stores")
    assert full["count"] == N_PARTS * PER_PART


def test_a_part_with_no_valid_cell_loads_as_nothing(bucket, tmp_path):
    empty = CellEmbeddings(np.zeros(0, bool), np.zeros((0, DIM), np.float32), np.zeros((0, 2), np.float32), np.zeros(0))
    table = embeddings_table(np.zeros(0, np.uint64), np.zeros(0), np.zeros(0), empty, "m")
    bucket.upload(write_part(table, tmp_path / "empty.parquet", {}), "embeddings/m/res7/part-00003.parquet")
    manifest = bucket.read_json("embeddings/m/res7/manifest.json")
    manifest["parts"].append("embeddings/m/res7/part-00003.parquet")
    bucket.write_json("embeddings/m/res7/manifest.json", manifest)
    for kind in ("qdrant", "faiss"):
        assert _load(bucket, kind, tmp_path / "stores")["count"] == N_PARTS * PER_PART
