"""The search service on real stores (FAISS, Qdrant Edge, embedded PostgreSQL) against numpy brute force."""

from __future__ import annotations

import h3.api.basic_int as h3i
import numpy as np
import pytest
from search_data import CENTRE, RES, STORES, build_search_bucket, open_test_service

import vectorgeo.search as search_module
from vectorgeo.errors import InvalidInputError, NotFoundError, StoreUnavailableError
from vectorgeo.geodesy import haversine_m
from vectorgeo.search import Query, SearchOptions, SearchService, cell_from_string, open_search_service
from vectorgeo.stores import GeoFilter
from vectorgeo.transfer import Bucket


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return build_search_bucket(tmp_path_factory.mktemp("search"))


@pytest.fixture(scope="module")
def service(data):
    service = open_test_service(data)
    yield service
    service.close()


def _row(data, cell: int) -> int:
    return int(np.searchsorted(data.h3, np.uint64(cell)))


def _brute_force(data, vector, *, exclude=(), geo=None) -> tuple[np.ndarray, np.ndarray]:
    """Every cell by decreasing cosine similarity (ids, scores), optionally filtered."""
    q = np.asarray(vector, np.float64) / np.linalg.norm(vector)
    scores = data.vectors.astype(np.float64) @ q
    ok = ~np.isin(data.h3, np.array(exclude, np.uint64))
    if geo is not None:
        ok &= geo.contains(data.lat, data.lng)
    idx = np.flatnonzero(ok)
    order = idx[np.argsort(-scores[idx], kind="stable")]
    return data.h3[order], scores[order]


def _ids(result) -> list[int]:
    return [cell_from_string(f["properties"]["h3"]) for f in result["features"]]


def _props(result, name) -> list:
    return [f["properties"][name] for f in result["features"]]


def test_point_query_matches_brute_force_and_excludes_the_query_cell(service, data):
    cell = h3i.latlng_to_cell(*CENTRE, RES)
    result = service.search(Query(lat=CENTRE[0], lng=CENTRE[1]), SearchOptions(k=12))
    expected, scores = _brute_force(data, data.vectors[_row(data, cell)], exclude=(cell,))
    assert _ids(result) == expected[:12].tolist()
    np.testing.assert_allclose(_props(result, "score"), scores[:12], atol=1e-5)
    assert _props(result, "rank") == list(range(1, 13))
    assert result["query"]["cells"] == [h3i.int_to_str(cell)] and result["query"]["point"] == {
        "lat": 44.6,
        "lng": -123.9,
    }
    centre = h3i.cell_to_latlng(cell)
    assert result["query"]["center"] == pytest.approx({"lat": centre[0], "lng": centre[1]})
    far = haversine_m(centre[0], centre[1], np.array(_props(result, "lat")), np.array(_props(result, "lng"))) / 1000
    np.testing.assert_allclose(_props(result, "distance_km"), far, atol=1e-3)
    assert (result["type"], result["store"], result["model"], result["resolution"], result["k"]) == (
        "FeatureCollection", "faiss", "m", RES, 12,
    )  # fmt: skip


def test_features_are_closed_lng_lat_hexagons(service):
    result = service.search(Query(lat=CENTRE[0], lng=CENTRE[1]), SearchOptions(k=3))
    for feature in result["features"]:
        ring = feature["geometry"]["coordinates"][0]
        assert feature["geometry"]["type"] == "Polygon" and len(ring) == 7 and ring[0] == ring[-1]
        lng, lat = np.mean(ring[:-1], axis=0)
        assert (lat, lng) == pytest.approx((feature["properties"]["lat"], feature["properties"]["lng"]), abs=1e-3)
        assert feature["id"] == feature["properties"]["h3"]
    rings = result["query"]["geometry"]["coordinates"]
    assert result["query"]["geometry"]["type"] == "MultiPolygon" and len(rings) == 1 and len(rings[0][0]) == 7


