import json

import pyarrow.parquet as pq
import pytest

from vectorgeo.errors import IncompleteOutputError, InvalidInputError
from vectorgeo.jobs.pairs import finish_pair_shards, make_pair_shards, plan_pair_shards
from vectorgeo.jobs.stencil import make_stencil
from vectorgeo.transfer import Bucket

SETTINGS = {
    "train_set": "t",
    "samples_per_file": 5,
    "patch_px": 16,
    "pair_distance_m": 3000.0,
    "max_uniform_fraction": 0.95,
    "landcover": "",
    "legend": "lc100",
    "synthetic_seed": 0,
    "seed": 3,
}


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
    root = tmp_path_factory.mktemp("jobs")
    return Bucket(root / "bucket", root / "cache")


def test_plan_splits_shards_round_robin(bucket):
    assert plan_pair_shards(bucket, 5, 2, **SETTINGS) == [[0, 2, 4], [1, 3]]
    assert plan_pair_shards(bucket, 2, 3, **SETTINGS) == [[0], [1]]  # no idle worker


@pytest.mark.parametrize(
    ("n_files", "n_jobs", "override", "match"),
    [
        (0, 1, {}, "n_files and n_jobs must be >= 1"),
        (1, 1, {"samples_per_file": 0}, "samples_per_file must be >= 1"),
        (1, 1, {"pair_distance_m": 100.0}, "must exceed one patch width"),
        (1, 1, {"legend": "nope"}, "unknown legend"),
    ],
)
def test_plan_rejects_bad_settings_once(bucket, n_files, n_jobs, override, match):
    with pytest.raises(InvalidInputError, match=match):
        plan_pair_shards(bucket, n_files, n_jobs, **{**SETTINGS, **override})


def test_shards_then_manifest(bucket):
    results = [make_pair_shards(bucket, [0, 2], **SETTINGS), make_pair_shards(bucket, [1], **SETTINGS)]
    settings = {k: v for k, v in SETTINGS.items() if k != "train_set"}
    manifest = finish_pair_shards(bucket, results, n_files=3, train_set="t", **settings)
    assert manifest["n_pairs"] == 15
    assert json.loads(bucket.read_bytes("train/t/manifest.json")) == manifest
    with pytest.raises(IncompleteOutputError, match="1 of 4 training shards are missing"):
        finish_pair_shards(bucket, results, n_files=4, train_set="t", **settings)


def test_same_shard_same_bytes_whatever_the_worker(bucket):
    make_pair_shards(bucket, [0], **{**SETTINGS, "train_set": "a"})
    make_pair_shards(bucket, [0], **{**SETTINGS, "train_set": "b"})
    assert bucket.read_bytes("train/a/part-00000.npz") == bucket.read_bytes("train/b/part-00000.npz")


def test_make_stencil_writes_parquet_with_metadata(bucket):
    summary = make_stencil(bucket, h3_resolution=5)
    table = pq.read_table(bucket.download(summary["key"]))
    assert summary["n_cells"] == table.num_rows > 20
    meta = json.loads(table.schema.metadata[b"vectorgeo"])
    assert meta["h3_resolution"] == 5 and meta["legend"] == "lc100"
