"""One Qdrant Edge shard shared by several processes: one process owns it, the others call it over a socket.

Qdrant Edge takes an exclusive lock on a shard's write-ahead log, and has no read-only open: a second
process's ``EdgeShard.load`` of a shard that is open elsewhere fails (``failed to open WAL ...: Can't
init WAL: Kind(WouldBlock)``) and leaves the shard as it was. So the server's worker processes cannot
each open it. :class:`EdgeShardHost` opens the shard in one process and answers :data:`READ_CALLS` from
the others; :class:`SharedEdgeStore` is the :class:`~vectorgeo.stores.base.VectorStore` they use in
its place. Calls travel as pickles over a Unix socket in a private (0700) folder, on connections that
prove a shared secret key first (``multiprocessing.connection``); one connection per worker store,
one thread per connection in the host.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
import threading
from dataclasses import dataclass, field
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any

import numpy as np

from vectorgeo.errors import InvalidInputError, VectorGeoError
from vectorgeo.stores.base import GeoFilter, Match, cell_ids

__all__ = ["READ_CALLS", "EdgeShardAddress", "EdgeShardHost", "SharedEdgeStore", "run_edge_shard_host"]

logger = logging.getLogger(__name__)

READ_CALLS = frozenset({"search", "fetch", "fetch_many", "count"})
"""The store calls a host answers: serving only reads (flow 04 loads the shard with the server stopped)."""

_CALL_TIMEOUT_S = 30.0
FETCH_MANY_CHUNK = 10_000
"""Ids per call of :meth:`SharedEdgeStore.fetch_many` to the host (about 3 MB of 64-d vectors back)."""


@dataclass(frozen=True)
class EdgeShardAddress:
    """Where a host listens and the key its clients prove; picklable, so it can go to worker processes.

    Attributes:
        socket_path: The host's Unix socket.
        authkey: Shared secret (32 random bytes); never shown in ``repr``.
    """

    socket_path: str
    authkey: bytes = field(repr=False)

    @classmethod
    def new(cls) -> EdgeShardAddress:
        """A fresh socket path in a new private folder, and a fresh key."""
        folder = tempfile.mkdtemp(prefix="vectorgeo-qdrant-")  # mode 0700: only this user reaches the socket
        return cls(os.path.join(folder, "shard.sock"), os.urandom(32))

    def remove(self) -> None:
        """Delete the socket and its folder (after the host has stopped)."""
        shutil.rmtree(os.path.dirname(self.socket_path), ignore_errors=True)


class EdgeShardHost:
    """Owns a Qdrant Edge shard in this process and answers store calls from other processes.

    The shard is opened on the first call (and again after a failed open), so a host started before
    flow 04 has loaded the shard answers as soon as it exists.

    Args:
        shard_path: The shard's folder (``{data_dir}/qdrant/{collection}``).
        address: Where to listen; the socket file is replaced if one is left over.
    """

    def __init__(self, shard_path: str | Path, address: EdgeShardAddress) -> None:
        self.shard_path = Path(shard_path)
        self.address = address
        self._store: Any = None
        self._open_lock = threading.Lock()
        self._closed = threading.Event()
        Path(address.socket_path).unlink(missing_ok=True)
        self._listener = Listener(address.socket_path, family="AF_UNIX", backlog=64, authkey=address.authkey)

    def open_store(self) -> Any:
        """The open shard store, opened now if need be.

        Raises:
            NotFoundError: no shard at :attr:`shard_path` (flow 04 has not loaded it).
        """
        from vectorgeo.stores.qdrant import QdrantEdgeStore

        with self._open_lock:
            if self._store is None:
                store = QdrantEdgeStore(self.shard_path)
                store.count()  # NotFoundError when there is no shard; the next call tries again
                self._store = store
            return self._store

    def serve_forever(self) -> None:
        """Accept connections until :meth:`close`; each is answered by its own thread."""
        while not self._closed.is_set():
            try:
                conn = self._listener.accept()
            except (OSError, EOFError, AuthenticationError):  # closed by close(), or a client without the key
                if self._closed.is_set():
                    return
                logger.warning("refused a connection to the Qdrant Edge host", exc_info=True)
                continue
            # the answering thread (and any engine thread it starts) inherits SIGTERM blocked: see run_edge_shard_host
            blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
            try:
                threading.Thread(target=self._answer, args=(conn,), daemon=True).start()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def stop_accepting(self) -> None:
        """Make :meth:`serve_forever` return (safe in a signal handler)."""
        self._closed.set()
        self._listener.close()

    def close(self) -> None:
        """Stop accepting, then flush and close the shard."""
        self.stop_accepting()
        with self._open_lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    def _answer(self, conn: Connection) -> None:
        with conn:
            while True:
                try:
                    name, args, kwargs = conn.recv()
                except (EOFError, OSError):
                    return
                try:
                    if name not in READ_CALLS:
                        raise InvalidInputError(
                            f"the shared Qdrant Edge shard answers {sorted(READ_CALLS)}, not {name}"
                        )
                    reply = ("ok", getattr(self.open_store(), name)(*args, **kwargs))
                except (KeyboardInterrupt, SystemExit):
                    raise
                except VectorGeoError as exc:  # the project's own errors travel as themselves
                    reply = ("err", exc)
                except BaseException as exc:  # anything else (pyo3's PanicException, say) as a class every side has
                    reply = ("err", RuntimeError(f"{type(exc).__name__}: {exc}"))
                try:
                    conn.send(reply)
                except (EOFError, OSError):
                    return
                except Exception:  # an exception that does not pickle goes back as its text
                    conn.send(("err", RuntimeError(f"{type(reply[1]).__name__}: {reply[1]}")))


def run_edge_shard_host(shard_path: str, address: EdgeShardAddress, ready: Connection | None = None) -> None:
    """Process entry point: host the shard until SIGTERM, then close it cleanly.

    SIGINT is ignored: a Ctrl-C in the terminal reaches every process of the group, and the shard must
    outlive the workers that are still finishing their requests; the supervisor sends SIGTERM last.

    Args:
        shard_path: The shard's folder.
        address: Where to listen.
        ready: Sent ``("ready", pid)`` once the socket listens (and the shard is open, or known to be missing).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # SIGTERM must reach the main thread, blocked in accept(): the kernel hands a process signal to any thread
    # that does not block it, and one taken by an engine thread (Qdrant Edge starts Rust threads) left accept()
    # uninterrupted, so the host never stopped. Every other thread is started with SIGTERM blocked.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    host = EdgeShardHost(shard_path, address)
    signal.signal(signal.SIGTERM, lambda signum, frame: host.stop_accepting())
    try:
        host.open_store()
    except Exception as exc:  # answered to each call until the shard can be opened
        logger.warning("Qdrant Edge shard %s is not open yet: %s", shard_path, exc)
    if ready is not None:
        ready.send(("ready", os.getpid()))
        ready.close()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # a SIGTERM that came meanwhile arrives now
    try:
        host.serve_forever()
    finally:
        host.close()


