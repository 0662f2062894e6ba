"""One Qdrant Edge shard for several processes: why it must be hosted, and the host's clients agree with it."""

from __future__ import annotations

import multiprocessing
from multiprocessing.connection import Connection

import numpy as np
import pytest

from vectorgeo.errors import InvalidInputError, NotFoundError
from vectorgeo.stores.base import GeoFilter
from vectorgeo.stores.qdrant import QdrantEdgeStore
from vectorgeo.stores.shared_qdrant import EdgeShardAddress, SharedEdgeStore, run_edge_shard_host

DIM, N = 8, 600
SPAWN = multiprocessing.get_context("spawn")


def _load(path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    data = {
        "h3": np.uint64(0x0890000000000000) + np.arange(N, dtype=np.uint64) * np.uint64(4096),
        "lat": rng.uniform(40, 50, N),
        "lng": rng.uniform(-10, 10, N),
        "vectors": rng.normal(size=(N, DIM)).astype(np.float32),
    }
    store = QdrantEdgeStore(path)
    store.create(DIM)
    store.upsert(data["h3"], data["lat"], data["lng"], data["vectors"])
    store.finish_load()
    store.close()
    return data


def _load_elsewhere(path: str, answer: Connection) -> None:
    """In another process: what opening a shard that is already open does."""
    from qdrant_edge import EdgeShard

    try:
        EdgeShard.load(path)
        answer.send("opened")
    except Exception as exc:
        answer.send(f"{type(exc).__name__}: {exc}")


def _open_store_elsewhere(path: str, answer: Connection) -> None:
    """In another process: what the store says when its shard is open elsewhere."""
    try:
        QdrantEdgeStore(path)
        answer.send("opened")
    except Exception as exc:
        answer.send(f"{type(exc).__name__}: {exc}")


class Host:
    """An :class:`EdgeShardHost` in a spawned process, as the server runs it."""

    def __init__(self, path) -> None:
        self.path, self.address = path, EdgeShardAddress.new()
        self.start()

    def start(self) -> None:
        receive, send = SPAWN.Pipe(duplex=False)
        self.process = SPAWN.Process(target=run_edge_shard_host, args=(str(self.path), self.address, send))
        self.process.start()
        send.close()
        assert receive.recv()[0] == "ready"

    def stop(self) -> None:
        self.process.terminate()
        self.process.join(30)
        assert self.process.exitcode == 0


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    path = tmp_path_factory.mktemp("shared") / "shard"
    return path, _load(path)


@pytest.fixture(scope="module")
def host(shard):
    host = Host(shard[0])
    yield host
    host.stop()
    host.address.remove()


def test_a_second_process_cannot_open_a_shard_that_is_open(shard):
    path = shard[0]
    owner = QdrantEdgeStore(path)
    receive, send = SPAWN.Pipe(duplex=False)
    process = SPAWN.Process(target=_load_elsewhere, args=(str(path), send))
    process.start()
    assert receive.recv() == "Exception: Service runtime error: failed to open WAL " + str(path / "wal") + (
        ": Can't init WAL: Kind(WouldBlock)"
    )
    process.join(30)
    assert owner.count() == N  # the failed open left the shard as it was
    process = SPAWN.Process(target=_open_store_elsewhere, args=(str(path), send))
    process.start()
    assert receive.recv() == (  # the store names the cause and the fix, not the binding's WAL error
        "StoreBusyError: the Qdrant Edge shard is open in another process (a running `vectorgeo serve`, "
        "or flow 04 loading it): stop that process, or ask another store"
    )
    process.join(30)
    owner.close()


def test_clients_answer_as_the_shard_does(shard, host, monkeypatch):
    path, data = shard
    client = SharedEdgeStore(host.address)
    assert client.count() == N
    vector, lat, lng = client.fetch(int(data["h3"][5]))
    assert (lat, lng) == pytest.approx((data["lat"][5], data["lng"][5]))
    assert vector == pytest.approx(data["vectors"][5] / np.linalg.norm(data["vectors"][5]), abs=1e-6)
    ask = np.concatenate([data["h3"][::-1], [np.uint64(7)], data["h3"][:3]])  # reversed, one missing, repeats
    found, vectors, lats, lngs = client.fetch_many(ask)
    np.testing.assert_array_equal(found, data["h3"][::-1])
    unit = data["vectors"] / np.linalg.norm(data["vectors"], axis=1, keepdims=True)
    np.testing.assert_allclose(vectors, unit[::-1], atol=1e-6)
    np.testing.assert_allclose(lats, data["lat"][::-1])
    np.testing.assert_allclose(lngs, data["lng"][::-1])
    assert [a.shape for a in client.fetch_many(np.empty(0, np.uint64))] == [(0,), (0, DIM), (0,), (0,)]
    filters = [None, GeoFilter(lat=45, lng=0, radius_km=300), GeoFilter(bbox=(-5, 42, 5, 48))]
    answers = {f: client.search(data["vectors"][9], 7, geo=f, exclude=(int(data["h3"][9]),)) for f in filters}
    monkeypatch.setattr("vectorgeo.stores.shared_qdrant.FETCH_MANY_CHUNK", 64)  # several calls to the host
    np.testing.assert_array_equal(client.fetch_many(ask)[0], found)
    host.stop()  # the shard opens here once the host has closed it
    try:
        local = QdrantEdgeStore(path)
        for geo, found in answers.items():
            assert found == local.search(data["vectors"][9], 7, geo=geo, exclude=(int(data["h3"][9]),))
            assert int(data["h3"][9]) not in [m.h3 for m in found] and len(found) == 7
        local.close()
    finally:
        host.start()  # at the same address again: the client reconnects by itself
    assert client.count() == N
    client.close()


def test_errors_come_back_as_themselves(host):
    with SharedEdgeStore(host.address) as client:
        with pytest.raises(NotFoundError, match="cell 1 is not in Qdrant Edge shard"):
            client.fetch(1)
        with pytest.raises(InvalidInputError, match="k must be an integer >= 1"):
            client.search(np.ones(DIM, np.float32), 0)
        with pytest.raises(InvalidInputError, match="read-only"):
            client.upsert(np.ones(1, np.uint64), np.zeros(1), np.zeros(1), np.ones((1, DIM), np.float32))
        assert client.count() == N  # the connection is still good


def test_a_host_without_a_shard_answers_not_found_until_one_is_loaded(tmp_path):
    path = tmp_path / "later"
    host = Host(path)
    try:
        with SharedEdgeStore(host.address) as client:
            with pytest.raises(NotFoundError, match="no Qdrant Edge shard at"):
                client.count()
            _load(path)  # nothing held it: flow 04 can load it while the host waits
            assert client.count() == N
    finally:
        host.stop()
        host.address.remove()


def test_a_client_needs_the_key_and_a_host(host):
    with pytest.raises(ConnectionError, match="does not answer"):
        SharedEdgeStore(EdgeShardAddress(host.address.socket_path, b"not the key"))
    assert SharedEdgeStore(host.address).count() == N  # the host still accepts others
    gone = EdgeShardAddress.new()
    with pytest.raises(ConnectionError, match="does not answer"):
        SharedEdgeStore(gone)
    gone.remove()
