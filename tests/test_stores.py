"""The same calls against every store adapter, through the factory: the answers must agree.

Real engines only: Qdrant Edge (embedded), an embedded PostgreSQL with
pgvector, FAISS files, and qdrant-client's in-process mode.
"""

import numpy as np
import pytest

from vectorgeo.errors import InvalidInputError, NotFoundError, StoreUnavailableError
from vectorgeo.stores import GeoFilter, VectorStore, open_store

pytestmark = pytest.mark.filterwarnings("ignore:Local mode performs exact:UserWarning")  # qdrant-client's own note

N, DIM = 3000, 16


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(11)
    centres = rng.normal(size=(12, DIM))
    vectors = centres[rng.integers(0, 12, N)] + 0.35 * rng.normal(size=(N, DIM))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    lat, lng = rng.uniform(36, 60, N), rng.uniform(-10, 30, N)
    h3 = np.sort(rng.choice(2**62, N, replace=False).astype(np.uint64) + np.uint64(2**59))
    queries = vectors[rng.choice(N, 8, replace=False)] + 0.05 * rng.normal(size=(8, DIM)).astype(np.float32)
    return h3, lat, lng, vectors, queries


@pytest.fixture(scope="module", params=["qdrant-edge", "qdrant-client", "pgvector", "faiss"])
def store(request, data, tmp_path_factory):
    kind, options = request.param.split("-")[0], {}
    if request.param == "qdrant-client":
        options["qdrant_url"] = ":memory:"
    s = open_store(kind, "congruence", data_dir=tmp_path_factory.mktemp(request.param), **options)
    h3, lat, lng, vectors, _ = data
    s.create(DIM, wipe=True)
    s.upsert(h3[:1500], lat[:1500], lng[:1500], vectors[:1500])
    s.upsert(h3[1500:], lat[1500:], lng[1500:], vectors[1500:])
    s.upsert(h3[:10], lat[:10], lng[:10], vectors[:10])  # reloading is idempotent
    s.finish_load()
    yield s
    s.close()


def _brute_force(data, query, k, geo=None, exclude=()):
    h3, lat, lng, vectors, _ = data
    q = query / np.linalg.norm(query)
    scores = vectors @ q
    ok = np.ones(len(h3), bool) if geo is None else geo.contains(lat, lng)
    ok &= ~np.isin(h3, np.array(exclude, dtype=np.uint64))
    idx = np.flatnonzero(ok)
    order = idx[np.argsort(-scores[idx], kind="stable")][:k]
    return [int(h) for h in h3[order]], scores[order]


def test_is_a_vector_store_and_counts(store):
    assert isinstance(store, VectorStore)
    assert store.count() == N


@pytest.mark.parametrize(
    "geo",
    [
        None,
        GeoFilter(lat=48.0, lng=10.0, radius_km=400.0),
        GeoFilter(lat=40.0, lng=0.0, radius_km=1500.0),
        GeoFilter(bbox=(0.0, 45.0, 12.0, 52.0)),
        GeoFilter(polygon=((0.0, 40.0), (20.0, 40.0), (20.0, 44.0), (6.0, 44.0), (6.0, 55.0), (0.0, 55.0))),
        GeoFilter(polygon=((5.0, 50.0), (15.0, 38.0), (25.0, 50.0), (15.0, 46.0), (5.0, 50.0))),
    ],
    ids=["none", "radius-400km", "radius-1500km", "bbox", "polygon-L", "polygon-arrowhead"],
)
def test_same_answers_as_brute_force(store, data, geo):
    for query in data[4]:
        expected, scores = _brute_force(data, query, 10, geo)
        got = store.search(query, 10, geo=geo)
        assert [m.h3 for m in got] == expected
        np.testing.assert_allclose([m.score for m in got], scores, atol=1e-4)
        if geo is not None:
            assert geo.contains(np.array([m.lat for m in got]), np.array([m.lng for m in got])).all()


