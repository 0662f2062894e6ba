"""FAISS store against numpy brute force on clustered unit vectors with land-like locations."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")

from vectorgeo.errors import InvalidInputError, NotFoundError
from vectorgeo.stores import faiss as faiss_store
from vectorgeo.stores.base import GeoFilter, VectorStore
from vectorgeo.stores.faiss import INDEX_FILES, FaissStore, is_current

DIM = 16
N = 5000
K = 10
# Land-like cluster centres (lat, lng): Europe, Sahel, Amazon, Great Plains, India, Fiji (antimeridian).
CENTRES = [(48.0, 8.0), (13.0, 2.0), (-5.0, -62.0), (40.0, -100.0), (22.0, 79.0), (-17.5, 179.5)]
LONELY = (-52.0, -140.0)  # three cells alone in the South Pacific


def _rows(seed: int = 0, n: int = N) -> dict[str, np.ndarray]:
    """Clustered unit vectors (dim 16) at clustered locations; ids spread over all of uint64."""
    rng = np.random.default_rng(seed)
    topics = rng.normal(size=(12, DIM))
    vec = topics[rng.integers(0, 12, n)] + 0.35 * rng.normal(size=(n, DIM))
    vec = (vec / np.linalg.norm(vec, axis=1, keepdims=True)).astype(np.float32)
    centre = np.array(CENTRES)[rng.integers(0, len(CENTRES), n)]
    lat = np.clip(centre[:, 0] + rng.normal(scale=4.0, size=n), -89.0, 89.0)
    lng = (centre[:, 1] + rng.normal(scale=4.0, size=n) + 180.0) % 360.0 - 180.0
    lat[:3], lng[:3] = LONELY[0] + np.array([0.0, 0.1, -0.1]), LONELY[1] + np.array([0.0, 0.1, -0.1])
    h3 = rng.integers(0, 2**64 - 2, size=n, dtype=np.uint64)
    h3[3] = np.uint64(2**64 - 1)
    h3[4] = np.uint64(2**63)
    assert len(np.unique(h3)) == n
    return {"h3": h3, "lat": lat, "lng": lng, "vectors": vec}


DATA = _rows()
_rng = np.random.default_rng(1)
# Queries near stored cells (the "more like this cell" use), plus 10 from unrelated topics.
QUERIES = np.concatenate(
    [DATA["vectors"][_rng.choice(N, 40, replace=False)] + 0.2 * _rng.normal(size=(40, DIM)), _rows(1, 10)["vectors"]]
).astype(np.float32)


def _brute(q: np.ndarray, k: int | None, mask: np.ndarray | None = None) -> tuple[list[int], np.ndarray]:
    """Reference: ids and scores best first (ties by id), over rows where ``mask`` holds."""
    scores = DATA["vectors"] @ (q / np.linalg.norm(q))
    idx = np.flatnonzero(mask) if mask is not None else np.arange(N)
    order = idx[np.lexsort((DATA["h3"][idx], -scores[idx]))]
    order = order[:k] if k is not None else order
    return DATA["h3"][order].tolist(), scores[order]


def _load(directory, **kwargs) -> FaissStore:
    store = FaissStore(directory, **kwargs)
    store.create(DIM, wipe=True)
    for part in np.array_split(np.arange(N), 3):
        store.upsert(DATA["h3"][part], DATA["lat"][part], DATA["lng"][part], DATA["vectors"][part])
    store.finish_load(sources={"embeddings/part-0.parquet": "abc"}, model="test", h3_resolution=7)
    return store


@pytest.fixture(scope="module")
def flat(tmp_path_factory) -> FaissStore:
    """Flat index; exact_max_rows=0 so every query goes through the FAISS index."""
    return _load(tmp_path_factory.mktemp("flat"), exact_max_rows=0)


@pytest.fixture(scope="module")
def hnsw(tmp_path_factory) -> FaissStore:
    """HNSW forced by a low flat threshold; filters go through the index with an IDSelector."""
    return _load(tmp_path_factory.mktemp("hnsw"), flat_max_rows=1000, exact_max_rows=0)


def _ids(matches) -> list[int]:
    return [m.h3 for m in matches]


def test_is_a_vector_store(flat):
    assert isinstance(flat, VectorStore)
    assert flat.count() == N
    meta = json.loads((flat.directory / "metadata.json").read_text())
    assert meta["index"]["type"] == "flat"
    assert (meta["count"], meta["dim"], meta["model"], meta["h3_resolution"]) == (N, DIM, "test", 7)
    assert sorted(os.listdir(flat.directory)) == sorted(INDEX_FILES)


def test_flat_search_equals_brute_force(flat):
    for q in QUERIES:
        got = flat.search(q, K)
        ids, scores = _brute(q, K)
        assert _ids(got) == ids
        np.testing.assert_allclose([m.score for m in got], scores, atol=1e-5)


def test_hnsw_recall(hnsw):
    meta = json.loads((hnsw.directory / "metadata.json").read_text())
    assert meta["index"]["type"] == "hnsw"
    hits = sum(len(set(_ids(hnsw.search(q, K))) & set(_brute(q, K)[0])) for q in QUERIES)
    assert hits / (K * len(QUERIES)) >= 0.95


def test_ivfpq_recall(tmp_path):
    store = _load(tmp_path, flat_max_rows=100, ivfpq_min_rows=1000, exact_max_rows=0)
    assert json.loads((tmp_path / "metadata.json").read_text())["index"]["type"] == "ivfpq"
    hits = 0
    for q in QUERIES:
        got = store.search(q, K)
        assert [m.score for m in got] == sorted((m.score for m in got), reverse=True)
        hits += len(set(_ids(got)) & set(_brute(q, K)[0]))
    assert hits / (K * len(QUERIES)) >= 0.9
    geo = GeoFilter(lat=48.0, lng=8.0, radius_km=800.0)
    got = store.search(QUERIES[0], K, geo=geo)
    assert len(got) == K and geo.contains([m.lat for m in got], [m.lng for m in got]).all()


GEOS = [
    GeoFilter(lat=48.0, lng=8.0, radius_km=300.0),
    GeoFilter(lat=13.0, lng=2.0, radius_km=1000.0),
    GeoFilter(bbox=(-110.0, 30.0, -90.0, 50.0)),
    GeoFilter(bbox=(170.0, -30.0, -170.0, -5.0)),  # crosses the antimeridian
]


@pytest.mark.parametrize("exact_max_rows", [0, 100_000], ids=["index+selector", "brute-force"])
@pytest.mark.parametrize("geo", GEOS, ids=["r300", "r1000", "bbox", "antimeridian"])
def test_filters_equal_brute_force(flat, geo, exact_max_rows):
    flat.exact_max_rows = exact_max_rows
    try:
        mask = geo.contains(DATA["lat"], DATA["lng"])
        assert mask.sum() >= K
        for q in QUERIES[:10]:
            got = flat.search(q, K, geo=geo)
            ids, scores = _brute(q, K, mask)
            assert _ids(got) == ids
            np.testing.assert_allclose([m.score for m in got], scores, atol=1e-5)
    finally:
        flat.exact_max_rows = 0


def test_antimeridian_box_holds_both_sides(flat):
    got = flat.search(QUERIES[0], 200, geo=GEOS[3])
    lngs = np.array([m.lng for m in got])
    assert (lngs > 170).any() and (lngs < -170).any() and not ((lngs > -170) & (lngs < 170)).any()


@pytest.mark.parametrize("geo", GEOS, ids=["r300", "r1000", "bbox", "antimeridian"])
def test_hnsw_filters_return_k_inside(hnsw, geo):
    mask = geo.contains(DATA["lat"], DATA["lng"])
    hits = 0
    for q in QUERIES[:10]:
        got = hnsw.search(q, K, geo=geo)
        assert len(got) == K
        assert geo.contains([m.lat for m in got], [m.lng for m in got]).all()
        hits += len(set(_ids(got)) & set(_brute(q, K, mask)[0]))
    assert hits / (10 * K) >= 0.9


@pytest.mark.parametrize("name", ["flat", "hnsw"])
def test_three_qualifying_rows_return_three(request, name):
    store = request.getfixturevalue(name)
    geo = GeoFilter(lat=LONELY[0], lng=LONELY[1], radius_km=50.0)
    got = store.search(QUERIES[0], K, geo=geo)
    assert sorted(_ids(got)) == sorted(DATA["h3"][:3].tolist())
    assert store.search(QUERIES[0], K, geo=GeoFilter(bbox=(0.0, -80.0, 1.0, -79.0))) == []


@pytest.mark.parametrize("name", ["flat", "hnsw"])
def test_exclude(request, name):
    store = request.getfixturevalue(name)
    q = QUERIES[3]
    top = _brute(q, 3)[0]
    got = store.search(q, K, exclude=(*top, 12345))
    assert not set(top) & set(_ids(got)) and len(got) == K
    if name == "flat":
        mask = ~np.isin(DATA["h3"], top)
        assert _ids(got) == _brute(q, K, mask)[0]
    geo = GeoFilter(lat=LONELY[0], lng=LONELY[1], radius_km=50.0)
    got = store.search(q, K, geo=geo, exclude=(int(DATA["h3"][1]),))
    assert sorted(_ids(got)) == sorted(DATA["h3"][[0, 2]].tolist())


def test_threshold_query_equals_brute_force(flat):
    q = QUERIES[5]
    for geo in (None, GEOS[1], GEOS[3]):
        mask = geo.contains(DATA["lat"], DATA["lng"]) if geo else None
        ids, scores = _brute(q, None, mask)
        got = flat.threshold_query(q, 0.5, geo=geo)
        assert _ids(got) == [i for i, s in zip(ids, scores, strict=True) if s >= 0.5]
        assert len(got) > 0
    assert flat.threshold_query(q, 1.5) == []


def test_fetch_round_trip_and_missing(flat):
    for i in (0, 3, 4, 4999):
        vec, lat, lng = flat.fetch(int(DATA["h3"][i]))
        np.testing.assert_allclose(vec, DATA["vectors"][i], atol=1e-6)
        assert (lat, lng) == (DATA["lat"][i], DATA["lng"][i])
    with pytest.raises(NotFoundError, match="12345"):
        flat.fetch(12345)


def test_uint64_ids_round_trip(flat):
    big = [int(DATA["h3"][3]), int(DATA["h3"][4])]
    assert big == [2**64 - 1, 2**63]
    for h, i in zip(big, (3, 4), strict=True):
        got = flat.search(DATA["vectors"][i], 1)
        assert got[0].h3 == h and isinstance(got[0].h3, int) and got[0].score == pytest.approx(1.0, abs=1e-5)
    assert all(m.h3 >= 0 for m in flat.search(QUERIES[0], 100))


def test_upsert_is_idempotent(tmp_path):
    store = FaissStore(tmp_path)
    store.create(DIM)
    sl = slice(0, 100)
    args = (DATA["h3"][sl], DATA["lat"][sl], DATA["lng"][sl], DATA["vectors"][sl])
    assert store.upsert(*args) == 100
    store.upsert(*args)
    assert store.count() == 100  # pending rows count once
    store.finish_load()
    store.upsert(*args)
    assert store.count() == 100
    new = DATA["vectors"][50] * -1
    dup = np.array([DATA["h3"][7], DATA["h3"][7]])
    store.upsert(dup, [1.0, 2.0], [3.0, 4.0], np.stack([new, new * -1]))  # the last of a batch wins
    store.finish_load()
    assert store.count() == 100
    vec, lat, lng = FaissStore(tmp_path).fetch(int(DATA["h3"][7]))
    np.testing.assert_allclose(vec, -new, atol=1e-6)
    assert (lat, lng) == (2.0, 4.0)


def test_search_before_finish_load_is_exact(tmp_path):
    store = FaissStore(tmp_path)
    store.upsert(DATA["h3"], DATA["lat"], DATA["lng"], DATA["vectors"])
    assert _ids(store.search(QUERIES[0], K)) == _brute(QUERIES[0], K)[0]
    assert not (tmp_path / "metadata.json").exists()


def test_persistence(flat, tmp_path):
    again = FaissStore(flat.directory, exact_max_rows=0)
    assert isinstance(again._vectors.base, np.memmap) and not again._vectors.flags.writeable
    assert again.count() == N
    for q in QUERIES[:10]:
        assert again.search(q, K) == flat.search(q, K)
        assert again.search(q, K, geo=GEOS[0]) == flat.search(q, K, geo=GEOS[0])
    h = int(DATA["h3"][10])
    np.testing.assert_array_equal(again.fetch(h)[0], flat.fetch(h)[0])
    again.close()


def _mapped(path) -> list[str]:
    """Permissions of this process's memory maps of ``path`` (Linux /proc)."""
    lines = Path("/proc/self/maps").read_text().splitlines()
    return [line.split()[1] for line in lines if line.endswith(" " + str(path))]


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads /proc/self/maps (Linux)")
@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_index_is_mapped_read_only_and_answers_as_when_read_into_memory(kind, tmp_path, monkeypatch):
    sizes = {"flat": {}, "hnsw": {"flat_max_rows": 1000}, "ivfpq": {"flat_max_rows": 100, "ivfpq_min_rows": 1000}}
    _load(tmp_path, exact_max_rows=0, **sizes[kind]).close()
    mapped = FaissStore(tmp_path, exact_max_rows=0)
    assert json.loads((tmp_path / "metadata.json").read_text())["index"]["type"] == kind
    index_maps = _mapped((tmp_path / "index.faiss").resolve())
    assert index_maps and all("w" not in perms for perms in index_maps)  # shared by processes, never written
    assert all("w" not in perms for perms in _mapped((tmp_path / "vectors.npy").resolve()))
    monkeypatch.setattr(faiss_store, "_read_index", lambda faiss, path: faiss.read_index(str(path)))
    in_memory = FaissStore(tmp_path, exact_max_rows=0)
    for q in QUERIES[:20]:
        assert mapped.search(q, K) == in_memory.search(q, K)
        assert mapped.search(q, K, geo=GEOS[1]) == in_memory.search(q, K, geo=GEOS[1])
    mapped.close()
    in_memory.close()


