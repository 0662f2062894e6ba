"""Qdrant adapters against real engines: qdrant-client's local mode and Qdrant Edge, same tests for both."""

from __future__ import annotations

import numpy as np
import pytest

from vectorgeo.errors import InvalidInputError, NotFoundError
from vectorgeo.geodesy import haversine_m
from vectorgeo.stores.base import GeoFilter, VectorStore
from vectorgeo.stores.qdrant import QdrantClientStore, QdrantEdgeStore, connect_qdrant

pytestmark = [
    pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning"),
    pytest.mark.filterwarnings("ignore:Local mode performs exact:UserWarning"),
]

DIM = 16
N_EUROPE, N_PACIFIC = 1800, 200
BACKENDS = ["client", "edge"]


def _dataset(seed: int = 7) -> dict[str, np.ndarray]:
    """Clustered unit vectors with land-like centres: Europe plus a patch straddling the antimeridian."""
    rng = np.random.default_rng(seed)
    n = N_EUROPE + N_PACIFIC
    centres = rng.normal(size=(20, DIM))
    vectors = centres[rng.integers(0, 20, n)] + 0.35 * rng.normal(size=(n, DIM))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    lat = np.concatenate([rng.uniform(36, 70, N_EUROPE), rng.uniform(-20, -10, N_PACIFIC)])
    lng_pacific = (rng.uniform(170, 190, N_PACIFIC) + 180) % 360 - 180
    lng = np.concatenate([rng.uniform(-10, 40, N_EUROPE), lng_pacific])
    h3 = np.uint64(0x0890000000000000) + rng.choice(10**9, n, replace=False).astype(np.uint64) * np.uint64(4096)
    return {"h3": h3, "lat": lat, "lng": lng, "vectors": vectors}


DATA = _dataset()


def _make(kind: str, path, **kwargs) -> VectorStore:
    if kind == "client":
        return QdrantClientStore(connect_qdrant(":memory:"), "cells", **kwargs)
    return QdrantEdgeStore(path / "shard", **kwargs)


def _load(store: VectorStore, data: dict[str, np.ndarray] = DATA) -> None:
    store.create(DIM, wipe=True)
    assert store.upsert(data["h3"], data["lat"], data["lng"], data["vectors"]) == len(data["h3"])
    store.finish_load()


@pytest.fixture(scope="module", params=BACKENDS)
def loaded(request, tmp_path_factory):
    """A store of each kind holding DATA (read-only tests share it)."""
    store = _make(request.param, tmp_path_factory.mktemp(request.param))
    _load(store)
    yield store
    store.close()


@pytest.fixture(params=BACKENDS)
def fresh(request, tmp_path):
    """Factory: a new, empty store of each kind."""
    made = []

    def _fresh(**kwargs) -> VectorStore:
        made.append(_make(request.param, tmp_path, **kwargs))
        return made[-1]

    yield _fresh
    for store in made:
        store.close()


