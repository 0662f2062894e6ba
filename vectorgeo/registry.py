"""The model and prediction registry: which classifier was trained on what, and which rasters it predicted.

Two PostgreSQL tables, created on first use (see :data:`TABLES_DDL`):

* ``ml_models``: one row per trained classifier, unique on ``(name, artifact_sha256)``, so
  rerunning the same training updates its row instead of adding one.
* ``raster_predictions``: one row per prediction raster of a model, unique on
  ``(model_id, geoparquet_key)``; deleting a model deletes its predictions.

A :class:`Registry` holds one connection (``psycopg``, imported when it connects) and is not
thread-safe: give each thread its own. The caller decides where the database is (rule 7):
:func:`open_registry` takes ``DATABASE_URL`` or, without one, starts the embedded PostgreSQL
that the pgvector store uses. A URL may hold a password: it is never logged, and error
messages name only ``host:port/dbname``.

    with open_registry(database_url, data_dir) as registry:
        model_id = registry.register_model(ModelRecord(name="wetlands", classifier="logistic", ...))
        registry.register_prediction(PredictionRecord(model_id=model_id, ...))
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from vectorgeo.errors import InvalidInputError, NotFoundError, StoreUnavailableError
from vectorgeo.registry_records import ModelRecord, PredictionRecord, check_text, json_text
from vectorgeo.stores.postgres_server import server_location

if TYPE_CHECKING:
    import psycopg

    from vectorgeo.stores.postgres_server import EmbeddedPostgres

__all__ = ["TABLES_DDL", "ModelRecord", "PredictionRecord", "Registry", "open_registry"]

logger = logging.getLogger(__name__)

TABLES_DDL = (
    """CREATE TABLE IF NOT EXISTS ml_models (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL CHECK (name <> ''),
    created timestamptz NOT NULL DEFAULT now(),
    updated timestamptz NOT NULL DEFAULT now(),
    classifier text NOT NULL,
    params jsonb NOT NULL DEFAULT '{}',
    feature_source jsonb NOT NULL,
    label_source jsonb NOT NULL,
    cv_metrics jsonb NOT NULL DEFAULT '{}',
    artifact_key text NOT NULL,
    artifact_sha256 text NOT NULL,
    CONSTRAINT ml_models_name_artifact_key UNIQUE (name, artifact_sha256)
)""",
    """CREATE TABLE IF NOT EXISTS raster_predictions (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model_id bigint NOT NULL REFERENCES ml_models (id) ON DELETE CASCADE,
    created timestamptz NOT NULL DEFAULT now(),
    updated timestamptz NOT NULL DEFAULT now(),
    embeddings_source jsonb NOT NULL,
    h3_resolution integer NOT NULL CHECK (h3_resolution BETWEEN 0 AND 15),
    cog_key text NOT NULL,
    geoparquet_key text NOT NULL,
    probability_cog_key text,
    class_counts jsonb NOT NULL DEFAULT '{}',
    bounds double precision[] NOT NULL CHECK (cardinality(bounds) = 4),
    n_cells bigint NOT NULL CHECK (n_cells >= 0),
    CONSTRAINT raster_predictions_model_geoparquet_key UNIQUE (model_id, geoparquet_key)
)""",
)
"""The registry's tables; ``bounds`` is ``{west, south, east, north}`` in degrees (EPSG:4326)."""

_LOCK_KEY = int.from_bytes(b"vg.regis", "big")
"""``pg_advisory_xact_lock`` key: concurrent ``CREATE TABLE IF NOT EXISTS`` can otherwise collide."""
_URL_USERINFO_RE = re.compile(r"(://[^:/@\s]*):[^@\s]*@")
_URL_PASSWORD_RE = re.compile(r"://[^:/@\s]*:([^@\s]*)@")
_DSN_PASSWORD_RE = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)

_REQUIRED_COLUMNS = {
    "ml_models": ("id", "name", "created", "classifier", "params", "feature_source", "label_source", "cv_metrics",
                  "artifact_key", "artifact_sha256"),
    "raster_predictions": ("id", "model_id", "created", "embeddings_source", "h3_resolution", "cog_key",
                           "geoparquet_key", "probability_cog_key", "class_counts", "bounds", "n_cells"),
}  # fmt: skip
_MODEL_COLUMNS = (
    "id, name, created, updated, classifier, params, feature_source, label_source, cv_metrics, artifact_key, "
    "artifact_sha256"
)
_PREDICTION_COLUMNS = (
    "p.id, p.model_id, m.name AS model_name, p.created, p.updated, p.embeddings_source, p.h3_resolution, p.cog_key, "
    "p.geoparquet_key, p.probability_cog_key, p.class_counts, p.bounds, p.n_cells"
)


