"""The server's processes: one listening socket, N uvicorn workers, and what they share, supervised.

The supervisor (:class:`ServerProcesses`, in the process that runs ``vectorgeo serve``) binds the
socket, then starts what the stores need once: the embedded PostgreSQL (whose URL every worker gets as
``database_url``) and the process that owns the Qdrant Edge shard (:mod:`vectorgeo.stores.shared_qdrant`).
Then it spawns the workers; each builds its own :class:`~vectorgeo.api.SearchAPI` from a
:class:`~vectorgeo.service_settings.ServiceSettings` passed as an argument and serves the shared socket
with uvicorn. A worker that dies is replaced; SIGINT or SIGTERM stops the workers gracefully (they finish
the requests in flight), then the shard's owner, then PostgreSQL.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from vectorgeo.errors import ServerStartError
from vectorgeo.service_settings import ServiceSettings
from vectorgeo.stores.shared_qdrant import EdgeShardAddress

__all__ = ["WorkerSpec", "ServerProcesses", "bind_socket", "default_workers"]

logger = logging.getLogger(__name__)

GRACEFUL_SHUTDOWN_S = 30
"""How long a stopping worker may take to finish its requests in flight."""
_READY_TIMEOUT_S = 300  # building a service reads the sidecars from the bucket (S3: a download)
_RESTARTS_PER_MINUTE = 5
_LOG_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"


def default_workers() -> int:
    """Worker processes by default: one per core this process may use, at most 4."""
    return max(1, min(len(os.sched_getaffinity(0)), 4))


def bind_socket(host: str, port: int, *, backlog: int = 2048) -> socket.socket:
    """A listening TCP socket (``port`` 0 picks a free one).

    Raises:
        ServerStartError: the port is taken, or the address cannot be bound.
    """
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise ServerStartError(f"cannot open a socket for {host}: {exc.strerror or exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart may bind over TIME_WAIT
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ServerStartError(f"port {port} on {host} is already in use; pass --port N (or --port 0)") from exc
        raise ServerStartError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.set_inheritable(True)
    return sock


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process builds its server from (picklable: it is the worker's argument).

    Attributes:
        settings: The search service's settings (with ``database_url`` set when PostgreSQL is shared).
        site_dir: Folder of the web map's files.
        extra_files: In-memory files by URL path (``overview/landcover.png``): ``(bytes, content type)``.
        qdrant: The Qdrant Edge shard's host, or None (no embedded Qdrant is served).
        threads: Threads answering API requests at once in each worker.
        http: uvicorn's HTTP parser: ``"httptools"`` or ``"h11"``.
        log_level: Logging level of the worker.
    """

    settings: ServiceSettings
    site_dir: str
    extra_files: dict[str, tuple[bytes, str]] = field(default_factory=dict, repr=False)
    qdrant: EdgeShardAddress | None = None
    threads: int = 2
    http: str = "httptools"
    log_level: int = logging.INFO


def run_worker(sock: socket.socket, spec: WorkerSpec, ready: Connection) -> None:
    """Worker process entry point: build the API, tell the supervisor, serve ``sock`` until SIGTERM/SIGINT."""
    import uvicorn

    from vectorgeo.api import SearchAPI
    from vectorgeo.asgi import SiteApp
    from vectorgeo.http_protocols import MAX_HEAD_BYTES, protocol_class

    logging.basicConfig(level=spec.log_level, format=_LOG_FORMAT)
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-variant probing reads like a failure
    stopped = threading.Event()  # a stop while starting skips serving; uvicorn re-raises its signal here after it
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    try:
        api = SearchAPI(spec.settings, _open_service(spec))
    except Exception as exc:
        logger.exception("cannot build the search service")
        ready.send(("failed", f"cannot build the search service: {exc}"))
        raise SystemExit(3) from exc
    service = api.service()
    for kind in service.stores:  # open each store now: the first requests are not slow, a failure shows in the log
        if not service.health(kind)["reachable"]:
            logger.warning("store %s is not reachable yet; its requests are answered 503 until it is", kind)
    app = SiteApp(api, site_dir=spec.site_dir, extra_files=spec.extra_files, threads=spec.threads)
    config = uvicorn.Config(
        app,
        http=protocol_class(spec.http),
        ws="none",
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
        loop="uvloop",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
    )
    server = uvicorn.Server(config)

    def stop(*_: object) -> None:  # a signal before uvicorn installs its own handlers must still stop it
        stopped.set()
        server.should_exit = True

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    _exit_with_parent(lambda: setattr(server, "should_exit", True))
    ready.send(("ready", os.getpid()))
    ready.close()
    try:
        if not stopped.is_set():
            server.run(sockets=[sock])
    finally:
        app.close()
        api.close()