def test_threads_search_at_once(hnsw):
    """Reads are thread-safe: 8 threads searching together get what one thread gets alone."""
    from concurrent.futures import ThreadPoolExecutor

    assert FaissStore.thread_safe
    jobs = [(q, GEOS[i % 2] if i % 3 == 0 else None) for i, q in enumerate(QUERIES)] * 4
    alone = [hnsw.search(q, K, geo=geo) for q, geo in jobs]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda job: hnsw.search(job[0], K, geo=job[1]), jobs))
    assert together == alone


def test_is_current(flat, tmp_path):
    sources = {"embeddings/part-0.parquet": "abc"}
    assert is_current(flat.directory, sources)
    assert not is_current(flat.directory, {"embeddings/part-0.parquet": "abd"})
    assert not is_current(flat.directory, {**sources, "embeddings/part-1.parquet": "x"})
    assert not is_current(tmp_path, sources)
    store = FaissStore(tmp_path)
    store.upsert(DATA["h3"][:10], DATA["lat"][:10], DATA["lng"][:10], DATA["vectors"][:10])
    store.finish_load(sources=sources)
    assert is_current(tmp_path, sources)
    store.finish_load(sources={"embeddings/part-0.parquet": "changed"})
    assert not is_current(tmp_path, sources)


def _leftovers(directory) -> list[str]:
    return [name for name in os.listdir(directory) if ".tmp-" in name]


