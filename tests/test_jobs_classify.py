"""Flow 06's jobs on a small embeddings bucket: train, resume, predict in parts, write what GIS tools open."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from search_data import RES, build_search_bucket

from vectorgeo.artifacts import classifier_keys, prediction_keys
from vectorgeo.derived_labels import labels_from_fractions
from vectorgeo.errors import IncompleteOutputError, InvalidInputError
from vectorgeo.jobs.classify import (
    class_colours,
    plan_prediction,
    probability_columns,
    run_prediction,
    train_classifier,
)
from vectorgeo.jobs.classify_maps import finish_prediction


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    data = build_search_bucket(tmp_path_factory.mktemp("classify"), ("faiss",))
    names = list(data.legend.names)
    doc = labels_from_fractions(data.h3, data.lat, data.lng, data.fractions, names, min_fraction=0.4, per_class=25,
                                max_classes=3)  # fmt: skip
    data.bucket.write_json("labels/derived.geojson", doc)
    data.classes = sorted({f["properties"]["class"] for f in doc["features"]})
    return data


def _train(data, name="derived", **kw):
    args = {"model_filename": "m.keras", "h3_resolution": RES, "labels": "labels/derived.geojson",
            "class_property": "class", "classifier": "logistic", "name": name, **kw}  # fmt: skip
    return train_classifier(data.bucket, **args)


def _predict(data, name, version, n_workers=2, **kw):
    workers = plan_prediction(data.bucket, model_filename="m.keras", h3_resolution=RES, n_workers=n_workers)
    results = [run_prediction(data.bucket, w, name=name, version=version, h3_resolution=RES) for w in workers]
    n_parts = sum(len(w) for w in workers)
    return finish_prediction(data.bucket, results, name=name, version=version, h3_resolution=RES, n_parts=n_parts, **kw)


def test_train_reports_both_feature_sets_and_a_rerun_reuses_the_model(data):
    sidecar = _train(data)
    cv = sidecar["cv"]
    assert set(cv["features"]) == {"embeddings", "histogram"} and cv["n_labels"] == 75
    assert sidecar["classes"] == data.classes
    assert sidecar["colours"] == class_colours(tuple(data.classes), data.legend.to_dict())
    assert all(c.startswith("#") for c in sidecar["colours"])
    # the test vectors are a linear map of the fractions: the embeddings carry the composition too
    assert cv["features"]["embeddings"]["macro_f1"] > 0.8
    again = _train(data)
    assert again["artifact_sha256"] == sidecar["artifact_sha256"] and again["fingerprint"] == sidecar["fingerprint"]
    knn = _train(data, name="derived-knn", classifier="knn")
    assert knn["fingerprint"] != sidecar["fingerprint"]
    fewer = {**data.bucket.read_json("labels/derived.geojson")}
    fewer["features"] = fewer["features"][:-1]
    data.bucket.write_json("labels/fewer.geojson", fewer)
    retrained = _train(data, labels="labels/fewer.geojson")  # new labels, same name: a new version beside the old
    assert retrained["version"] != sidecar["version"]
    old = classifier_keys("derived", sidecar["version"])
    assert data.bucket.exists(old["model"]) and data.bucket.read_json(old["sidecar"]) == sidecar


def test_predict_writes_parts_a_geoparquet_and_cogs_and_resumes(data, tmp_path):
    import duckdb
    import geopandas

    version = _train(data)["version"]
    summary = _predict(data, "derived", version, probability_class=data.classes[0])
    keys = prediction_keys("derived", version, RES, data.classes[0])
    assert summary["keys"] == keys
    assert summary["n_cells"] == data.h3.size and sum(summary["class_counts"].values()) == data.h3.size
    frame = geopandas.read_parquet(data.bucket.download(keys["geoparquet"]))
    assert len(frame) == data.h3.size and frame.crs.to_string() == "OGC:CRS84"
    columns = probability_columns(data.classes)
    np.testing.assert_allclose(frame[columns].sum(axis=1), 1.0, atol=1e-5)
    assert (frame["probability"] == frame[columns].max(axis=1)).all()
    np.testing.assert_allclose(frame.geometry.x, frame["lng"])
    np.testing.assert_allclose(frame.geometry.y, frame["lat"])
    con = duckdb.connect()
    con.execute(f"SET extension_directory='{Path(sysconfig.get_paths()['purelib']) / 'duckdb_ext' / 'extensions'}'")
    con.execute("LOAD spatial")
    path = data.bucket.download(keys["geoparquet"])
    rows = con.execute(f"SELECT class, count(*), avg(ST_X(geometry)) FROM '{path}' GROUP BY class").fetchall()
    assert {r[0]: r[1] for r in rows} == {c: n for c, n in summary["class_counts"].items() if n}
    with rasterio.open(data.bucket.download(keys["cog"])) as ds:
        assert ds.dtypes[0] == "uint8" and ds.nodata == 255 and ds.overviews(1) and ds.transform.e < 0
        lat, lng = frame["lat"].to_numpy(), frame["lng"].to_numpy()
        sampled = np.array([v[0] for v in ds.sample(zip(lng, lat, strict=True))])
        expected = np.array([data.classes.index(c) for c in frame["class"]])
        assert (sampled == expected).mean() == 1.0  # every cell centre's pixel holds that cell's class
        assert json.loads(ds.tags()["classes"]) == data.classes
    with rasterio.open(data.bucket.download(keys["probability_cog"])) as ds:
        assert ds.dtypes[0] == "float32"
    parts_before = {
        k: data.bucket.read_bytes(k) for k in data.bucket.list(f"predictions/derived/{version}/res7/parts/")
    }
    again = _predict(data, "derived", version)
    assert again["n_parts_skipped"] == again["n_parts"] == len(parts_before)
    assert {k: data.bucket.read_bytes(k) for k in parts_before} == parts_before


def test_finish_refuses_missing_parts_and_unknown_probability_class(data):
    version = _train(data)["version"]
    workers = plan_prediction(data.bucket, model_filename="m.keras", h3_resolution=RES, n_workers=1)
    result = run_prediction(data.bucket, workers[0], name="derived", version=version, h3_resolution=RES)
    with pytest.raises(InvalidInputError, match="probability_class 'nope' is not a class"):
        finish_prediction(data.bucket, [result], name="derived", version=version, h3_resolution=RES, n_parts=3,
                          probability_class="nope")  # fmt: skip
    with pytest.raises(IncompleteOutputError, match="1 of 4 prediction parts are missing"):
        finish_prediction(data.bucket, [result], name="derived", version=version, h3_resolution=RES, n_parts=4)


def test_a_tampered_model_file_is_refused(data):
    version = _train(data, name="tampered")["version"]
    key = classifier_keys("tampered", version)["model"]
    data.bucket.write_bytes(key, data.bucket.read_bytes(key) + b"x")
    workers = plan_prediction(data.bucket, model_filename="m.keras", h3_resolution=RES, n_workers=1)
    with pytest.raises(InvalidInputError, match="does not match its sidecar's checksum"):
        run_prediction(data.bucket, workers[0], name="tampered", version=version, h3_resolution=RES)


def test_bad_names_and_labels_write_nothing(data):
    before = data.bucket.list("")
    with pytest.raises(InvalidInputError, match="must be plain"):
        _train(data, name="../x")
    with pytest.raises(InvalidInputError, match="neither an existing local file nor a key"):
        _train(data, name="x", labels="labels/absent.geojson")
    with pytest.raises(InvalidInputError, match=r"n_workers must lie in 1\.\.100"):
        plan_prediction(data.bucket, model_filename="m.keras", h3_resolution=RES, n_workers=0)
    assert data.bucket.list("") == before
    assert pq.read_metadata(data.bucket.download(data.bucket.list("embeddings/m/res7/part-")[0])).num_rows > 0
