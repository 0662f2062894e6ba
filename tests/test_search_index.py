"""Search sidecars: built from embedding parts, exact where all pairs fit, skipped when current."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from vectorgeo.artifacts import search_prefix
from vectorgeo.errors import InvalidInputError
from vectorgeo.inference import CellEmbeddings, embeddings_table, write_part
from vectorgeo.jobs.upload import write_search_sidecars
from vectorgeo.legends import BUILTIN_LEGENDS
from vectorgeo.search_index import SIDECAR_FILES, SearchSidecars, build_search_sidecars
from vectorgeo.transfer import Bucket

DIM, N_CLASSES = 6, 3


def _parts(tmp_path, sizes, *, seed=0, shuffle=False):
    """Embedding parts of random unit vectors with known fractions and elevations; returns paths and columns."""
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    h3 = np.sort(rng.choice(2**40, n, replace=False)).astype(np.uint64) + np.uint64(6 * 10**17)
    if shuffle:
        h3 = rng.permutation(h3)
    vectors = rng.normal(size=(n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    fractions = rng.dirichlet(np.ones(N_CLASSES), n).astype(np.float32)
    elevation = rng.uniform(0, 3000, n).astype(np.float32)
    elevation[::7] = np.nan
    paths, start = [], 0
    for i, size in enumerate(sizes):
        sl = slice(start, start + size)
        cells = CellEmbeddings(np.ones(size, bool), vectors[sl], fractions[sl], elevation[sl])
        table = embeddings_table(h3[sl], np.zeros(size), np.zeros(size), cells, "m")
        paths.append(write_part(table, tmp_path / f"part-{i}.parquet", {}))
        start += size
    return paths, {"h3": h3, "vectors": vectors, "fractions": fractions, "elevation": elevation}


def _all_pair_similarities(vectors):
    sims = vectors.astype(np.float64) @ vectors.astype(np.float64).T
    return sims[np.triu_indices(len(vectors), 1)]


def test_quantiles_are_exact_when_every_pair_fits(tmp_path):
    paths, cols = _parts(tmp_path, [30, 0, 45, 25])
    meta = build_search_sidecars(paths, tmp_path / "out", model="m", h3_resolution=7, sources={"a": "1"})
    expected = np.quantile(_all_pair_similarities(cols["vectors"]), np.linspace(0, 1, 1001))
    assert meta["exact"] and meta["n_pairs"] == 100 * 99 // 2 and meta["count"] == 100 and meta["dim"] == DIM
    np.testing.assert_allclose(meta["quantiles"], expected, atol=1e-6)
    assert np.all(np.diff(meta["quantiles"]) >= 0)
    assert json.loads((tmp_path / "out" / "calibration.json").read_text()) == meta


def test_sampled_quantiles_match_brute_force(tmp_path):
    paths, cols = _parts(tmp_path, [400, 300], seed=1)
    meta = build_search_sidecars(paths, tmp_path / "out", model="m", h3_resolution=7, sources={}, n_pairs=50_000)
    truth = _all_pair_similarities(cols["vectors"])
    assert not meta["exact"] and meta["n_pairs"] == 50_000
    quantiles = np.array(meta["quantiles"])
    assert np.all(np.diff(quantiles) >= 0)
    # the fraction of all pairs below each sampled quantile is within sampling error of its probability
    below = np.searchsorted(np.sort(truth), quantiles[1:-1]) / len(truth)
    assert np.abs(below - np.linspace(0, 1, 1001)[1:-1]).max() < 0.015
    sidecars = SearchSidecars.load(tmp_path / "out")
    for score in (-0.5, 0.0, 0.3, 0.8):
        assert sidecars.percentile(np.array([score]))[0] == pytest.approx(100 * np.mean(truth < score), abs=1.0)
    assert sidecars.percentile(np.array([-1.0, 1.0])).tolist() == [0.0, 100.0]


def test_attributes_are_sorted_and_explain_each_cell(tmp_path):
    paths, cols = _parts(tmp_path, [20, 20, 10], shuffle=True)
    classes = [{"name": n, "color": c} for n, c in zip("abc", ("#000000", "#ffffff", None), strict=True)]
    build_search_sidecars(paths, tmp_path / "out", model="m", h3_resolution=7, sources={}, classes=classes)
    sidecars = SearchSidecars.load(tmp_path / "out")
    order = np.argsort(cols["h3"])
    assert sidecars.h3.dtype == np.uint64 and np.array_equal(sidecars.h3, cols["h3"][order])
    np.testing.assert_allclose(sidecars.fractions, cols["fractions"][order], atol=1e-3)  # float16
    np.testing.assert_array_equal(sidecars.mean_elevation_m, cols["elevation"][order])
    assert sidecars.class_names == ("a", "b", "c") and sidecars.class_colors == ("#000000", "#ffffff", None)
    assert sidecars.positions(np.array([cols["h3"][3], 5], np.uint64)).tolist() == [int(np.argsort(order)[3]), -1]


def test_bad_inputs_are_named(tmp_path):
    paths, _ = _parts(tmp_path, [5])
    with pytest.raises(InvalidInputError, match="no embedding parts"):
        build_search_sidecars([], tmp_path / "out", model="m", h3_resolution=7, sources={})
    with pytest.raises(InvalidInputError, match="legend lists 2 classes but the parts hold 3"):
        build_search_sidecars(paths, tmp_path / "out", model="m", h3_resolution=7, sources={}, classes=[{}, {}])
    table = pq.read_table(paths[0]).drop_columns(["class_fractions"])
    pq.write_table(table, tmp_path / "old.parquet")
    with pytest.raises(InvalidInputError, match="no class_fractions; rerun flow 03"):
        build_search_sidecars([tmp_path / "old.parquet"], tmp_path / "out", model="m", h3_resolution=7, sources={})


def test_one_cell_has_no_calibration(tmp_path):
    paths, _ = _parts(tmp_path, [1])
    meta = build_search_sidecars(paths, tmp_path / "out", model="m", h3_resolution=7, sources={})
    assert meta["n_pairs"] == 0 and meta["quantiles"] is None
    assert SearchSidecars.load(tmp_path / "out").percentile(np.array([0.5])) is None


def test_flow_04_job_writes_once_and_rebuilds_when_parts_change(tmp_path):
    bucket = Bucket(tmp_path / "bucket", tmp_path / "cache")
    paths, _ = _parts(tmp_path, [50, 50])
    keys = [f"embeddings/m/res7/part-{i:05d}.parquet" for i in range(2)]
    for path, key in zip(paths, keys, strict=True):
        bucket.upload(path, key)
    bucket.write_json("embeddings/m/res7/manifest.json", {"parts": keys, "n_embedded": 100})
    first = write_search_sidecars(bucket, model_filename="m.keras", h3_resolution=7)
    assert first == {"prefix": "indexes/m/res7/search/", "count": 100, "n_pairs": 4950, "skipped": False}
    assert sorted(bucket.list(search_prefix("m", 7))) == sorted(search_prefix("m", 7) + f for f in SIDECAR_FILES)
    names = json.loads(bucket.read_bytes(search_prefix("m", 7) + "classes.json"))["classes"]
    assert [c["name"] for c in names] == ["class 0", "class 1", "class 2"]  # no model sidecar: generic names
    assert write_search_sidecars(bucket, model_filename="m.keras", h3_resolution=7)["skipped"]

    worldcover = BUILTIN_LEGENDS["worldcover"]
    legend = {"name": "three", "classes": worldcover.to_dict()["classes"][:3]}
    bucket.write_json("models/m.json", {"legend": legend})
    (tmp_path / "other").mkdir()
    other, _ = _parts(tmp_path / "other", [60], seed=5)
    bucket.upload(other[0], keys[1])  # a part changed: the sidecars follow
    again = write_search_sidecars(bucket, model_filename="m.keras", h3_resolution=7)
    assert not again["skipped"] and again["count"] == 110
    paths = [bucket.download(search_prefix("m", 7) + file) for file in SIDECAR_FILES]
    sidecars = SearchSidecars.load(paths[0].parent)
    assert sidecars.class_names == tuple(worldcover.names[:3]) and sidecars.class_colors[0] == worldcover.colors[0]
    assert write_search_sidecars(bucket, model_filename="m.keras", h3_resolution=7, seed=1)["skipped"] is False