def test_include_query_and_h3_query(service, data):
    cell = int(data.h3[100])
    by_cell = service.search(Query(cells=(cell,)), SearchOptions(k=5, include_query=True))
    assert _ids(by_cell)[0] == cell and by_cell["features"][0]["properties"]["score"] == pytest.approx(1.0, abs=1e-5)
    lat, lng = h3i.cell_to_latlng(cell)
    by_point = service.search(Query(lat=lat, lng=lng), SearchOptions(k=4))
    assert _ids(by_point) == _ids(by_cell)[1:]


def test_several_cells_query_their_normalised_mean(service, data):
    cells = tuple(int(c) for c in data.h3[[10, 200, 300]])
    result = service.search(Query(cells=cells), SearchOptions(k=8))
    mean = data.vectors[[10, 200, 300]].astype(np.float64).mean(axis=0)
    assert _ids(result) == _brute_force(data, mean, exclude=cells)[0][:8].tolist()
    assert len(result["query"]["geometry"]["coordinates"]) == 3
    fractions = data.fractions[[10, 200, 300]].mean(axis=0)
    top = result["query"]["explanation"]["classes"][0]
    assert top["fraction"] == pytest.approx(fractions.max(), abs=1e-3)


def test_negative_cells_push_the_query_away(service, data):
    pos, neg = int(data.h3[50]), int(data.h3[60])
    v_pos, v_neg = data.vectors[50].astype(np.float64), data.vectors[60].astype(np.float64)
    plain = service.search(Query(cells=(pos,)), SearchOptions(k=20))
    away = service.search(Query(cells=(pos,), negative=(neg,), alpha=0.8), SearchOptions(k=20))
    expected = _brute_force(data, v_pos - 0.8 * v_neg, exclude=(pos, neg))[0][:20]
    assert _ids(away) == expected.tolist()
    to_neg = {c: float(data.vectors[_row(data, c)] @ v_neg) for c in _ids(plain) + _ids(away)}
    assert np.mean([to_neg[c] for c in _ids(away)]) < np.mean([to_neg[c] for c in _ids(plain)])
    to_pos = [float(data.vectors[_row(data, c)] @ v_pos) for c in _ids(away)]
    assert min(to_pos) > 0  # still like the positive
    assert away["query"]["negative"] == [h3i.int_to_str(neg)] and away["query"]["alpha"] == 0.8


def test_vector_query(service, data):
    vector = tuple(float(v) * 3 for v in data.vectors[5])  # any length: normalised
    result = service.search(Query(vector=vector), SearchOptions(k=3))
    assert _ids(result)[0] == int(data.h3[5]) and _props(result, "distance_km") == [None] * 3
    assert result["query"]["vector"] is True and result["query"]["center"] is None
    with pytest.raises(InvalidInputError, match="radius_km needs a place"):
        service.search(Query(vector=vector), SearchOptions(radius_km=5))
    with pytest.raises(InvalidInputError, match="exclude_within_km needs query cells"):
        service.search(Query(vector=vector), SearchOptions(exclude_within_km=5))
    with pytest.raises(InvalidInputError, match="vector must hold 8 numbers"):
        service.search(Query(vector=(1.0, 2.0)))
    boxed = service.search(Query(vector=vector), SearchOptions(k=50, bbox=(-124.0, 44.5, -123.85, 44.7)))
    assert all(-124.0 <= f["properties"]["lng"] <= -123.85 for f in boxed["features"])


