"""PostgreSQL + pgvector store: binary COPY upserts, HNSW cosine search, geo filters without PostGIS.

One table per collection::

    h3 bigint primary key        -- the uint64 H3 id, bit-cast to int64
    lat, lng double precision    -- cell centre, degrees (EPSG:4326)
    embedding vector(dim)        -- float32 unit vector
    geo_cell integer             -- generated: the 1-degree grid cell (vectorgeo.stores.geogrid), btree-indexed
    ux, uy, uz double precision  -- generated: the centre as a unit vector (a radius test is one dot product)

After a bulk load the table is CLUSTERed on ``geo_cell``, so the rows of a
region lie together on disk. Geographic filters choose their plan by how
many rows the region's grid cells hold (a capped, index-only count): a small
region is searched exactly over those rows; a large one through the HNSW
index with pgvector's iterative scan, falling back to exact search if that
returns fewer than ``k`` rows. pgvector's HNSW applies a ``WHERE`` after the
graph search, so without this a selective filter returns far fewer than
``k`` rows. No PostGIS needed; a 50 km filter touches a few grid cells
anywhere on the planet. A radius is tested as a dot product of unit vectors
against ``cos(radius)``, which settles every row but those within centimetres
of the circle; those few take the haversine, so answers are exactly
:meth:`~vectorgeo.stores.base.GeoFilter.contains`'s. Polygons use PostgreSQL's
built-in ``point <@ polygon`` (which counts points within 1e-6 degrees of an
edge as inside).

Connections come from a pool (``psycopg_pool``) that each process opens for itself: the store is
thread-safe (:attr:`PgVectorStore.thread_safe`), so the threads of a server worker search at once
on up to ``pool_max_size`` connections instead of queueing for one. A process forked from one that
had opened the pool opens its own on first use and never touches the parent's connections. A
connection found dead (the server restarted) is replaced and the search run once more. The
settings a search plan needs (``hnsw.ef_search``, ``hnsw.iterative_scan``, ``enable_seqscan``, ...)
are session settings of each pooled connection, sent only when they change, so a search is one
round trip to the server, not four (``BEGIN``, ``SET LOCAL``, the query, ``COMMIT``). Loads and
:meth:`PgVectorStore.connection` get a connection with its settings reset.

Connections never use server-side prepared statements (``prepare_threshold=None``), so every
query is planned with its real parameters rather than a generic plan.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from vectorgeo.errors import InvalidInputError, NotConfirmedError, NotFoundError, StoreUnavailableError, VectorGeoError
from vectorgeo.geodesy import EARTH_RADIUS_M
from vectorgeo.stores.base import GeoFilter, Match, cell_ids, in_request_order
from vectorgeo.stores.geogrid import GEO_CELL_SQL, cover_ranges, filter_bbox
from vectorgeo.stores.postgres_server import server_location

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool

__all__ = [
    "EmbeddedPgVectorStore",
    "NotConfirmedError",
    "PgVectorStore",
    "check_table_name",
    "copy_binary_rows",
    "hnsw_build_memory",
    "setup_table",
]

logger = logging.getLogger(__name__)

_TABLE_RE = re.compile(r"^[a-z_][a-z0-9_]{0,47}$")
_MEMORY_RE = re.compile(r"^([1-9][0-9]{0,9})\s*(kB|MB|GB|TB)$")
_MEMORY_UNIT_KB = {"kB": 1, "MB": 1024, "GB": 1024**2, "TB": 1024**3}


def _valid_memory(value: str) -> bool:
    """A size PostgreSQL takes for maintenance_work_mem: 1MB (we ask at least that) to 2147483647 kB."""
    match = _MEMORY_RE.match(value)
    return bool(match) and 1024 <= int(match[1]) * _MEMORY_UNIT_KB[match[2]] <= 2_147_483_647


_PGCOPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
_PGCOPY_TRAILER = (-1).to_bytes(2, "big", signed=True)
_COPY_CHUNK_BYTES = 8 << 20
FETCH_MANY_CHUNK = 20_000
"""Ids per ``COPY ... TO STDOUT`` of :meth:`PgVectorStore.fetch_many`."""

_T = TypeVar("_T")

_OPEN_STORES: weakref.WeakSet[PgVectorStore] = weakref.WeakSet()
_INHERITED_POOLS: list[Any] = []
"""Pools a forked child inherited: kept referenced, never used or closed (their sockets are the parent's)."""


def _forget_pools_after_fork() -> None:
    """In a forked child: every store opens its own pool on first use (the parent's threads did not follow)."""
    for store in list(_OPEN_STORES):
        store._pool_lock = threading.Lock()
        if store._pool is not None:
            _INHERITED_POOLS.append(store._pool)
            store._pool = None


os.register_at_fork(after_in_child=_forget_pools_after_fork)


def check_table_name(table: str) -> str:
    """Return ``table`` if it is a safe PostgreSQL identifier for VectorGeo; raise InvalidInputError otherwise."""
    if not isinstance(table, str) or not _TABLE_RE.match(table):
        raise InvalidInputError(
            f"table name must be lowercase letters, digits and underscores (at most 48, not starting with a digit), "
            f"got {table!r}"
        )
    return table


def _to_int64(h3: np.ndarray) -> np.ndarray:
    """uint64 H3 ids bit-cast to int64 (PostgreSQL has no unsigned bigint)."""
    return np.ascontiguousarray(np.asarray(h3, dtype=np.uint64)).view(np.int64)


def _to_uint64(ids: Any) -> np.ndarray:
    return np.asarray(ids, dtype=np.int64).view(np.uint64)


def _vector_literal(vector: np.ndarray) -> str:
    """pgvector text form; float32 -> float64 -> shortest repr parses back to the same float32."""
    return "[" + ",".join(map(repr, vector.astype(np.float64).tolist())) + "]"


def copy_binary_rows(h3: np.ndarray, lat: np.ndarray, lng: np.ndarray, vectors: np.ndarray) -> bytes:
    """A complete PostgreSQL binary COPY stream for ``(h3 int8, lat float8, lng float8, embedding vector)``.

    Built with one structured numpy array (no per-row Python), big-endian as
    the format requires. The pgvector binary form is ``int16 dim, int16 0,
    dim float32``.

    Args:
        h3: Cell ids, uint64 (stored bit-cast to int64), shape ``(n,)``.
        lat: Latitudes, degrees, shape ``(n,)``.
        lng: Longitudes, degrees, shape ``(n,)``.
        vectors: float32 vectors, shape ``(n, dim)``.

    Returns:
        Header, ``n`` tuples and trailer, as bytes.
    """
    n, dim = vectors.shape
    row = _copy_row(dim)
    rows = np.empty(n, dtype=row)
    rows["nfields"] = 4
    rows["len_h3"] = 8
    rows["h3"] = _to_int64(h3)
    rows["len_lat"] = 8
    rows["lat"] = lat
    rows["len_lng"] = 8
    rows["lng"] = lng
    rows["len_vec"] = 4 + 4 * dim
    rows["dim"] = dim
    rows["unused"] = 0
    rows["vec"] = vectors
    return _PGCOPY_HEADER + rows.tobytes() + _PGCOPY_TRAILER


def _copy_row(dim: int) -> np.dtype:
    """One binary COPY tuple ``(h3 int8, lat float8, lng float8, embedding vector(dim))``, big-endian."""
    return np.dtype(
        [
            ("nfields", ">i2"),
            ("len_h3", ">i4"),
            ("h3", ">i8"),
            ("len_lat", ">i4"),
            ("lat", ">f8"),
            ("len_lng", ">i4"),
            ("lng", ">f8"),
            ("len_vec", ">i4"),
            ("dim", ">i2"),
            ("unused", ">i2"),
            ("vec", ">f4", (dim,)),
        ]
    )


def copy_rows_from_binary(stream: bytes, dim: int) -> np.ndarray:
    """The tuples of a binary COPY stream of ``(h3, lat, lng, embedding)`` (as :func:`copy_binary_rows` writes).

    Returns:
        A structured big-endian array with fields ``h3`` (int8), ``lat``, ``lng``, ``vec`` (``(dim,)`` float32).

    Raises:
        VectorGeoError: the stream is not such tuples (another layout, a NULL).
    """
    header = len(_PGCOPY_HEADER) - 4
    if stream[:11] != _PGCOPY_HEADER[:11] or len(stream) < header + 6:
        raise VectorGeoError("PostgreSQL sent a COPY stream without the binary signature")
    start = header + 4 + int.from_bytes(stream[header : header + 4], "big")  # past the header extension
    body = memoryview(stream)[start : len(stream) - len(_PGCOPY_TRAILER)]
    row = _copy_row(dim)
    if len(body) % row.itemsize or stream[-2:] != _PGCOPY_TRAILER:
        raise VectorGeoError(f"PostgreSQL sent a COPY stream that is not rows of (h3, lat, lng, vector({dim}))")
    rows = np.frombuffer(body, dtype=row)
    if len(rows) and not ((rows["nfields"] == 4) & (rows["len_vec"] == 4 + 4 * dim) & (rows["dim"] == dim)).all():
        raise VectorGeoError(f"PostgreSQL sent COPY rows that are not (h3, lat, lng, vector({dim}))")
    return rows


_BUILD_MEMORY_MIN_MB, _BUILD_MEMORY_MAX_MB = 64, 2048


def hnsw_build_memory(rows: int, dim: int, m: int) -> str:
    """``maintenance_work_mem`` that holds pgvector's in-memory HNSW graph for ``rows`` vectors, as ``"<n>MB"``.

    Per element the build keeps the vector (``4 dim`` bytes) and up to ``2m``
    layer-0 neighbours of 16 bytes each, plus bookkeeping (~200 bytes); a
    quarter more for the upper layers and allocator slack. Clamped to 64 MB ..
    2 GB: a graph that outgrows the setting still builds, only slower (pgvector
    says so in a NOTICE), so a server with less memory to spare can pass its own.
    """
    per_row = 4 * dim + 32 * m + 200
    mb = math.ceil(rows * per_row * 1.25 / 2**20)
    return f"{min(_BUILD_MEMORY_MAX_MB, max(_BUILD_MEMORY_MIN_MB, mb))}MB"


_DOT_MARGIN = 1e-12
"""Band around cos(radius) where the unit-vector test defers to haversine: far above float8 rounding (~1e-15)."""

_UNIT_VECTOR_COLUMNS = {
    "ux": "cos(radians(lat)) * cos(radians(lng))",
    "uy": "cos(radians(lat)) * sin(radians(lng))",
    "uz": "sin(radians(lat))",
}
"""Generated columns: the cell centre as a unit vector, so a radius test is a dot product, not haversine."""


def _unit_vector(lat: float, lng: float) -> list[float]:
    """The point as ``[ux, uy, uz]``, the same formulas as the generated columns."""
    phi, lam = math.radians(lat), math.radians(lng)
    return [math.cos(phi) * math.cos(lam), math.cos(phi) * math.sin(lam), math.sin(phi)]


def _copy_binary(cur: Any, table: Any, stream: bytes) -> None:
    """Send a binary COPY stream of ``(h3, lat, lng, embedding)`` into ``table`` (a ``sql.Identifier``) in chunks."""
    from psycopg import sql

    with cur.copy(sql.SQL("COPY {} (h3, lat, lng, embedding) FROM STDIN (FORMAT BINARY)").format(table)) as copy:
        view = memoryview(stream)
        for start in range(0, len(view), _COPY_CHUNK_BYTES):
            copy.write(view[start : start + _COPY_CHUNK_BYTES])


class PgVectorStore:
    """A :class:`~vectorgeo.stores.base.VectorStore` on PostgreSQL with pgvector (≥ 0.8).

    Args:
        url: libpq connection URL (``DATABASE_URL``, or ``EmbeddedPostgres.url``).
        table: Table name (lowercase identifier).
        maintenance_work_mem: Memory for the HNSW build in :meth:`finish_load` (PostgreSQL units, e.g.
            ``"2GB"``); None sizes it to hold the whole graph (see :func:`hnsw_build_memory`), which makes
            the build several times faster than one that spills.
        hnsw_m: HNSW graph degree.
        hnsw_ef_construction: HNSW build candidate list size.
        hnsw_ef_search: HNSW search candidate list size (raised to ``2k`` for large ``k``).
        exact_max_rows: Regions whose grid cells hold fewer rows than this are searched exactly.
        max_scan_tuples: Cap on tuples an iterative HNSW scan visits before giving up (then exact).
        pool_min_size: Connections each process keeps open.
        pool_max_size: Most connections each process opens: size it to the threads that search at once.
        pool_timeout_s: Longest wait for a free connection (or for the server) before StoreUnavailableError.

    Raises:
        StoreUnavailableError: The server cannot be reached (the message names the host).
    """

    thread_safe = True
    """Searches, fetches and counts may run from several threads at once (each on its own pooled connection)."""

    def __init__(
        self,
        url: str,
        table: str = "vectorgeo",
        *,
        maintenance_work_mem: str | None = None,
        hnsw_m: int = 24,
        hnsw_ef_construction: int = 128,
        hnsw_ef_search: int = 100,
        exact_max_rows: int = 50_000,
        max_scan_tuples: int = 20_000,
        pool_min_size: int = 1,
        pool_max_size: int = 8,
        pool_timeout_s: float = 10.0,
    ) -> None:
        self.table = check_table_name(table)
        if not (isinstance(pool_min_size, int) and isinstance(pool_max_size, int) and pool_min_size >= 0):
            raise InvalidInputError(f"pool sizes must be integers >= 0, got {pool_min_size!r} and {pool_max_size!r}")
        if pool_max_size < max(1, pool_min_size):
            raise InvalidInputError(f"pool_max_size must be >= 1 and >= pool_min_size, got {pool_max_size}")
        if maintenance_work_mem is not None and not _valid_memory(str(maintenance_work_mem)):
            raise InvalidInputError(
                f"maintenance_work_mem must be a PostgreSQL memory size from 1MB to 2047GB such as '512MB' or "
                f"'4GB', got {maintenance_work_mem!r} (VG_PG_MAINTENANCE_WORK_MEM)"
            )
        self.maintenance_work_mem = maintenance_work_mem
        self.hnsw_m = int(hnsw_m)
        self.hnsw_ef_construction = int(hnsw_ef_construction)
        self.hnsw_ef_search = int(hnsw_ef_search)
        self.exact_max_rows = int(exact_max_rows)
        self.max_scan_tuples = int(max_scan_tuples)
        self.pool_min_size, self.pool_max_size, self.pool_timeout_s = pool_min_size, pool_max_size, pool_timeout_s
        self._url = url
        self._pool: ConnectionPool | None = None
        self._pool_lock = threading.Lock()
        self._closed = False
        self._dim: int | None = None
        self._unit_vectors: bool | None = None
        self._hnsw = False  # once the HNSW index is seen it stays: indexes are only ever added
        self._session: weakref.WeakKeyDictionary[Any, dict[str, str]] = weakref.WeakKeyDictionary()
        self.last_plan: str | None = None  # "hnsw", "hnsw+exact" or "exact": the path the last search took
        _OPEN_STORES.add(self)
        self._pool_here()  # connects now: an unreachable server fails here, naming its host

    # ------------------------------------------------------------ connections

    def _pool_here(self) -> ConnectionPool:
        """This process's pool, opened on first use (after a fork the child opens its own)."""
        pool = self._pool
        if pool is not None:
            return pool
        with self._pool_lock:
            if self._closed:
                raise StoreUnavailableError(f"the pgvector store of table {self.table!r} is closed; open a new one")
            if self._pool is None:
                self._pool = self._open_pool()
            return self._pool

    def _open_pool(self) -> ConnectionPool:
        import psycopg
        from psycopg_pool import ConnectionPool, PoolTimeout

        options = {"autocommit": True, "prepare_threshold": None, "application_name": f"vectorgeo {self.table}"}
        try:  # one direct connection first: its error says why the server cannot be reached
            psycopg.connect(self._url, connect_timeout=max(1, round(self.pool_timeout_s)), **options).close()
        except psycopg.OperationalError as err:
            raise StoreUnavailableError(
                f"cannot connect to PostgreSQL at {server_location(self._url)}: {err}; check DATABASE_URL or start the "
                "embedded server"
            ) from err
        pool = ConnectionPool(
            self._url, kwargs=options, min_size=self.pool_min_size, max_size=self.pool_max_size, open=False,
            timeout=self.pool_timeout_s, name=f"vectorgeo-{self.table}-{os.getpid()}",
        )  # fmt: skip
        try:
            pool.open(wait=self.pool_min_size > 0, timeout=self.pool_timeout_s)
        except BaseException as err:  # the pool's threads must not outlive a failed open
            pool.close()
            if not isinstance(err, PoolTimeout):
                raise
            raise StoreUnavailableError(
                f"cannot open {self.pool_min_size} connection(s) to PostgreSQL at {server_location(self._url)} within "
                f"{self.pool_timeout_s:g} s; check the server's max_connections"
            ) from err
        return pool

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """A connection of this process's pool, for one job (a load, a maintenance step, a test).

        Its session settings are the server's defaults (whatever searches changed on it is reset).

        Raises:
            StoreUnavailableError: No connection came free within ``pool_timeout_s``.
        """
        with self._pooled() as conn:
            if self._session.pop(conn, None):
                conn.execute("RESET ALL")
            yield conn

    @contextlib.contextmanager
    def _pooled(self) -> Iterator[psycopg.Connection]:
        from psycopg_pool import PoolTimeout

        try:
            with self._pool_here().connection() as conn:
                yield conn
        except PoolTimeout as err:
            raise StoreUnavailableError(
                f"no connection to PostgreSQL at {server_location(self._url)} came free within "
                f"{self.pool_timeout_s:g} s ({self.pool_max_size} per process); try again"
            ) from err

    def _run(self, job: Callable[[psycopg.Connection], _T]) -> _T:
        """``job`` on a pooled connection; if that connection turns out dead, the pool is checked and ``job`` rerun.

        Only for read-only jobs: one may run twice.
        """
        import psycopg

        for attempt in (1, 2):
            conn = None
            try:
                with self._pooled() as conn:
                    return job(conn)
            except psycopg.OperationalError as err:
                if conn is None or not conn.broken:
                    raise StoreUnavailableError(f"PostgreSQL at {server_location(self._url)} failed: {err}") from err
                if attempt == 2:
                    raise StoreUnavailableError(
                        f"lost the connection to PostgreSQL at {server_location(self._url)} twice: {err}; try again"
                    ) from err
                logger.warning("a PostgreSQL connection was lost (%s); checking the pool and trying again", err)
                self._pool_here().check()  # drops every dead idle connection, not just this one
        raise AssertionError("unreachable")

    # ------------------------------------------------------------- identifiers

    def _ident(self, suffix: str = "") -> Any:
        from psycopg import sql

        return sql.Identifier(self.table + suffix)

    # ------------------------------------------------------------------ schema

    def _table_dim(self, conn: psycopg.Connection) -> int | None:
        """The table's vector dimension, or None when the table does not exist."""
        row = conn.execute(
            "SELECT a.atttypmod FROM pg_attribute a WHERE a.attrelid = to_regclass(%s) AND a.attname = 'embedding'",
            [self.table],
        ).fetchone()
        return None if row is None else int(row[0])

    def _has_column(self, conn: psycopg.Connection, name: str) -> bool:
        row = conn.execute(
            "SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = %s AND NOT attisdropped",
            [self.table, name],
        ).fetchone()
        return row is not None

    def _has_unit_vectors(self, conn: psycopg.Connection) -> bool:
        """Whether the table has the ux/uy/uz columns; tables from earlier versions get them at the next create()."""
        if self._unit_vectors is None:
            self._unit_vectors = self._has_column(conn, "uz")
        return self._unit_vectors

    def _require_dim(self, conn: psycopg.Connection) -> int:
        if self._dim is None:
            self._dim = self._table_dim(conn)
            if self._dim is None:
                raise NotFoundError(f"table {self.table!r} does not exist; call create(dim) or run setup_table first")
        return self._dim

    def create(self, dim: int, *, wipe: bool = False) -> None:
        """Create the table for ``dim``-long vectors (and the ``vector`` extension); ``wipe`` drops it first.

        Raises:
            InvalidInputError: The table exists with another dimension and ``wipe`` is False.
        """
        from psycopg import sql

        if not (isinstance(dim, int | np.integer) and 0 < int(dim) <= 16_000):
            raise InvalidInputError(f"dim must be an integer in 1..16000, got {dim!r}")
        dim = int(dim)
        with self.connection() as conn, conn.transaction():
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            if wipe:
                logger.warning("dropping table %s", self.table)
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(self._ident()))
                self._hnsw = False
            existing = self._table_dim(conn)
            if existing is not None and existing != dim:
                raise InvalidInputError(
                    f"table {self.table!r} holds {existing}-dimensional vectors, not {dim}; "
                    "use another table or recreate it with wipe=True"
                )
            conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (h3 bigint PRIMARY KEY, lat double precision NOT NULL, "
                    "lng double precision NOT NULL, embedding vector({}) NOT NULL)"
                ).format(self._ident(), sql.Literal(dim))
            )
            # Tables made before these columns existed get them now, in one statement: one rewrite of the
            # table, which also rebuilds its indexes (HNSW included) under an exclusive lock.
            generated = {"geo_cell": ("integer", GEO_CELL_SQL)}
            generated |= {name: ("double precision", expr) for name, expr in _UNIT_VECTOR_COLUMNS.items()}
            missing = [name for name in generated if not self._has_column(conn, name)]
            if missing:
                rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(self._ident())).fetchone()[0]
                memory = self.maintenance_work_mem or hnsw_build_memory(int(rows), dim, self.hnsw_m)
                logger.warning(
                    "adding %s to %s (%d rows): the table and its indexes are rewritten once; searches wait",
                    ", ".join(missing),
                    self.table,
                    rows,
                )
                conn.execute("SELECT set_config('maintenance_work_mem', %s, true)", [memory])
                add = sql.SQL(", ").join(
                    sql.SQL(f"ADD COLUMN IF NOT EXISTS {{}} {kind} GENERATED ALWAYS AS ({expr}) STORED").format(
                        sql.Identifier(name)
                    )
                    for name, (kind, expr) in generated.items()
                    if name in missing
                )
                conn.execute(sql.SQL("ALTER TABLE {} ").format(self._ident()) + add)
        self._dim, self._unit_vectors = dim, None

    # -------------------------------------------------------------------- load

    def upsert(self, h3: np.ndarray, lat: np.ndarray, lng: np.ndarray, vectors: np.ndarray) -> int:
        """Insert or replace rows keyed by H3 id, by binary COPY.

        New ids are copied straight into the table; when some already exist the
        batch goes through a staging table and ``INSERT ... ON CONFLICT``.

        Args:
            h3: uint64 cell ids, shape ``(n,)``; a repeated id keeps its last row.
            lat: Latitudes, degrees, shape ``(n,)``.
            lng: Longitudes, degrees, shape ``(n,)``.
            vectors: float32 vectors, shape ``(n, dim)``.

        Returns:
            Distinct ids upserted (rows already identical are left untouched but counted).

        Raises:
            InvalidInputError: Shapes disagree, the dimension is not the table's, or values are not finite.
        """
        with self.connection() as conn:
            return self._upsert(conn, h3, lat, lng, vectors)

    def _upsert(self, conn: psycopg.Connection, h3: Any, lat: Any, lng: Any, vectors: Any) -> int:
        from psycopg import sql

        dim = self._require_dim(conn)
        h3 = np.asarray(h3, dtype=np.uint64).ravel()
        lat = np.asarray(lat, dtype=np.float64).ravel()
        lng = np.asarray(lng, dtype=np.float64).ravel()
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != dim:
            raise InvalidInputError(f"vectors must have shape (n, {dim}) for table {self.table!r}, got {vectors.shape}")
        n = len(h3)
        if not (len(lat) == len(lng) == vectors.shape[0] == n):
            raise InvalidInputError(
                f"h3, lat, lng and vectors must have the same length, got {n}, {len(lat)}, {len(lng)}, "
                f"{vectors.shape[0]}"
            )
        if n == 0:
            return 0
        if not (np.isfinite(vectors).all() and np.isfinite(lat).all() and np.isfinite(lng).all()):
            raise InvalidInputError("vectors, lat and lng must be finite (found NaN or inf)")
        _, last = np.unique(h3[::-1], return_index=True)
        if len(last) < n:  # ON CONFLICT cannot touch a row twice in one statement: keep each id's last row
            keep = np.sort(n - 1 - last)
            h3, lat, lng, vectors = h3[keep], lat[keep], lng[keep], vectors[keep]
        stream = copy_binary_rows(h3, lat, lng, vectors)
        if self._copy_straight_in(conn, stream):
            return len(h3)
        stage = self._ident("_stage")
        with conn.transaction():
            conn.execute(
                sql.SQL(
                    "CREATE TEMP TABLE {} (h3 bigint, lat double precision, lng double precision, embedding vector) "
                    "ON COMMIT DROP"
                ).format(stage)
            )
            with conn.cursor() as cur:
                _copy_binary(cur, stage, stream)
                cur.execute(
                    sql.SQL(
                        "INSERT INTO {} (h3, lat, lng, embedding) SELECT h3, lat, lng, embedding FROM {} "
                        "ON CONFLICT (h3) DO UPDATE SET lat = EXCLUDED.lat, lng = EXCLUDED.lng, "
                        "embedding = EXCLUDED.embedding "
                        # unchanged rows are left alone: a resumed load does not rewrite them or their HNSW entries
                        "WHERE ({t}.lat, {t}.lng, {t}.embedding) IS DISTINCT FROM "
                        "(EXCLUDED.lat, EXCLUDED.lng, EXCLUDED.embedding)"
                    ).format(self._ident(), stage, t=self._ident())
                )
                logger.debug("upserted %d rows into %s (%d new or changed)", len(h3), self.table, cur.rowcount)
        return len(h3)

    def _copy_straight_in(self, conn: psycopg.Connection, stream: bytes) -> bool:
        """Bulk loads of new ids: COPY straight into the table, no staging (several times faster).

        Returns False, having changed nothing, when some id already exists: the
        caller then upserts through the staging table.
        """
        import psycopg

        try:
            with conn.transaction(), conn.cursor() as cur:
                _copy_binary(cur, self._ident(), stream)
        except psycopg.errors.UniqueViolation:
            return False
        return True

    def finish_load(self) -> None:
        """Index the grid column, CLUSTER on it, build the HNSW cosine index if missing, then VACUUM ANALYZE.

        The first finish after a bulk load (no HNSW index yet) CLUSTERs the
        table on ``geo_cell``, so a region's rows share pages; later calls
        leave the order alone (a CLUSTER would also rebuild the HNSW graph).
        The HNSW build uses ``maintenance_work_mem``; building after the load
        is several times faster than maintaining the graph row by row.
        """
        with self.connection() as conn:
            dim = self._require_dim(conn)
            memory = self.maintenance_work_mem or hnsw_build_memory(self._count(conn), dim, self.hnsw_m)
            conn.execute("SELECT set_config('maintenance_work_mem', %s, false)", [memory])
            try:
                self._build_indexes(conn, memory)
            finally:
                conn.execute("RESET maintenance_work_mem")  # the connection goes back to the pool

    def _build_indexes(self, conn: psycopg.Connection, memory: str) -> None:
        from psycopg import sql

        conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(self._ident("_latlng")))  # before the grid
        conn.execute(
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (geo_cell)").format(self._ident("_geo"), self._ident())
        )
        if not self._has_hnsw(conn):
            logger.info("clustering %s on its grid cells", self.table)
            conn.execute(sql.SQL("CLUSTER {} USING {}").format(self._ident(), self._ident("_geo")))
        logger.info("building the HNSW index on %s (maintenance_work_mem=%s)", self.table, memory)
        conn.execute(
            sql.SQL(
                "CREATE INDEX IF NOT EXISTS {} ON {} USING hnsw (embedding vector_cosine_ops) "
                "WITH (m = {}, ef_construction = {})"
            ).format(
                self._ident("_hnsw"),
                self._ident(),
                sql.Literal(self.hnsw_m),
                sql.Literal(self.hnsw_ef_construction),
            )
        )
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(self._ident()))  # also lets counts be index-only

    # ------------------------------------------------------------------ search

    def _geo_sql(self, geo: GeoFilter | None, *, indexable: bool, unit_vectors: bool) -> tuple[Any, list[Any]]:
        """The WHERE fragment for ``geo`` over a row source with ``lat``/``lng``.

        ``indexable=False`` hides lat/lng from any index (``lat + 0``), for the HNSW plan.
        """
        from psycopg import sql

        if geo is None:
            return sql.SQL("TRUE"), []
        lat_col = sql.SQL("lat") if indexable else sql.SQL("(lat + 0)")
        lng_col = sql.SQL("lng") if indexable else sql.SQL("(lng + 0)")
        west, south, east, north = filter_bbox(geo)
        parts = [sql.SQL("{} >= %s AND {} <= %s").format(lat_col, lat_col)]
        params: list[Any] = [south, north]
        if west <= east:
            if not (west <= -180 and east >= 180):
                parts.append(sql.SQL("{} >= %s AND {} <= %s").format(lng_col, lng_col))
                params += [west, east]
        else:
            parts.append(sql.SQL("({} >= %s OR {} <= %s)").format(lng_col, lng_col))
            params += [west, east]
        if geo.is_polygon:
            # PostgreSQL's own point-in-polygon (plane of lng/lat, like GeoFilter); no PostGIS needed
            parts.append(sql.SQL("point(lng, lat) <@ %s::polygon"))
            params.append("(" + ",".join(f"({x!r},{y!r})" for x, y in geo.polygon) + ")")
        if geo.is_radius:
            # the same haversine as vectorgeo.geodesy.haversine_m, term for term
            haversine = sql.SQL(
                "2 * %s * asin(sqrt(least(1.0, greatest(0.0, sin((radians(lat) - radians(%s)) / 2) ^ 2 "
                "+ cos(radians(%s)) * cos(radians(lat)) * sin(radians(lng - %s) / 2) ^ 2)))) <= %s"
            )
            haversine_params = [EARTH_RADIUS_M, geo.lat, geo.lat, geo.lng, geo.radius_km * 1000.0]
            if unit_vectors:
                # The stored unit vectors decide every row farther than _DOT_MARGIN (a few cm) from the circle
                # with one dot product; only rows on the edge take the haversine.
                centre = _unit_vector(geo.lat, geo.lng)
                cos_radius = math.cos(geo.radius_km * 1000.0 / EARTH_RADIUS_M)
                dot = sql.SQL("(ux * %s + uy * %s + uz * %s)")
                parts.append(
                    sql.SQL("({dot} >= %s OR ({dot} >= %s AND {haversine}))").format(dot=dot, haversine=haversine)
                )
                params += [*centre, cos_radius + _DOT_MARGIN, *centre, cos_radius - _DOT_MARGIN, *haversine_params]
            else:
                parts.append(haversine)
                params += haversine_params
        return sql.SQL(" AND ").join(parts), params

    def _region_rows(self, geo: GeoFilter, columns: str) -> tuple[Any, list[Any]]:
        """``SELECT columns`` of the rows in the grid cells covering ``geo`` (one btree range scan per range)."""
        from psycopg import sql

        lo, hi = cover_ranges(geo)
        query = sql.SQL(
            "SELECT " + columns + " FROM unnest(%s::integer[], %s::integer[]) AS cover(lo, hi) "
            "JOIN {} t ON t.geo_cell BETWEEN cover.lo AND cover.hi"
        ).format(self._ident())
        return query, [lo.tolist(), hi.tolist()]

    def _region_is_small(self, conn: psycopg.Connection, geo: GeoFilter | None) -> bool:
        """True when the filter's grid cells hold fewer than ``exact_max_rows`` rows (a capped, index-only count)."""
        from psycopg import sql

        if geo is None:
            return False
        rows, params = self._region_rows(geo, "1")
        query = sql.SQL("SELECT count(*) FROM ({} LIMIT %s) s").format(rows)
        (n,) = conn.execute(query, [*params, self.exact_max_rows]).fetchone()
        return int(n) < self.exact_max_rows

    def _search_query(
        self, conn: psycopg.Connection, plan: str, qvec: str, k: int, geo: GeoFilter | None, exclude_ids: list[int]
    ) -> tuple[Any, list[Any]]:
        from psycopg import sql

        unit_vectors = geo is not None and geo.is_radius and self._has_unit_vectors(conn)
        if plan == "exact":
            columns = "t.h3, t.lat, t.lng, t.embedding" + (", t.ux, t.uy, t.uz" if unit_vectors else "")
            if geo is None:
                rows, row_params = sql.SQL("SELECT " + columns + " FROM {} t").format(self._ident()), []
            else:
                rows, row_params = self._region_rows(geo, columns)
            where, params = self._geo_sql(geo, indexable=True, unit_vectors=unit_vectors)
            # OFFSET 0 plans the region alone (btree range scans, as the cover asks) and keeps the filter above it;
            # "+ 0" keeps the ORDER BY from the HNSW index: a true exact scan, one distance per row inside
            query = sql.SQL(
                "SELECT h3, 1 - distance AS score, lat, lng FROM (SELECT h3, lat, lng, "
                "(embedding <=> %s::vector) + 0 AS distance FROM ({} OFFSET 0) region WHERE {} AND h3 <> ALL(%s)) "
                "inside ORDER BY distance, h3 LIMIT %s"
            ).format(rows, where)
            return query, [qvec, *row_params, *params, exclude_ids, k]
        where, params = self._geo_sql(geo, indexable=False, unit_vectors=unit_vectors)
        # relaxed_order may return rows slightly out of order: re-sort the materialized candidates
        query = sql.SQL(
            "WITH candidates AS MATERIALIZED (SELECT h3, lat, lng, embedding <=> %s::vector AS distance FROM {} "
            "WHERE {} AND h3 <> ALL(%s) ORDER BY embedding <=> %s::vector LIMIT %s) "
            "SELECT h3, 1 - distance AS score, lat, lng FROM candidates ORDER BY distance, h3"
        ).format(self._ident(), where)
        return query, [qvec, *params, exclude_ids, qvec, k]

    def _settings(self, plan: str, k: int, geo: GeoFilter | None, filtered: bool) -> dict[str, str]:
        """The session settings a query of ``plan`` runs under (those it does not name do not matter to it)."""
        if plan == "hnsw":
            return {
                "hnsw.ef_search": str(min(1000, max(self.hnsw_ef_search, 2 * k))),
                "hnsw.iterative_scan": "relaxed_order" if filtered else "off",
                "hnsw.max_scan_tuples": str(self.max_scan_tuples),
                "enable_seqscan": "off",  # with the btree hidden, this leaves the HNSW scan
            }
        # exact: a region's rows through the grid index (as the plan would choose anyway), a whole table in order
        return {"enable_seqscan": "on" if geo is None else "off"}

    def _use_settings(self, conn: psycopg.Connection, wanted: dict[str, str]) -> None:
        """Make ``wanted`` this connection's session settings: one round trip when some differ, none otherwise.

        A search is a few milliseconds: round trips count. The settings only steer plans (no result depends
        on a setting left from an earlier search), and loads get a reset connection (:meth:`connection`).
        """
        current = self._session.setdefault(conn, {})
        changed = [(name, value) for name, value in wanted.items() if current.get(name) != value]
        if changed:
            calls = ", ".join(["set_config(%s, %s, false)"] * len(changed))
            conn.execute(f"SELECT {calls}", [v for pair in changed for v in pair])
            current.update(changed)

    def _prepare(
        self, conn: psycopg.Connection, vector: np.ndarray, k: int, exclude: tuple[int, ...]
    ) -> tuple[str, list[int]]:
        dim = self._require_dim(conn)
        if not isinstance(k, int | np.integer) or k < 1:
            raise InvalidInputError(f"k must be a positive integer, got {k!r}")
        vector = np.asarray(vector, dtype=np.float32).ravel()
        if vector.shape != (dim,) or not np.isfinite(vector).all():
            raise InvalidInputError(
                f"query vector must hold {dim} finite floats for table {self.table!r}, got shape {vector.shape}"
            )
        return _vector_literal(vector), _to_int64(np.asarray(exclude, dtype=np.uint64)).tolist()

    def _choose_plan(self, conn: psycopg.Connection, geo: GeoFilter | None) -> str:
        if not self._has_hnsw(conn):
            return "exact"
        return "exact" if self._region_is_small(conn, geo) else "hnsw"

    def _has_hnsw(self, conn: psycopg.Connection) -> bool:
        """Whether the table has its HNSW index; asked of the server until the answer is yes, then remembered."""
        if not self._hnsw:
            row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [self.table + "_hnsw"]).fetchone()
            self._hnsw = bool(row[0])
        return self._hnsw

    def search(
        self, vector: np.ndarray, k: int, *, geo: GeoFilter | None = None, exclude: tuple[int, ...] = ()
    ) -> list[Match]:
        """The ``k`` cells most cosine-similar to ``vector`` (best first), inside ``geo``, not in ``exclude``.

        Unfiltered queries use HNSW with ``hnsw.ef_search = max(hnsw_ef_search, 2k)``.
        Filtered queries over a small region are exact; over a large region
        they use HNSW with an iterative scan, and fall back to exact search
        when that returns fewer than ``k`` rows, so ``k`` rows come back
        whenever ``k`` qualify. Score = 1 - cosine distance.

        Raises:
            InvalidInputError: ``k`` < 1, or the vector is not ``dim`` finite floats.
            NotFoundError: The table does not exist.
            StoreUnavailableError: The server cannot be reached, or no connection came free in time.
        """
        rows, plan = self._run(lambda conn: self._search(conn, vector, k, geo, exclude))
        self.last_plan = plan
        if not rows:
            return []
        ids = _to_uint64([r[0] for r in rows]).tolist()
        return [Match(i, float(r[1]), float(r[2]), float(r[3])) for i, r in zip(ids, rows, strict=True)]

    def _search(
        self, conn: psycopg.Connection, vector: np.ndarray, k: int, geo: GeoFilter | None, exclude: tuple[int, ...]
    ) -> tuple[list[tuple[Any, ...]], str]:
        qvec, exclude_ids = self._prepare(conn, vector, k, exclude)
        plan = self._choose_plan(conn, geo)
        filtered = geo is not None or bool(exclude_ids)
        rows: list[tuple[Any, ...]] = []
        if plan == "hnsw":
            query, params = self._search_query(conn, "hnsw", qvec, k, geo, exclude_ids)
            self._use_settings(conn, self._settings("hnsw", k, geo, filtered))
            rows = conn.execute(query, params).fetchall()
            if len(rows) < k:
                logger.debug("HNSW returned %d < %d rows; falling back to exact search", len(rows), k)
                plan = "hnsw+exact"
        if plan != "hnsw":
            query, params = self._search_query(conn, "exact", qvec, k, geo, exclude_ids)
            self._use_settings(conn, self._settings("exact", k, geo, filtered))
            rows = conn.execute(query, params).fetchall()
        return rows, plan

    def explain_search(
        self, vector: np.ndarray, k: int, *, geo: GeoFilter | None = None, exclude: tuple[int, ...] = ()
    ) -> str:
        """The plan PostgreSQL uses for :meth:`search`'s first query, under the same settings and parameters."""
        from psycopg import sql

        def explain(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
            qvec, exclude_ids = self._prepare(conn, vector, k, exclude)
            plan = self._choose_plan(conn, geo)
            query, params = self._search_query(conn, plan, qvec, k, geo, exclude_ids)
            self._use_settings(conn, self._settings(plan, k, geo, geo is not None or bool(exclude_ids)))
            return conn.execute(sql.SQL("EXPLAIN (COSTS OFF) ") + query, params).fetchall()

        return "\n".join(r[0] for r in self._run(explain))

    # ------------------------------------------------------------- fetch/count

    def fetch(self, h3: int) -> tuple[np.ndarray, float, float]:
        """A cell's float32 vector and centre ``(vector, lat, lng)`` (degrees).

        Raises:
            NotFoundError: No row has this id.
        """
        from psycopg import sql

        key = int(_to_int64(np.array([h3], dtype=np.uint64))[0])

        def fetch(conn: psycopg.Connection) -> tuple[Any, ...] | None:
            self._require_dim(conn)
            query = sql.SQL("SELECT embedding::real[], lat, lng FROM {} WHERE h3 = %s").format(self._ident())
            return conn.execute(query, [key]).fetchone()

        row = self._run(fetch)
        if row is None:
            raise NotFoundError(f"cell {int(h3)} ({int(h3):x}) is not in table {self.table!r}")
        return np.asarray(row[0], dtype=np.float32), float(row[1]), float(row[2])

    def fetch_many(self, h3: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """float32 vectors and centres of the cells present: ``(found_h3, vectors, lat, lng)``, in request order.

        One ``COPY (SELECT ... WHERE h3 = ANY(%s)) TO STDOUT (FORMAT BINARY)`` per :data:`FETCH_MANY_CHUNK` ids
        (the ids bound as an int8 array, bit-cast from uint64), its tuples read by numpy in one pass; see
        :meth:`~vectorgeo.stores.base.VectorStore.fetch_many`.
        """
        from psycopg import sql

        ids = cell_ids(h3)
        _, first = np.unique(ids, return_index=True)
        ids = ids[np.sort(first)]
        keys = _to_int64(ids)
        query = sql.SQL(
            "COPY (SELECT h3, lat, lng, embedding FROM {} WHERE h3 = ANY(%s::bigint[])) TO STDOUT (FORMAT BINARY)"
        ).format(self._ident())

        def fetch(conn: psycopg.Connection) -> tuple[int, list[np.ndarray]]:
            dim = self._require_dim(conn)
            parts = []
            with conn.cursor() as cur:
                for start in range(0, len(keys), FETCH_MANY_CHUNK):
                    with cur.copy(query, [keys[start : start + FETCH_MANY_CHUNK].tolist()]) as copy:
                        stream = b"".join(copy)
                    parts.append(copy_rows_from_binary(stream, dim))
            return dim, parts

        dim, parts = self._run(fetch)
        rows = np.concatenate(parts) if parts else np.empty(0, _copy_row(dim))
        found = _to_uint64(rows["h3"].astype(np.int64))
        return in_request_order(ids, found, rows["vec"].astype(np.float32), rows["lat"], rows["lng"], dim)

    def count(self) -> int:
        """Rows stored."""
        return self._run(self._count)

    def _count(self, conn: psycopg.Connection) -> int:
        from psycopg import sql

        self._require_dim(conn)
        (n,) = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(self._ident())).fetchone()
        return int(n)

    def close(self) -> None:
        """Close this process's pool and its connections (the server keeps running); idempotent."""
        with self._pool_lock:
            pool, self._pool, self._closed = self._pool, None, True
        _OPEN_STORES.discard(self)
        if pool is not None:
            pool.close()

    def __enter__(self) -> PgVectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EmbeddedPgVectorStore(PgVectorStore):
    """A :class:`PgVectorStore` on the embedded PostgreSQL in ``cluster_dir``: started here, stopped on ``close()``."""

    def __init__(self, cluster_dir: str | Path, table: str = "vectorgeo", **options: Any) -> None:
        from vectorgeo.stores.postgres_server import EmbeddedPostgres

        self.server = EmbeddedPostgres(Path(cluster_dir))
        url = self.server.start()
        self._server_pid = os.getpid()
        try:
            super().__init__(url, table=table, **options)
        except BaseException:
            self.server.stop()
            raise

    def close(self) -> None:
        """Close the pool, then stop the server (only in the process that started it, never in a forked child)."""
        try:
            super().close()
        finally:
            if os.getpid() == self._server_pid:
                self.server.stop()


def setup_table(url: str, table: str, dim: int, *, wipe_existing: bool, confirm: Callable[[str], bool]) -> int:
    """Create the table, or recreate it when ``wipe_existing`` (as the seed's ``setup-aurora.py`` did).

    Args:
        url: libpq connection URL.
        table: Table name.
        dim: Vector dimension.
        wipe_existing: Drop and recreate an existing table.
        confirm: Called with a description of what will be destroyed when the
            table holds rows; must return True to go ahead (scripts ask loudly).

    Returns:
        Rows in the table afterwards (0 after a wipe).

    Raises:
        NotConfirmedError: ``confirm`` declined to wipe a non-empty table.
        InvalidInputError: The table exists with another dimension and ``wipe_existing`` is False.
    """
    with PgVectorStore(url, table, pool_max_size=1) as store:
        with store.connection() as conn:
            existing_dim = store._table_dim(conn)
        if wipe_existing and existing_dim is not None:
            n = store.count()
            if n > 0:
                message = f"DROP table {table!r} holding {n} rows of {existing_dim}-dimensional vectors?"
                if not confirm(message):
                    raise NotConfirmedError(f"refused to wipe table {table!r} ({n} rows): not confirmed")
        store.create(dim, wipe=wipe_existing)
        return store.count()