def test_failed_write_keeps_previous_build(tmp_path, monkeypatch):
    store = FaissStore(tmp_path)
    store.upsert(DATA["h3"][:100], DATA["lat"][:100], DATA["lng"][:100], DATA["vectors"][:100])
    store.finish_load(sources={"a": "1"})
    store.upsert(DATA["h3"][100:200], DATA["lat"][100:200], DATA["lng"][100:200], DATA["vectors"][100:200])

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(store._faiss, "write_index", boom)
    with pytest.raises(OSError, match="disk full"):
        store.finish_load(sources={"a": "2"})
    assert _leftovers(tmp_path) == []
    assert FaissStore(tmp_path).count() == 100  # the previous build, untouched
    assert is_current(tmp_path, {"a": "1"})


def test_failed_rename_leaves_no_build(tmp_path, monkeypatch):
    store = FaissStore(tmp_path)
    store.upsert(DATA["h3"][:100], DATA["lat"][:100], DATA["lng"][:100], DATA["vectors"][:100])
    store.finish_load(sources={"a": "1"})
    calls = []
    real_replace = os.replace

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            raise OSError("killed midway")
        real_replace(src, dst)

    monkeypatch.setattr(faiss_store.os, "replace", flaky)
    store.upsert(DATA["h3"][100:200], DATA["lat"][100:200], DATA["lng"][100:200], DATA["vectors"][100:200])
    with pytest.raises(OSError, match="killed midway"):
        store.finish_load(sources={"a": "2"})
    assert _leftovers(tmp_path) == []
    assert not (tmp_path / "metadata.json").exists()
    assert not is_current(tmp_path, {"a": "1"}) and not is_current(tmp_path, {"a": "2"})
    assert FaissStore(tmp_path).count() == 0  # a half-replaced directory is never read as a build