def _brute_force(query: np.ndarray, k: int, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    scores = DATA["vectors"].astype(np.float64) @ (query / np.linalg.norm(query))
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    order = np.argsort(-scores)[:k]
    order = order[np.isfinite(scores[order])]
    return DATA["h3"][order].astype(np.uint64), scores[order]


def _queries(n: int, seed: int = 11) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return DATA["vectors"][rng.integers(0, len(DATA["h3"]), n)] + 0.2 * rng.normal(size=(n, DIM)).astype(np.float32)


def _assert_same(matches, ids: np.ndarray, scores: np.ndarray) -> None:
    assert [m.h3 for m in matches] == [int(i) for i in ids]
    np.testing.assert_allclose([m.score for m in matches], scores, atol=1e-5)


def _clear_radius(lat: float, lng: float, radius_km: float, margin_m: float = 50.0) -> float:
    """Grow the radius until no point lies within ``margin_m`` of its boundary."""
    dist = haversine_m(lat, lng, DATA["lat"], DATA["lng"])
    while np.any(np.abs(dist - radius_km * 1000) < margin_m):
        radius_km += 0.1
    return radius_km


def test_is_a_vector_store(loaded):
    assert isinstance(loaded, VectorStore)
    assert loaded.count() == len(DATA["h3"])


def test_connect_qdrant_without_url_means_edge():
    assert connect_qdrant(None, None) is None
    assert connect_qdrant("", "key") is None


@pytest.mark.parametrize("k", [1, 10, 50])
def test_search_equals_brute_force(loaded, k):
    for query in _queries(5):
        matches = loaded.search(query, k)
        _assert_same(matches, *_brute_force(query, k))
        # non-unit query vectors still give cosine scores
        _assert_same(loaded.search(query * 3.7, k), *_brute_force(query, k))
    m = loaded.search(DATA["vectors"][3], 1)[0]
    assert (m.h3, m.lat, m.lng) == (int(DATA["h3"][3]), pytest.approx(DATA["lat"][3]), pytest.approx(DATA["lng"][3]))


@pytest.mark.parametrize(
    ("lat", "lng", "radius_km"), [(48.85, 2.35, 400.0), (52.5, 13.4, 60.0), (60.0, 10.0, 1500.0), (45.0, 5.0, 12.0)]
)
def test_radius_filter_equals_brute_force(loaded, lat, lng, radius_km):
    geo = GeoFilter(lat=lat, lng=lng, radius_km=_clear_radius(lat, lng, radius_km))
    mask = geo.contains(DATA["lat"], DATA["lng"])
    for k, query in zip([5, 20, 100], _queries(3, seed=int(radius_km)), strict=True):
        matches = loaded.search(query, k, geo=geo)
        assert len(matches) == min(k, int(mask.sum()))
        _assert_same(matches, *_brute_force(query, k, mask))
        assert geo.contains(np.array([m.lat for m in matches]), np.array([m.lng for m in matches])).all()


@pytest.mark.parametrize(
    "bbox",
    [(-5.0, 40.0, 10.0, 50.0), (20.0, 60.0, 21.0, 61.0), (175.0, -20.0, -175.0, -10.0), (-180.0, -90.0, 180.0, 90.0)],
)
def test_bbox_filter_equals_brute_force(loaded, bbox):
    geo = GeoFilter(bbox=bbox)
    mask = geo.contains(DATA["lat"], DATA["lng"])
    for k, query in zip([5, 30], _queries(2, seed=3), strict=True):
        matches = loaded.search(query, k, geo=geo)
        assert len(matches) == min(k, int(mask.sum()))
        _assert_same(matches, *_brute_force(query, k, mask))


def test_antimeridian_bbox_returns_both_sides(loaded):
    geo = GeoFilter(bbox=(175.0, -20.0, -175.0, -10.0))
    matches = loaded.search(_queries(1)[0], 100, geo=geo)
    lngs = np.array([m.lng for m in matches])
    assert len(matches) == 100
    assert (lngs > 0).any() and (lngs < 0).any()
    assert ((lngs >= 175) | (lngs <= -175)).all()


def test_global_filters_match_contains(fresh):
    """Boxes touching the poles or spanning 360 degrees, huge and polar radii, on points all over the globe."""
    rng = np.random.default_rng(5)
    n = 1500
    lat = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    lat[:40] = rng.uniform(89.0, 89.99999, 40) * np.where(np.arange(40) % 2, 1, -1)
    lng = rng.uniform(-180, 180, n)
    ids = np.arange(1, n + 1, dtype=np.uint64)
    store = fresh()
    store.create(2)
    store.upsert(ids, lat, lng, np.tile(np.float32([1.0, 0.5]), (n, 1)))
    boxes = [(-180.0, -90.0, 180.0, 90.0), (0.0, -90.0, 180.0, 90.0), (170.0, -90.0, -170.0, 90.0)]
    boxes += [(-180.0, 60.0, 180.0, 90.0), (-20.0, -90.0, 100.0, -30.0), (179.0, -90.0, -179.0, 90.0)]
    for _ in range(10):
        west, east = rng.uniform(-180, 180, 2)
        south, north = np.sort(rng.uniform(-90, 90, 2))
        boxes.append((float(west), float(south), float(east), float(north)))
    polygons = [((-180.0, -90.0), (0.0, -90.0), (180.0, -90.0), (180.0, 90.0), (0.0, 90.0), (-180.0, 90.0)),
                ((-179.0, 0.0), (0.0, 0.0), (179.0, 0.0), (179.0, 90.0), (0.0, 90.0), (-179.0, 90.0)),
                ((-180.0, -80.0), (0.0, -80.0), (180.0, -80.0), (180.0, 80.0), (0.0, 80.0), (-180.0, 80.0)),
                ((-180.0, 60.0), (0.0, 60.0), (180.0, 60.0), (180.0, 90.0), (0.0, 89.0), (-180.0, 90.0))]  # fmt: skip
    for _phase in ("payload scan", "geo index"):
        for polygon in polygons:  # reaching the poles or spanning 360 degrees, where Qdrant's geo index fails
            geo = GeoFilter(polygon=polygon)
            got = {m.h3 for m in store.search(np.float32([1.0, 0.5]), n, geo=geo)}
            assert got == set(ids[geo.contains(lat, lng)].tolist()), polygon
        for bbox in boxes:
            geo = GeoFilter(bbox=bbox)
            got = {m.h3 for m in store.search(np.float32([1.0, 0.5]), n, geo=geo)}
            assert got == set(ids[geo.contains(lat, lng)].tolist()), bbox
        for clat, clng, radius_km in [
            (89.5, 0.0, 300.0),
            (-10.0, 179.9, 2000.0),
            (0.0, 0.0, 19_000.0),
            (40.0, -3.0, 1.0),
        ]:
            geo = GeoFilter(lat=clat, lng=clng, radius_km=radius_km)
            dist = haversine_m(clat, clng, lat, lng)
            clear = np.abs(dist - radius_km * 1000) > 1.0
            got = {m.h3 for m in store.search(np.float32([1.0, 0.5]), n, geo=geo)}
            assert got & set(ids[clear].tolist()) == set(ids[clear & (dist <= radius_km * 1000)].tolist())
        store.finish_load()


def test_exclude_ids(loaded):
    query = _queries(1, seed=5)[0]
    top_ids, _ = _brute_force(query, 15)
    exclude = tuple(int(i) for i in top_ids[:5])
    mask = ~np.isin(DATA["h3"], top_ids[:5])
    _assert_same(loaded.search(query, 10, exclude=exclude), *_brute_force(query, 10, mask))
    geo = GeoFilter(bbox=(-10.0, 36.0, 40.0, 70.0))
    mask &= geo.contains(DATA["lat"], DATA["lng"])
    _assert_same(loaded.search(query, 10, geo=geo, exclude=exclude), *_brute_force(query, 10, mask))


def test_fetch_round_trip_and_missing(loaded):
    for i in (0, 1234, N_EUROPE + 5):
        vector, lat, lng = loaded.fetch(int(DATA["h3"][i]))
        assert vector.dtype == np.float32
        np.testing.assert_allclose(vector, DATA["vectors"][i], atol=1e-6)
        assert (lat, lng) == (pytest.approx(DATA["lat"][i], abs=1e-12), pytest.approx(DATA["lng"][i], abs=1e-12))
    with pytest.raises(NotFoundError, match="12345"):
        loaded.fetch(12345)


def test_bad_input(loaded):
    with pytest.raises(InvalidInputError, match=r"k must be"):
        loaded.search(DATA["vectors"][0], 0)
    with pytest.raises(InvalidInputError, match=r"8 .*16|16.*8"):
        loaded.search(np.ones(8, dtype=np.float32), 3)
    with pytest.raises(InvalidInputError, match=r"17 .*16"):
        loaded.upsert(DATA["h3"][:2], DATA["lat"][:2], DATA["lng"][:2], np.ones((2, 17), dtype=np.float32))
    with pytest.raises(InvalidInputError, match="zero or non-finite"):
        loaded.upsert(DATA["h3"][:1], DATA["lat"][:1], DATA["lng"][:1], np.zeros((1, DIM), dtype=np.float32))
    with pytest.raises(InvalidInputError, match="same length"):
        loaded.upsert(DATA["h3"][:2], DATA["lat"][:1], DATA["lng"][:2], DATA["vectors"][:2])
    assert loaded.count() == len(DATA["h3"])


def test_idempotent_upsert_and_wipe(fresh):
    store = fresh()
    with pytest.raises(NotFoundError, match="create"):
        store.count()
    _load(store)
    n = len(DATA["h3"])
    rng = np.random.default_rng(1)
    new = rng.normal(size=(100, DIM)).astype(np.float32)
    new /= np.linalg.norm(new, axis=1, keepdims=True)
    store.upsert(DATA["h3"][:100], DATA["lat"][:100], DATA["lng"][:100], new)
    store.upsert(DATA["h3"][:100], DATA["lat"][:100], DATA["lng"][:100], new)
    store.finish_load()
    assert store.count() == n
    np.testing.assert_allclose(store.fetch(int(DATA["h3"][42]))[0], new[42], atol=1e-6)
    assert store.search(new[7], 1)[0].h3 == int(DATA["h3"][7])

    store.create(DIM)  # same dim, no wipe: keeps the data
    assert store.count() == n
    with pytest.raises(InvalidInputError, match=r"16-long.*32"):
        store.create(32)
    store.create(DIM, wipe=True)
    assert store.count() == 0
    assert store.search(new[0], 5) == []
    store.create(32, wipe=True)
    store.upsert(DATA["h3"][:3], DATA["lat"][:3], DATA["lng"][:3], np.ones((3, 32), dtype=np.float32))
    assert store.count() == 3


def test_ids_above_2_pow_63(fresh):
    store = fresh()
    store.create(4)
    ids = np.array([2**63 + 1, 2**64 - 5, 0x08A1F0000000FFFF], dtype=np.uint64)
    vectors = np.eye(4, dtype=np.float32)[:3]
    store.upsert(ids, np.array([10.0, -10.0, 0.0]), np.array([20.0, 179.5, -179.5]), vectors)
    assert store.count() == 3
    for i, v in zip(ids.tolist(), vectors, strict=True):
        assert store.search(v, 1)[0].h3 == i
        np.testing.assert_allclose(store.fetch(i)[0], v)
    rest = store.search(vectors[0], 3, exclude=(2**63 + 1,))
    assert sorted(m.h3 for m in rest) == sorted(ids.tolist()[1:])


def test_options_on_disk_and_int8(fresh):
    store = fresh(on_disk=True, quantization=True, hnsw_ef=64)
    _load(store)
    for i in (0, 500, 1999):
        assert store.search(DATA["vectors"][i], 1)[0].h3 == int(DATA["h3"][i])


def test_edge_persists_across_close_and_reopen(tmp_path):
    store = QdrantEdgeStore(tmp_path / "shard")
    store.create(DIM)
    store.upsert(DATA["h3"], DATA["lat"], DATA["lng"], DATA["vectors"])  # no finish_load: the WAL must carry it
    query = _queries(1)[0]
    before = store.search(query, 10, geo=GeoFilter(lat=50.0, lng=10.0, radius_km=800.0))
    store.close()
    with pytest.raises(NotFoundError, match="closed"):
        store.count()

    reopened = QdrantEdgeStore(tmp_path / "shard")
    try:
        assert reopened.count() == len(DATA["h3"])
        assert reopened.search(query, 10, geo=GeoFilter(lat=50.0, lng=10.0, radius_km=800.0)) == before
        np.testing.assert_allclose(reopened.fetch(int(DATA["h3"][9]))[0], DATA["vectors"][9], atol=1e-6)
        with pytest.raises(InvalidInputError, match=r"16-long.*8"):
            reopened.create(8)
        reopened.finish_load()
    finally:
        reopened.close()
    again = QdrantEdgeStore(tmp_path / "shard")
    assert again.count() == len(DATA["h3"])
    again.close()


def test_edge_refuses_to_wipe_foreign_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(InvalidInputError, match="refusing"):
        QdrantEdgeStore(tmp_path).create(DIM, wipe=True)
    assert (tmp_path / "notes.txt").exists()


def test_grid_prefilter_is_used_only_when_every_point_has_a_key(tmp_path):
    """A shard loaded before points carried a grid key still filters correctly, by its geo index alone."""
    from qdrant_edge import Point, UpdateOperation

    from vectorgeo.stores.qdrant import GRID_FIELD, LOCATION_FIELD

    geo = GeoFilter(lat=50.0, lng=10.0, radius_km=_clear_radius(50.0, 10.0, 800.0))
    mask = geo.contains(DATA["lat"], DATA["lng"])
    query = _queries(1, seed=21)[0]
    expected = _brute_force(query, 40, mask)

    current = QdrantEdgeStore(tmp_path / "current")
    _load(current)
    assert current._grid_indexed()
    _assert_same(current.search(query, 40, geo=geo), *expected)
    assert GRID_FIELD in str(current._filter(geo, ()))
    current.close()

    legacy = QdrantEdgeStore(tmp_path / "legacy")
    legacy.create(DIM)
    old_style = [  # what earlier versions wrote: the geo point only
        Point(int(i), v.tolist(), {LOCATION_FIELD: {"lat": float(a), "lon": float(o)}})
        for i, v, a, o in zip(DATA["h3"], DATA["vectors"], DATA["lat"], DATA["lng"], strict=True)
    ]
    legacy._shard.update(UpdateOperation.upsert_points(old_style))
    legacy.finish_load()
    assert not legacy._grid_indexed()
    _assert_same(legacy.search(query, 40, geo=geo), *expected)
    legacy.upsert(DATA["h3"], DATA["lat"], DATA["lng"], DATA["vectors"])  # re-loading adds the keys
    assert legacy._grid_indexed()
    _assert_same(legacy.search(query, 40, geo=geo), *expected)
    legacy.close()


def test_client_grid_prefilter_matches_contains(tmp_path):
    """The client's grid conditions, evaluated by qdrant-client's local mode, select exactly the filter's points."""
    store = QdrantClientStore(connect_qdrant(":memory:"), "grid")
    _load(store)
    store._grid_ready = True  # local mode keeps no payload indexes; force the server's plan
    query = _queries(1, seed=22)[0]
    for geo in [
        GeoFilter(lat=60.0, lng=10.0, radius_km=_clear_radius(60.0, 10.0, 1500.0)),
        GeoFilter(bbox=(175.0, -20.0, -175.0, -10.0)),
        GeoFilter(bbox=(-5.0, 40.0, 10.0, 50.0)),
    ]:
        mask = geo.contains(DATA["lat"], DATA["lng"])
        _assert_same(store.search(query, 50, geo=geo), *_brute_force(query, 50, mask))
    store.close()