@pytest.mark.parametrize("kind", STORES)
@pytest.mark.parametrize(
    "options",
    [
        SearchOptions(k=15, radius_km=12),
        SearchOptions(k=40, bbox=(-124.0, 44.5, -123.8, 44.65)),
        SearchOptions(k=10, min_score=0.9),
        SearchOptions(k=10, min_separation_km=9),
        SearchOptions(k=10, exclude_within_km=15),
        SearchOptions(k=8, radius_km=30, min_separation_km=6, exclude_within_km=5),
        SearchOptions(k=20, polygon=((-124.1, 44.4), (-123.6, 44.4), (-123.6, 44.8), (-123.85, 44.6))),
    ],
    ids=["radius", "bbox", "min_score", "separation", "exclude_within", "all", "polygon"],
)
def test_filters_hold_and_agree_with_brute_force_on_every_store(service, data, kind, options):
    cell = int(data.h3[222])
    result = service.search(Query(cells=(cell,)), options, store=kind)
    lat, lng = np.array(_props(result, "lat")), np.array(_props(result, "lng"))
    centre = h3i.cell_to_latlng(cell)
    geo = None
    if options.radius_km:
        geo = GeoFilter(lat=data.lat[222], lng=data.lng[222], radius_km=options.radius_km)
    elif options.bbox:
        geo = GeoFilter(bbox=options.bbox)
    elif options.polygon:
        geo = GeoFilter(polygon=options.polygon)
    if geo is not None:
        assert geo.contains(lat, lng).all()
    ids, scores = _brute_force(data, data.vectors[222], exclude=(cell,), geo=geo)
    expected = []
    for h, s in zip(ids, scores, strict=True):  # the greedy post-filters, by brute force
        r = _row(data, h)
        near = haversine_m(data.lat[r], data.lng[r], data.lat[[_row(data, e) for e in expected]],
                           data.lng[[_row(data, e) for e in expected]])  # fmt: skip
        if options.min_score is not None and s < options.min_score:
            continue
        if haversine_m(centre[0], centre[1], data.lat[r], data.lng[r]) < options.exclude_within_km * 1000:
            continue
        if len(expected) and near.min() < options.min_separation_km * 1000:
            continue
        expected.append(int(h))
        if len(expected) == options.k:
            break
    assert _ids(result) == expected and len(expected) > 0
    assert min(_props(result, "distance_km")) >= options.exclude_within_km
    if options.min_separation_km:
        pair = haversine_m(lat[:, None], lng[:, None], lat[None], lng[None]) + np.eye(len(lat)) * 1e9
        assert pair.min() >= options.min_separation_km * 1000


def test_the_same_answers_on_every_store(service, data):
    for query in (Query(lat=44.55, lng=-123.95), Query(cells=(int(data.h3[3]), int(data.h3[400])))):
        answers = [service.search(query, SearchOptions(k=25), store=kind) for kind in STORES]
        assert _ids(answers[0]) == _ids(answers[1]) == _ids(answers[2])
        for other in answers[1:]:
            np.testing.assert_allclose(_props(other, "score"), _props(answers[0], "score"), atol=1e-5)
            assert _props(other, "explanation") == _props(answers[0], "explanation")


def test_post_filters_grow_the_fetch_up_to_the_cap(service, data, monkeypatch):
    cell, row = h3i.latlng_to_cell(*CENTRE, RES), _row(data, h3i.latlng_to_cell(*CENTRE, RES))
    ids, _ = _brute_force(data, data.vectors[row], exclude=(cell,))
    far_km = haversine_m(data.lat[row], data.lng[row], data.lat[[_row(data, h) for h in ids]],
                         data.lng[[_row(data, h) for h in ids]]) / 1000  # fmt: skip
    # the smallest exclusion that leaves fewer than 10 of the first 40 candidates: the fetch must grow
    km = next(d for d in range(5, 30) if (far_km[:40] >= d).sum() < 10 and (far_km >= d).sum() >= 10)
    grown = service.search(Query(cells=(cell,)), SearchOptions(k=10, exclude_within_km=km))
    assert len(grown["features"]) == 10 and grown["n_candidates"] == 160
    assert _ids(grown) == ids[far_km >= km][:10].tolist()
    monkeypatch.setattr(search_module, "MAX_CANDIDATES", 40)
    capped = service.search(Query(cells=(cell,)), SearchOptions(k=10, exclude_within_km=km))
    assert capped["n_candidates"] == 40 and len(capped["features"]) == (far_km[:40] >= km).sum()