def test_bad_input(tmp_path, flat):
    store = FaissStore(tmp_path)
    store.create(DIM)
    with pytest.raises(InvalidInputError, match="8-d"):
        store.upsert(DATA["h3"][:2], DATA["lat"][:2], DATA["lng"][:2], np.ones((2, 8)))
    with pytest.raises(InvalidInputError, match="wipe=True"):
        flat.create(DIM + 1)
    with pytest.raises(InvalidInputError, match="8-d"):
        flat.search(np.ones(8), K)
    with pytest.raises(InvalidInputError, match="k must be"):
        flat.search(QUERIES[0], 0)
    with pytest.raises(InvalidInputError, match="non-zero"):
        flat.search(np.zeros(DIM), K)
    with pytest.raises(InvalidInputError, match="non-negative"):
        store.upsert(np.array([-1]), [0.0], [0.0], np.ones((1, DIM)))
    with pytest.raises(InvalidInputError, match="lat must"):
        store.upsert(np.array([1], np.uint64), [95.0], [0.0], np.ones((1, DIM)))


def test_empty_store(tmp_path):
    store = FaissStore(tmp_path)
    store.create(DIM)
    store.finish_load()
    again = FaissStore(tmp_path)
    assert again.count() == 0
    assert again.search(QUERIES[0], K) == []
    assert again.threshold_query(QUERIES[0], 0.0) == []
    with pytest.raises(NotFoundError):
        again.fetch(1)