# --------------------------------------------------------------- URL safety


def _redact(text: str, url: str) -> str:
    """``text`` with the URL's password (raw and decoded) and any ``user:password@`` or ``password=`` masked."""
    from psycopg.conninfo import conninfo_to_dict

    secrets = set(_URL_PASSWORD_RE.findall(url))
    with contextlib.suppress(Exception):  # an unparsable URL: the regex above is all there is
        secrets.add(conninfo_to_dict(url).get("password") or "")
    for secret in secrets - {""}:
        text = text.replace(secret, "***")
    return _DSN_PASSWORD_RE.sub(r"\1***", _URL_USERINFO_RE.sub(r"\1:***@", text))


# ----------------------------------------------------------------- registry


class Registry:
    """The ``ml_models`` and ``raster_predictions`` tables of one PostgreSQL database.

    Connects on construction. Writes create the tables first if need be; reads of a database
    without them return nothing. Use as a context manager, or call :meth:`close`.

    Args:
        url: libpq connection URL or DSN (``DATABASE_URL``); it may hold a password, which is
            never logged or put in an error message.
        connect_timeout_s: Longest wait for the server, seconds.
        server: An embedded server this registry stops on :meth:`close` (only if that server object
            started it, and only in this process); :func:`open_registry` passes it.

    Raises:
        InvalidInputError: ``url`` is empty or not a connection string.
        StoreUnavailableError: The server cannot be reached or refuses the connection; the
            message names ``host:port/dbname`` and what to check.
    """

    def __init__(self, url: str, *, connect_timeout_s: float = 10.0, server: EmbeddedPostgres | None = None) -> None:
        if not isinstance(url, str) or not url.strip():
            raise InvalidInputError("the registry's database URL is empty; set DATABASE_URL or use the embedded server")
        self.location = server_location(url)
        """``host:port/dbname`` of the database (no user, no password)."""
        self._server = server
        self._server_pid = os.getpid()
        self._tables_ready = False
        self._conn: psycopg.Connection | None = _connect(url, connect_timeout_s, self.location)
        self._url = url
        logger.debug("connected to the model registry at %s", self.location)

    # ---------------------------------------------------------------- tables

    def ensure_tables(self) -> None:
        """Create ``ml_models`` and ``raster_predictions`` if absent; safe to run at once from many processes.

        Raises:
            StoreUnavailableError: The connection was lost.
        """
        with self._transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])
            for statement in TABLES_DDL:
                conn.execute(statement)
            self._check_shape(conn)
        self._tables_ready = True

    def _check_shape(self, conn: psycopg.Connection) -> None:
        """Refuse tables of these names that another tool made with other columns (a seed pipeline's, say)."""
        for table, wanted in _REQUIRED_COLUMNS.items():
            rows = conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
                "AND table_name = %s",
                [table],
            ).fetchall()
            lacking = sorted(set(wanted) - {r[0] for r in rows})
            if lacking:
                raise InvalidInputError(
                    f"table {table!r} in the registry at {self.location} exists without columns {lacking}: it was "
                    "made by another tool; rename it, or point DATABASE_URL at another database"
                )

    def _has_tables(self, conn: psycopg.Connection) -> bool:
        if not self._tables_ready:
            row = conn.execute(
                "SELECT to_regclass('ml_models') IS NOT NULL AND to_regclass('raster_predictions') IS NOT NULL"
            ).fetchone()
            self._tables_ready = bool(row and row[0])
        return self._tables_ready

    # ---------------------------------------------------------------- writes

    def register_model(self, record: ModelRecord) -> int:
        """Insert a model, or update the row of the same ``(name, artifact_sha256)``; returns its id.

        A rerun of the same training (same name, same artifact checksum) keeps its id and replaces
        ``classifier``, ``params``, ``feature_source``, ``label_source``, ``cv_metrics`` and
        ``artifact_key``; ``created`` stays, ``updated`` becomes now.

        Raises:
            InvalidInputError: ``record`` is not a :class:`ModelRecord`.
            StoreUnavailableError: The connection was lost.
        """
        if not isinstance(record, ModelRecord):
            raise InvalidInputError(f"register_model takes a ModelRecord, got {type(record).__name__}")
        self._ensure_tables_once()
        query = (
            "INSERT INTO ml_models (name, classifier, params, feature_source, label_source, cv_metrics, artifact_key, "
            "artifact_sha256) VALUES (%s, %s, %s::jsonb, %s::jsonb, %s::jsonb, %s::jsonb, %s, %s) "
            "ON CONFLICT (name, artifact_sha256) DO UPDATE SET classifier = EXCLUDED.classifier, "
            "params = EXCLUDED.params, feature_source = EXCLUDED.feature_source, "
            "label_source = EXCLUDED.label_source, cv_metrics = EXCLUDED.cv_metrics, "
            "artifact_key = EXCLUDED.artifact_key, updated = now() RETURNING id"
        )
        params = [
            record.name,
            record.classifier,
            *(json_text(n, getattr(record, n)) for n in ("params", "feature_source", "label_source", "cv_metrics")),
            record.artifact_key,
            record.artifact_sha256,
        ]
        with self._transaction() as conn:
            (model_id,) = conn.execute(query, params).fetchone()
        logger.info("registered model %r (id %d, %s)", record.name, model_id, record.artifact_key)
        return int(model_id)

    def register_prediction(self, record: PredictionRecord) -> int:
        """Insert a prediction raster, or update the row of the same ``(model_id, geoparquet_key)``; returns its id.

        Raises:
            InvalidInputError: ``record`` is not a :class:`PredictionRecord`.
            NotFoundError: No model has ``record.model_id``.
            StoreUnavailableError: The connection was lost.
        """
        import psycopg

        if not isinstance(record, PredictionRecord):
            raise InvalidInputError(f"register_prediction takes a PredictionRecord, got {type(record).__name__}")
        self._ensure_tables_once()
        query = (
            "INSERT INTO raster_predictions (model_id, embeddings_source, h3_resolution, cog_key, geoparquet_key, "
            "probability_cog_key, class_counts, bounds, n_cells) "
            "VALUES (%s, %s::jsonb, %s, %s, %s, %s, %s::jsonb, %s::float8[], %s) "
            "ON CONFLICT (model_id, geoparquet_key) DO UPDATE SET embeddings_source = EXCLUDED.embeddings_source, "
            "h3_resolution = EXCLUDED.h3_resolution, cog_key = EXCLUDED.cog_key, "
            "probability_cog_key = EXCLUDED.probability_cog_key, class_counts = EXCLUDED.class_counts, "
            "bounds = EXCLUDED.bounds, n_cells = EXCLUDED.n_cells, updated = now() RETURNING id"
        )
        params = [
            record.model_id,
            json_text("embeddings_source", record.embeddings_source),
            record.h3_resolution,
            record.cog_key,
            record.geoparquet_key,
            record.probability_cog_key,
            json_text("class_counts", record.class_counts),
            list(record.bounds),
            record.n_cells,
        ]
        try:
            with self._transaction() as conn:
                (prediction_id,) = conn.execute(query, params).fetchone()
        except psycopg.errors.ForeignKeyViolation:
            raise NotFoundError(
                f"no model has id {record.model_id} in ml_models at {self.location}; register the model first"
            ) from None
        logger.info("registered prediction %d of model %d (%s)", prediction_id, record.model_id, record.geoparquet_key)
        return int(prediction_id)

    def _ensure_tables_once(self) -> None:
        if not self._tables_ready:
            self.ensure_tables()

    # ----------------------------------------------------------------- reads

    def list_models(self) -> list[dict[str, Any]]:
        """Every model, newest first: a dict per row with the columns of ``ml_models`` (jsonb as dicts).

        Raises:
            StoreUnavailableError: The connection was lost.
        """
        return self._rows(f"SELECT {_MODEL_COLUMNS} FROM ml_models ORDER BY created DESC, id DESC", [])

    def list_predictions(self, model_name: str | None = None) -> list[dict[str, Any]]:
        """Every prediction raster (of models named ``model_name``, if given), newest first.

        Each dict holds the columns of ``raster_predictions`` plus ``model_name``; ``bounds`` is
        ``[west, south, east, north]`` in degrees.

        Raises:
            InvalidInputError: ``model_name`` is given but empty.
            StoreUnavailableError: The connection was lost.
        """
        where, params = "", []
        if model_name is not None:
            where, params = "WHERE m.name = %s ", [check_text("model_name", model_name)]
        query = (
            f"SELECT {_PREDICTION_COLUMNS} FROM raster_predictions p JOIN ml_models m ON m.id = p.model_id "
            f"{where}ORDER BY p.created DESC, p.id DESC"
        )
        return self._rows(query, params)

    def _rows(self, query: str, params: list[Any]) -> list[dict[str, Any]]:
        from psycopg.rows import dict_row

        with self._transaction() as conn:
            if not self._has_tables(conn):
                return []
            with conn.cursor(row_factory=dict_row) as cur:
                return cur.execute(query, params).fetchall()

    # ------------------------------------------------------------ connection

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection]:
        import psycopg

        if self._conn is None:
            raise StoreUnavailableError(f"the registry at {self.location} is closed; open a new one")
        try:
            with self._conn.transaction():
                yield self._conn
        except psycopg.OperationalError as err:
            raise StoreUnavailableError(
                f"lost the connection to the model registry's PostgreSQL at {self.location}: "
                f"{_redact(str(err), self._url)}; check that the server is running"
            ) from None
        except psycopg.errors.ForeignKeyViolation:
            raise  # the caller names the missing model
        except psycopg.Error as err:  # e.g. tables of another shape under the same names
            raise InvalidInputError(
                f"the model registry at {self.location} refused a statement: {_redact(str(err), self._url)}"
            ) from None

    def close(self) -> None:
        """Close the connection, then stop the embedded server if this registry started it; idempotent."""
        conn, self._conn = self._conn, None
        try:
            if conn is not None:
                conn.close()
        finally:
            server, self._server = self._server, None
            if server is not None and os.getpid() == self._server_pid:
                server.stop()

    def __enter__(self) -> Registry:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Registry({self.location!r}{', closed' if self._conn is None else ''})"