def test_percentile_is_the_share_of_random_pairs_below_the_score(service, data):
    sims = data.vectors.astype(np.float64) @ data.vectors.astype(np.float64).T
    pairs = np.sort(sims[np.triu_indices(len(sims), 1)])
    result = service.search(Query(cells=(int(data.h3[0]),)), SearchOptions(k=200))
    for score, percentile in zip(_props(result, "score"), _props(result, "percentile"), strict=True):
        assert percentile == pytest.approx(100 * np.searchsorted(pairs, score) / len(pairs), abs=0.15)
    assert _props(result, "percentile") == sorted(_props(result, "percentile"), reverse=True)


def test_explanations_match_the_attributes(service, data):
    cell = int(data.h3[30])
    result = service.search(Query(cells=(cell,)), SearchOptions(k=5))
    query_fractions = data.fractions[30]
    names = data.legend.names
    for feature in result["features"]:
        row = _row(data, cell_from_string(feature["properties"]["h3"]))
        explanation = feature["properties"]["explanation"]
        top = np.argsort(-data.fractions[row], kind="stable")[:5]
        top = [i for i in top if data.fractions[row][i] > 0]
        assert [c["name"] for c in explanation["classes"]] == [names[i] for i in top]
        for entry, i in zip(explanation["classes"], top, strict=True):
            assert entry["fraction"] == pytest.approx(data.fractions[row][i], abs=1e-3)
            assert entry["query_fraction"] == pytest.approx(query_fractions[i], abs=1e-3)
            assert entry["color"] == data.legend.colors[i]
        elevation = data.elevation[row]
        assert explanation["mean_elevation_m"] == (None if np.isnan(elevation) else pytest.approx(elevation, abs=0.1))
        query_elevation = None if np.isnan(data.elevation[30]) else pytest.approx(data.elevation[30], abs=0.1)
        assert explanation["query_mean_elevation_m"] == query_elevation


def test_cell(service, data):
    cell = int(data.h3[77])
    feature = service.cell(cell, store="qdrant")
    props = feature["properties"]
    np.testing.assert_allclose(props["embedding"], data.vectors[77], atol=1e-6)
    assert (props["h3"], props["resolution"], props["store"]) == (h3i.int_to_str(cell), RES, "qdrant")
    assert (props["lat"], props["lng"]) == pytest.approx((data.lat[77], data.lng[77]))
    assert sum(c["fraction"] for c in props["explanation"]["classes"]) == pytest.approx(1.0, abs=5e-3)
    assert service.cell(lat=data.lat[77], lng=data.lng[77])["id"] == h3i.int_to_str(cell)
    with pytest.raises(InvalidInputError, match="give an h3 cell, or lat and lng"):
        service.cell()