def _open_service(spec: WorkerSpec) -> Any:
    """The worker's search service; its Qdrant store is the shared shard's client when a host serves it."""
    from functools import partial

    from vectorgeo.stores.shared_qdrant import SharedEdgeStore

    shared = spec.qdrant is not None and "qdrant" in spec.settings.stores
    return spec.settings.open_service(openers={"qdrant": partial(SharedEdgeStore, spec.qdrant)} if shared else None)


def _exit_with_parent(stop: Any) -> None:
    """Call ``stop`` if the supervisor dies without stopping this process (killed with SIGKILL, say)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        logger.warning("the supervisor %d is gone; stopping", parent)
        stop()

    threading.Thread(target=watch, name="vectorgeo-parent-watch", daemon=True).start()


def _run_qdrant_host(shard_path: str, address: EdgeShardAddress, ready: Connection, log_level: int) -> None:
    from vectorgeo.stores.shared_qdrant import run_edge_shard_host

    logging.basicConfig(level=log_level, format=_LOG_FORMAT)
    _exit_with_parent(lambda: os.kill(os.getpid(), signal.SIGTERM))
    run_edge_shard_host(shard_path, address, ready)


class _Child:
    """One supervised process and the pipe it reports readiness on."""

    def __init__(self, process: multiprocessing.process.BaseProcess, ready: Connection, role: str) -> None:
        self.process, self.ready, self.role = process, ready, role
        self.started_s = time.monotonic()


class ServerProcesses:
    """The socket, the stores' shared processes and the workers, from start to a clean stop.

    Args:
        sock: The listening socket (see :func:`bind_socket`); closed by :meth:`stop`.
        spec: What each worker serves; ``settings.database_url`` and ``qdrant`` are filled in by :meth:`start`.
        workers: Worker processes.
        shard_path: The Qdrant Edge shard to host, or None when Qdrant is not served from an embedded shard.
        pg_dir: The embedded PostgreSQL cluster to start, or None (no pgvector, or a ``database_url``).
    """

    def __init__(
        self,
        sock: socket.socket,
        spec: WorkerSpec,
        *,
        workers: int,
        shard_path: Path | None = None,
        pg_dir: Path | None = None,
    ) -> None:
        if workers < 1:
            raise ServerStartError(f"--workers must be at least 1, got {workers}")
        self.sock, self.spec, self.n_workers = sock, spec, workers
        self.shard_path, self.pg_dir = shard_path, pg_dir
        self._ctx = multiprocessing.get_context("spawn")
        self._workers: list[_Child] = []
        self._host: _Child | None = None
        self._postgres: Any = None
        self._restarts: list[float] = []
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._stopping = False

    # ----------------------------------------------------------------------------------------------- public

    @property
    def stop_requested(self) -> bool:
        """True once :meth:`request_stop` (or :meth:`stop`) has been called."""
        return self._stopping

    def request_stop(self) -> None:
        """Ask :meth:`start` or :meth:`supervise` to return (safe in a signal handler)."""
        self._stopping = True
        with contextlib.suppress(OSError):  # the pipe is full: a wake-up is already pending
            os.write(self._wake_w, b"x")

    def start(self) -> None:
        """Start PostgreSQL, the shard's host and the workers; return when every worker can answer.

        Raises:
            ServerStartError: something failed to start (what was started is stopped again).
        """
        try:
            settings = self.spec.settings
            if self.pg_dir is not None:
                from vectorgeo.stores.postgres_server import EmbeddedPostgres

                self._postgres = EmbeddedPostgres(self.pg_dir)
                settings = settings.replace(database_url=self._postgres.start())
            qdrant = None
            if self.shard_path is not None:
                qdrant = EdgeShardAddress.new()
            self.spec = WorkerSpec(**{**self.spec.__dict__, "settings": settings, "qdrant": qdrant})
            if qdrant is not None:
                self._host = self._start_host()
                self._wait_ready([self._host])
            self._workers = [self._start_worker(i) for i in range(self.n_workers)]
            self._wait_ready(self._workers)
        except BaseException:
            self.stop()
            raise

    def supervise(self) -> int:
        """Replace processes that die until :meth:`request_stop`; returns 0, or 1 after a crash loop."""
        while not self._stopping:
            children = [*self._workers, *([self._host] if self._host else [])]
            fired = wait([c.process.sentinel for c in children] + [self._wake_r], timeout=5.0)
            if self._wake_r in fired:
                os.read(self._wake_r, 64)
            if self._stopping:
                break
            for child in children:
                if child.process.is_alive():
                    continue
                logger.warning("%s %d exited (code %s); starting another", child.role, child.process.pid,
                               child.process.exitcode)  # fmt: skip
                now = time.monotonic()
                self._restarts = [t for t in self._restarts if now - t < 60] + [now]
                if len(self._restarts) > _RESTARTS_PER_MINUTE:
                    logger.error("processes died %d times in a minute; stopping the server", len(self._restarts))
                    return 1
                if child is self._host:
                    self._host = self._start_host()
                    self._wait_ready([self._host])
                else:
                    child.ready.close()
                    index = self._workers.index(child)
                    self._workers[index] = self._start_worker(index)
        return 0

    def stop(self) -> None:
        """Stop the workers gracefully, then the shard's host, then PostgreSQL; close the socket. Idempotent."""
        self._stopping = True
        _terminate([c.process for c in self._workers], GRACEFUL_SHUTDOWN_S + 10)
        self._workers = []
        if self._host is not None:
            _terminate([self._host.process], 30)
            self._host = None
        if self.spec.qdrant is not None:
            self.spec.qdrant.remove()
        if self._postgres is not None:
            try:
                self._postgres.stop()
            except ServerStartError as exc:
                logger.error("could not stop the embedded PostgreSQL: %s", exc)
            self._postgres = None
        self.sock.close()

    # ---------------------------------------------------------------------------------------------- helpers

    def _start_worker(self, index: int) -> _Child:
        receive, send = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(
            target=run_worker, args=(self.sock, self.spec, send), name=f"worker-{index}", daemon=False
        )
        process.start()
        send.close()
        return _Child(process, receive, "worker")

    def _start_host(self) -> _Child:
        receive, send = self._ctx.Pipe(duplex=False)
        args = (str(self.shard_path), self.spec.qdrant, send, self.spec.log_level)
        process = self._ctx.Process(target=_run_qdrant_host, args=args, name="qdrant-edge-host", daemon=False)
        process.start()
        send.close()
        return _Child(process, receive, "Qdrant Edge host")

    def _wait_ready(self, children: list[_Child]) -> None:
        """Block until each child reports ready; ServerStartError when one fails, dies or a stop is asked for."""
        waiting = {c.ready: c for c in children}
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while waiting:
            if self._stopping:
                raise ServerStartError("stopped while starting")
            fired = wait([*waiting, self._wake_r], timeout=max(0.0, deadline - time.monotonic()))
            if not fired:
                raise ServerStartError(f"{len(waiting)} process(es) did not start within {_READY_TIMEOUT_S} s")
            for conn in [f for f in fired if f in waiting]:
                child = waiting.pop(conn)
                try:
                    status, detail = conn.recv()
                except EOFError:
                    child.process.join(5)
                    raise ServerStartError(
                        f"the {child.role} exited while starting (code {child.process.exitcode}); see the log above"
                    ) from None
                conn.close()
                if status != "ready":
                    raise ServerStartError(str(detail))


def _terminate(processes: list[multiprocessing.process.BaseProcess], timeout_s: float) -> None:
    """SIGTERM each live process, wait up to ``timeout_s`` for all, then SIGKILL what is left."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + timeout_s
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            logger.error("%s %d did not stop within %g s; killing it", process.name, process.pid, timeout_s)
            process.kill()
            process.join(5)