def test_exclude_and_fetch(store, data):
    h3, lat, lng, vectors, queries = data
    top, _ = _brute_force(data, queries[0], 3)
    got = store.search(queries[0], 5, exclude=tuple(top))
    assert not set(top) & {m.h3 for m in got}
    assert [m.h3 for m in got] == _brute_force(data, queries[0], 5, exclude=tuple(top))[0]
    vec, la, ln = store.fetch(int(h3[7]))
    np.testing.assert_allclose(vec, vectors[7], atol=1e-6)
    assert (la, ln) == pytest.approx((lat[7], lng[7]))
    with pytest.raises(NotFoundError):
        store.fetch(12345)


def test_fetch_many_answers_what_was_loaded(store, data):
    """Every store: the ids present, in request order, once each, with their vectors and centres."""
    h3, lat, lng, vectors, _ = data
    rows = np.random.default_rng(5).choice(N, 700, replace=False)
    missing = np.array([12345, 2**63 + 7, 99], np.uint64)  # never loaded
    ask = np.concatenate([h3[rows[:300]], missing[:2], h3[rows[300:]], missing[2:], h3[rows[:5]]])  # repeats last
    found, vecs, la, ln = store.fetch_many(ask)
    assert (found.dtype, vecs.dtype, la.dtype, ln.dtype) == (np.uint64, np.float32, np.float64, np.float64)
    np.testing.assert_array_equal(found, h3[rows])
    np.testing.assert_allclose(vecs, vectors[rows], atol=1e-6)
    np.testing.assert_allclose(la, lat[rows], rtol=0, atol=1e-9)
    np.testing.assert_allclose(ln, lng[rows], rtol=0, atol=1e-9)
    everything = store.fetch_many(h3[::-1])  # more ids than one request of any adapter takes
    np.testing.assert_array_equal(everything[0], h3[::-1])
    np.testing.assert_allclose(everything[1], vectors[::-1], atol=1e-6)
    as_list = store.fetch_many([int(h) for h in h3[rows[:3]]] + [2**63 + 7])  # Python ints work too
    np.testing.assert_array_equal(as_list[0], h3[rows[:3]])
    for ids in (np.empty(0, np.uint64), missing, []):
        assert [a.shape for a in store.fetch_many(ids)] == [(0,), (0, DIM), (0,), (0,)]
    with pytest.raises(InvalidInputError, match="cell ids must be"):
        store.fetch_many(np.array([1.5]))
    with pytest.raises(InvalidInputError, match="non-negative"):
        store.fetch_many(np.array([-1, 3]))


def test_scores_are_comparable_across_stores(store, data):
    """Cosine similarity on every store: the top match of a stored vector is itself, score 1."""
    h3, _, _, vectors, _ = data
    best = store.search(vectors[42], 1)[0]
    assert best.h3 == int(h3[42]) and best.score == pytest.approx(1.0, abs=1e-5)


def test_unknown_store():
    with pytest.raises(InvalidInputError, match="unknown store 'milvus'"):
        open_store("milvus", "x", data_dir="/tmp")


def test_unreachable_servers_raise_one_clear_error():
    with pytest.raises(StoreUnavailableError, match=r"cannot reach Qdrant at http://127\.0\.0\.1:9"):
        open_store("qdrant", "x", data_dir="/tmp", qdrant_url="http://127.0.0.1:9")
    with pytest.raises(StoreUnavailableError, match=r"cannot connect to PostgreSQL at 127\.0\.0\.1:9/db") as info:
        open_store("pgvector", "x", data_dir="/tmp", database_url="postgresql://user:secret@127.0.0.1:9/db")
    assert "secret" not in str(info.value)
    with pytest.raises(StoreUnavailableError, match=r"127\.0\.0\.1:9/db") as info:  # key=value DSNs too
        open_store("pgvector", "x", data_dir="/tmp", database_url="host=127.0.0.1 port=9 dbname=db password=secret")
    assert "secret" not in str(info.value)


def test_a_missing_collection_is_named(tmp_path):
    store = open_store("qdrant", "never_created", data_dir=tmp_path)
    with pytest.raises(NotFoundError, match="create"):
        store.search(np.ones(DIM, np.float32), 3)