class SharedEdgeStore:
    """A :class:`~vectorgeo.stores.base.VectorStore` whose reads are answered by an :class:`EdgeShardHost`.

    Thread-safe (one call at a time on its connection). A broken connection is reopened once per call;
    if the host stays unreachable the call raises ``ConnectionError``, which the search service answers
    with a 503 and a fresh store on the next request.

    Args:
        address: The host's address.
        timeout_s: How long a call may wait for its answer.

    Raises:
        ConnectionError: the host does not answer.
    """

    def __init__(self, address: EdgeShardAddress, *, timeout_s: float = _CALL_TIMEOUT_S) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._conn: Connection | None = self._connect()

    def _connect(self) -> Connection:
        try:
            return Client(self.address.socket_path, family="AF_UNIX", authkey=self.address.authkey)
        except (OSError, EOFError, AuthenticationError) as exc:
            raise ConnectionError(f"the Qdrant Edge host at {self.address.socket_path} does not answer: {exc}") from exc

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            for attempt in (1, 2):
                try:
                    if self._conn is None:
                        self._conn = self._connect()
                    self._conn.send((name, args, kwargs))
                    if not self._conn.poll(self.timeout_s):
                        raise TimeoutError(f"no answer from the Qdrant Edge host within {self.timeout_s:g} s")
                    status, value = self._conn.recv()
                    break
                except (OSError, EOFError) as exc:  # the host restarted: reconnect once (reads are idempotent)
                    self._drop_connection()
                    if attempt == 2 or isinstance(exc, TimeoutError):
                        raise ConnectionError(f"the Qdrant Edge host failed to answer {name}: {exc}") from exc
        if status == "ok":
            return value
        raise value

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def search(
        self, vector: np.ndarray, k: int, *, geo: GeoFilter | None = None, exclude: tuple[int, ...] = ()
    ) -> list[Match]:
        """The ``k`` most similar cells by cosine (best first), as :meth:`QdrantEdgeStore.search` answers."""
        return self._call("search", np.asarray(vector, np.float32), k, geo=geo, exclude=tuple(exclude))

    def fetch(self, h3: int) -> tuple[np.ndarray, float, float]:
        """A cell's unit vector (float32) and centre ``(vector, lat, lng)``; NotFoundError if it is missing."""
        return self._call("fetch", int(h3))

    def fetch_many(self, h3: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Unit vectors and centres of the cells present: ``(found_h3, vectors, lat, lng)``, in request order.

        One call to the host per :data:`FETCH_MANY_CHUNK` ids (numpy arrays both ways); see
        :meth:`~vectorgeo.stores.base.VectorStore.fetch_many`.
        """
        ids = cell_ids(h3)
        _, first = np.unique(ids, return_index=True)
        ids = ids[np.sort(first)]  # each id once, so the chunks' answers never overlap
        parts = [self._call("fetch_many", ids[i : i + FETCH_MANY_CHUNK]) for i in range(0, len(ids), FETCH_MANY_CHUNK)]
        if not parts:
            parts = [self._call("fetch_many", ids)]  # an empty request: the host knows the vector length
        return tuple(np.concatenate([p[i] for p in parts]) for i in range(4))

    def count(self) -> int:
        """Points in the shard (NotFoundError when the host has no shard)."""
        return self._call("count")

    def create(self, dim: int, *, wipe: bool = False) -> None:
        """Refused: the shared shard is read-only to its clients."""
        raise InvalidInputError("the shared Qdrant Edge shard is read-only here; load it with the server stopped")

    def upsert(self, h3: np.ndarray, lat: np.ndarray, lng: np.ndarray, vectors: np.ndarray) -> int:
        """Refused: the shared shard is read-only to its clients."""
        raise InvalidInputError("the shared Qdrant Edge shard is read-only here; load it with the server stopped")

    def finish_load(self) -> None:
        """Refused: the shared shard is read-only to its clients."""
        raise InvalidInputError("the shared Qdrant Edge shard is read-only here; load it with the server stopped")

    def close(self) -> None:
        """Close the connection (the host keeps the shard open for the other workers)."""
        with self._lock:
            self._drop_connection()

    def __enter__(self) -> SharedEdgeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