def test_cells_outside_the_index_are_not_found(service, data):
    with pytest.raises(NotFoundError, match=r"the point 0\.0, 0\.0 \(cell 87754e64dffffff\) is not in the index"):
        service.search(Query(lat=0.0, lng=0.0))
    sea = int(data.missing[0])
    with pytest.raises(NotFoundError, match=f"H3 cell {h3i.int_to_str(sea)} is not in the index"):
        service.search(Query(cells=(int(data.h3[0]),), negative=(sea,)), store="pgvector")
    with pytest.raises(NotFoundError):
        service.cell(sea, store="qdrant")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Query(), "give exactly one query"),
        (lambda: Query(lat=1.0), "needs both lat and lng"),
        (lambda: Query(lat=91.0, lng=0.0), "lat must be between -90 and 90 degrees, got 91.0"),
        (lambda: Query(lat=1.0, lng=2.0, vector=(1.0,)), "give exactly one query"),
        (lambda: Query(negative=(1,)), "give exactly one query"),
        (lambda: Query(vector=(0.0, 0.0)), "all zeros"),
        (lambda: Query(vector=(float("nan"),)), "every vector element must be between"),
        (lambda: Query(cells=(1,), alpha=2.0), "alpha must be between 0 and 1"),
        (lambda: Query(cells=tuple(range(101))), "at most 100 cells"),
        (lambda: SearchOptions(k=0), "k must be an integer between 1 and 1000, got 0"),
        (lambda: SearchOptions(k=True), "k must be an integer"),
        (lambda: SearchOptions(radius_km=0.0), "radius_km must be greater than 0"),
        (lambda: SearchOptions(radius_km=-1.0), "radius_km must be between 0 and"),
        (lambda: SearchOptions(radius_km=5.0, bbox=(0, 0, 1, 1)), "give one of radius_km, bbox and polygon"),
        (lambda: SearchOptions(bbox=(0, 0, 1, 1), polygon=((0, 0), (1, 0), (0, 1))), "not several"),
        (lambda: SearchOptions(polygon=((0, 0), (1, 0))), "polygon needs 3 to 500 vertices"),
        (lambda: SearchOptions(bbox=(0, 2, 1, 1)), "bbox must be west,south,east,north"),
        (lambda: SearchOptions(bbox=(0, 0, 1)), "bbox must be 4 numbers"),
        (lambda: SearchOptions(min_score=1.5), "min_score must be between -1 and 1"),
        (lambda: SearchOptions(min_separation_km=float("inf")), "min_separation_km must be between"),
        (lambda: SearchOptions(include_query="yes"), "include_query must be true or false"),
    ],
)
def test_bad_queries_and_options_are_named(make, message):
    with pytest.raises(InvalidInputError, match=message):
        make()


def test_bad_cells_and_stores(service, data):
    with pytest.raises(InvalidInputError, match="must be an H3 cell id string like"):
        cell_from_string("zz")
    with pytest.raises(InvalidInputError, match="must be an H3 cell id string"):
        cell_from_string("8928f5990ffffff0")
    coarse = h3i.cell_to_parent(int(data.h3[0]), 5)
    with pytest.raises(InvalidInputError, match="is at resolution 5; this index holds resolution-7 cells"):
        service.search(Query(cells=(coarse,)))
    with pytest.raises(InvalidInputError, match="unknown store 'milvus'; use one of faiss, qdrant, pgvector"):
        service.search(Query(cells=(int(data.h3[0]),)), store="milvus")
    only_faiss = open_test_service(data, ("faiss",))
    with pytest.raises(InvalidInputError, match="store 'qdrant' is not served here; use one of faiss"):
        only_faiss.health("qdrant")


def test_health(service, data):
    report = service.health("pgvector")
    assert report == {
        "status": "ok", "store": "pgvector", "reachable": True, "count": len(data.h3), "model": "m",
        "resolution": RES, "calibration": True, "attributes": True, "stores": list(STORES), "default_store": "faiss",
    }  # fmt: skip


def test_without_sidecars_plain_searches_still_work(data, tmp_path):
    bucket = Bucket(tmp_path / "bucket", tmp_path / "cache")
    for key in data.bucket.list("indexes/m/res7/"):
        if "/search/" not in key:
            bucket.upload(data.bucket.download(key), key)
    bare = open_search_service(bucket, model="m", h3_resolution=RES, stores=("faiss",), data_dir=tmp_path)
    result = bare.search(Query(cells=(int(data.h3[9]),)), SearchOptions(k=3))
    assert len(result["features"]) == 3 and result["query"]["explanation"] is None
    assert _props(result, "percentile") == [None] * 3 and _props(result, "explanation") == [None] * 3
    assert bare.cell(int(data.h3[9]))["properties"]["explanation"] is None
    assert bare.health()["calibration"] is False and bare.health()["attributes"] is False