def _connect(url: str, connect_timeout_s: float, location: str) -> psycopg.Connection:
    """An autocommit connection, or a VectorGeo error that never quotes the URL's password."""
    import psycopg

    try:
        return psycopg.connect(
            url,
            autocommit=True,
            connect_timeout=max(1, round(connect_timeout_s)),
            application_name="vectorgeo registry",
        )
    except psycopg.ProgrammingError:  # libpq's parse errors may quote the password: withheld
        raise InvalidInputError(
            "the registry's database URL is not a valid PostgreSQL connection string (libpq's message is "
            "withheld, as it may quote the password); check DATABASE_URL: postgresql://USER:PASSWORD@HOST:PORT/DB"
        ) from None
    except psycopg.Error as err:
        raise StoreUnavailableError(
            f"cannot connect to the model registry's PostgreSQL at {location}: {_redact(str(err), url)}; "
            "check DATABASE_URL (host, port, database, user and password) and that the server accepts connections, "
            "or unset it to use the embedded PostgreSQL in VG_DATA_DIR"
        ) from None


def open_registry(database_url: str | None, data_dir: str | Path, *, connect_timeout_s: float = 10.0) -> Registry:
    """Open the registry: on ``database_url`` if given, else on the embedded PostgreSQL in ``data_dir/postgres``.

    The embedded server is the pgvector store's (the same cluster directory): started now if it
    is not running, and then stopped by :meth:`Registry.close`; a server already running there
    (another process, or a pgvector store in this one) is reused and left running.

    Args:
        database_url: A PostgreSQL URL (``DATABASE_URL``); None or empty = the embedded server.
        data_dir: Local directory of the embedded stores (``VG_DATA_DIR``).
        connect_timeout_s: Longest wait for the server, seconds.

    Raises:
        InvalidInputError: ``database_url`` is not a connection string.
        StoreUnavailableError: The server cannot be reached (the message names host, port and database).
        ServerStartError: The embedded server could not be started (the message quotes its log).
    """
    if database_url:
        return Registry(database_url, connect_timeout_s=connect_timeout_s)
    from vectorgeo.stores.postgres_server import EmbeddedPostgres

    server = EmbeddedPostgres(Path(data_dir) / "postgres")
    url = server.start()
    try:
        return Registry(url, connect_timeout_s=connect_timeout_s, server=server)
    except BaseException:
        server.stop()
        raise
