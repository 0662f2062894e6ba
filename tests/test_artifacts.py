"""Tests for vectorgeo.artifacts: every bucket key pinned, and the JSON readers' errors.

A key that changes here changes the layout of every existing bucket: make such a change on purpose.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from vectorgeo import artifacts as a
from vectorgeo.errors import InvalidInputError, NotFoundError
from vectorgeo.synthetic import GENERATOR_VERSION
from vectorgeo.transfer import Bucket


@pytest.fixture
def bucket(tmp_path):
    return Bucket(tmp_path / "bucket", tmp_path / "cache")


def test_keys_are_pinned():
    assert a.synthetic_raster_keys(3) == (
        f"rasters/synthetic-v{GENERATOR_VERSION}-seed3/landcover.tif",
        f"rasters/synthetic-v{GENERATOR_VERSION}-seed3/dem.tif",
    )
    assert a.STENCIL_PREFIX == "stencil/"
    assert a.stencil_key(7) == "stencil/res7.parquet"
    assert a.train_prefix("default") == "train/default/"
    assert a.shard_key("default", 12) == "train/default/part-00012.npz"
    assert a.train_manifest_key("default") == "train/default/manifest.json"
    assert a.tuning_keys("demo") == {"journal": "tuning/demo/journal.log", "cells": "tuning/demo/validation.npz"}
    assert a.model_keys("demo.keras") == {
        "model": "models/demo.keras",
        "sidecar": "models/demo.json",
        "figure": "models/demo.png",
    }
    assert a.model_keys("demo") == a.model_keys("demo.keras")
    assert a.tuning_key("demo.keras") == "models/demo.tuning.json"
    assert a.embeddings_prefix("demo", 7) == "embeddings/demo/res7/"
    assert a.embeddings_part_key("demo", 7, 3) == "embeddings/demo/res7/part-00003.parquet"
    assert a.embeddings_manifest_key("demo", 7) == "embeddings/demo/res7/manifest.json"
    assert a.index_prefix("demo", 7) == "indexes/demo/res7/"
    assert a.search_prefix("demo", 7) == "indexes/demo/res7/search/"
    assert a.report_keys("demo", 7) == {
        "report": "reports/demo/res7/evaluation.json",
        "figure": "reports/demo/res7/evaluation.png",
    }
    assert a.collection_name("demo", 7) == "demo_res7"
    assert a.collection_name("Demo-v2.1", 8) == "demo_v2_1_res8"  # a safe SQL / Qdrant identifier


def test_model_name_refuses_names_that_are_not_plain():
    assert a.model_name("demo.keras") == a.model_name("demo") == "demo"
    assert a.model_name("v1.2_b-3.keras") == "v1.2_b-3"
    for bad in ("../demo.keras", "a/b.keras", ".hidden.keras", "", ".keras", "sp ace.keras"):
        with pytest.raises(InvalidInputError, match=r"must be a plain file name like 'demo\.keras'"):
            a.model_name(bad)
    assert a.is_plain_name("t-1.x") and not a.is_plain_name("_lead")
    assert not a.is_plain_name("a/b") and not a.is_plain_name("") and not a.is_plain_name(None)


def test_stencil_names(bucket):
    assert a.stencil_names(bucket) == []
    for res in (7, 5):
        bucket.write_bytes(a.stencil_key(res), b"pq")
    assert a.stencil_names(bucket) == ["res5", "res7"]


def test_readers_return_what_the_writers_wrote(bucket):
    bucket.write_json(a.train_manifest_key("t"), {"shards": {}, "patch_px": 8})
    bucket.write_json(a.model_keys("m")["sidecar"], {"legend": {"name": "x"}, "patch_px": 8})
    bucket.write_json(a.tuning_key("m"), {"study": "m"})
    bucket.write_json(a.embeddings_manifest_key("m", 7), {"parts": ["p"], "n_embedded": 1})
    assert a.read_train_manifest(bucket, "t")["patch_px"] == 8
    assert a.read_model_sidecar(bucket, "m.keras")["legend"] == {"name": "x"}
    assert a.read_tuning(bucket, "m.keras") == {"study": "m"}
    assert a.read_embeddings_manifest(bucket, "m", 7)["parts"] == ["p"]


def test_readers_say_what_to_run_when_missing(bucket):
    with pytest.raises(InvalidInputError, match=r"no training set 't' in bucket .*01_preprocess_flow\.py first"):
        a.read_train_manifest(bucket, "t")
    with pytest.raises(NotFoundError, match=r"model 'models/m\.keras' \(with its sidecar 'models/m\.json'\).*02_train"):
        a.read_model_sidecar(bucket, "m.keras")
    with pytest.raises(NotFoundError, match=r"no tuning result 'models/m\.tuning\.json'.*01b_tune_flow\.py"):
        a.read_tuning(bucket, "m.keras")
    with pytest.raises(InvalidInputError, match=r"no embeddings of model 'm' at resolution 7.*03_inference_flow"):
        a.read_embeddings_manifest(bucket, "m", 7)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b'{"parts": [', r"is not readable JSON .*; rerun flows/03_inference_flow\.py"),
        (b"\xff\xfe not utf-8", r"is not readable JSON"),
        (b'["parts"]', r"holds a JSON array, not an object"),
        (b'{"n_embedded": 3}', r"lacks \['parts'\]"),
    ],
)
def test_readers_refuse_corrupt_files(bucket, content, match):
    key = a.embeddings_manifest_key("m", 7)
    bucket.write_bytes(key, content)
    with pytest.raises(InvalidInputError, match=rf"'{key}' in bucket .*{match}"):
        a.read_embeddings_manifest(bucket, "m", 7)


def test_every_reader_refuses_corrupt_json(bucket):
    bucket.write_bytes(a.train_manifest_key("t"), b"{")
    bucket.write_bytes(a.model_keys("m")["sidecar"], b"{")
    bucket.write_bytes(a.tuning_key("m"), b"null")
    with pytest.raises(InvalidInputError, match=r"train/t/manifest\.json.*not readable JSON.*01_preprocess_flow"):
        a.read_train_manifest(bucket, "t")
    with pytest.raises(InvalidInputError, match=r"models/m\.json.*not readable JSON.*02_train_flow"):
        a.read_model_sidecar(bucket, "m.keras")
    with pytest.raises(InvalidInputError, match=r"models/m\.tuning\.json.*null, not an object.*01b_tune_flow"):
        a.read_tuning(bucket, "m.keras")
    bucket.write_json(a.model_keys("m")["sidecar"], {"patch_px": 8})
    with pytest.raises(InvalidInputError, match=r"lacks \['legend'\]"):
        a.read_model_sidecar(bucket, "m.keras")


def test_import_is_light():
    code = (
        "import sys, vectorgeo.artifacts; "
        "heavy = {'pyarrow', 'rasterio', 'keras', 'tensorflow', 'vectorgeo.synthetic', 'vectorgeo.transfer'}; "
        "assert not heavy & set(sys.modules), heavy & set(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)