def test_unreachable_or_empty_stores_are_unavailable(data, tmp_path):
    def refuses():
        raise StoreUnavailableError("cannot reach Qdrant at http://10.0.0.1:6333 (key ...)")

    service = SearchService({"qdrant": refuses}, model="m", h3_resolution=RES)
    with pytest.raises(StoreUnavailableError, match="store 'qdrant' cannot be reached now") as info:
        service.search(Query(cells=(int(data.h3[0]),)))
    assert "10.0.0.1" not in str(info.value)
    health = service.health()
    assert (health["status"], health["reachable"], health["count"]) == ("unavailable", False, None)
    empty = open_search_service(Bucket(tmp_path / "b", tmp_path / "c"), model="m", h3_resolution=RES,
                                stores=("faiss", "qdrant"), data_dir=tmp_path / "stores")  # fmt: skip
    for kind in ("faiss", "qdrant"):
        with pytest.raises(StoreUnavailableError, match=f"store '{kind}' holds no index of model 'm' at resolution 7"):
            empty.search(Query(cells=(int(data.h3[0]),)), store=kind)


class _CountingStore:
    """A store whose count() takes a while and records how many threads were inside it at once."""

    def __init__(self, thread_safe: bool) -> None:
        import threading

        self.thread_safe, self.inside, self.most = thread_safe, 0, 0
        self._lock = threading.Lock()

    def count(self) -> int:
        import time

        with self._lock:
            self.inside += 1
            self.most = max(self.most, self.inside)
        time.sleep(0.02)
        with self._lock:
            self.inside -= 1
        return 1

    def close(self) -> None:
        pass


def test_thread_safe_stores_are_called_at_once_and_others_one_at_a_time():
    from concurrent.futures import ThreadPoolExecutor

    stores = {"pooled": _CountingStore(thread_safe=True), "single": _CountingStore(thread_safe=False)}
    service = SearchService({kind: (lambda s=store: s) for kind, store in stores.items()}, model="m", h3_resolution=RES)
    for kind in stores:
        with ThreadPoolExecutor(8) as pool:
            reports = list(pool.map(service.health, [kind] * 16))
        assert all(r["reachable"] and r["count"] == 1 for r in reports)
    assert stores["pooled"].most > 1  # searched on several connections at once
    assert stores["single"].most == 1  # one thread at a time: its one connection is never shared


def test_threads_searching_every_store_at_once_get_the_answers_of_one_thread(service, data):
    from concurrent.futures import ThreadPoolExecutor

    cells = [int(c) for c in data.h3[::37]]
    jobs = [(Query(cells=(c,)), SearchOptions(k=8, radius_km=20 if i % 2 else None), STORES[i % 3])
            for i, c in enumerate(cells)]  # fmt: skip
    alone = [service.search(q, o, store=kind) for q, o, kind in jobs]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda job: service.search(job[0], job[1], store=job[2]), jobs * 2))
    assert together == alone * 2


@pytest.mark.parametrize("thread_safe", [False, True])
def test_a_store_that_fails_is_reopened_unless_other_threads_share_it(data, thread_safe):
    opened, closed = [], []

    class Breaks(_CountingStore):
        calls = 0

        def count(self) -> int:
            self.calls += 1
            if len(opened) == 1 and self.calls == 3:  # the first store fails on its third call
                raise RuntimeError("connection reset")
            return 1

        def close(self) -> None:
            closed.append(self)

    def opener():
        opened.append(Breaks(thread_safe=thread_safe))
        return opened[-1]

    service = SearchService({"store": opener}, model="m", h3_resolution=RES)
    assert service.health()["reachable"]  # opens the first store (its first call) and counts (its second)
    assert service.health()["status"] == "unavailable"  # it fails: a 503 for this request
    assert service.health()["reachable"]
    if thread_safe:  # other threads may be inside it: kept open (a pool heals itself), never closed under them
        assert (len(opened), closed) == (1, [])
    else:  # one caller at a time: dropped, and the next request opens a new one
        assert (len(opened), closed) == (2, opened[:1])
