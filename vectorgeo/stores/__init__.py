"""Vector stores: one interface (:class:`~vectorgeo.stores.base.VectorStore`), three adapters, one factory.

The adapters import their drivers lazily, so importing this package loads
neither qdrant, psycopg nor faiss.
"""

from __future__ import annotations

from pathlib import Path

from vectorgeo.errors import InvalidInputError
from vectorgeo.stores.base import GeoFilter, Match, VectorStore

__all__ = ["STORE_KINDS", "GeoFilter", "Match", "VectorStore", "open_store"]

STORE_KINDS = ("qdrant", "pgvector", "faiss")


def open_store(
    kind: str,
    name: str,
    *,
    data_dir: str | Path,
    qdrant_url: str | None = None,
    qdrant_api_key: str | None = None,
    database_url: str | None = None,
    pg_maintenance_work_mem: str | None = None,
) -> VectorStore:
    """Open one store by kind: the production server when its URL is given, else the embedded default.

    Args:
        kind: ``"qdrant"``, ``"pgvector"`` or ``"faiss"``.
        name: Collection / table / index name (e.g. ``demo_res7``).
        data_dir: Local directory for the embedded defaults (Qdrant Edge shards,
            the embedded PostgreSQL cluster, FAISS index files).
        qdrant_url: A Qdrant server (``QDRANT_URL``); None = Qdrant Edge in ``data_dir``.
        qdrant_api_key: Its API key, if any.
        database_url: A PostgreSQL with pgvector (``DATABASE_URL``); None = the
            embedded PostgreSQL in ``data_dir``, started now and stopped on ``close()``.
        pg_maintenance_work_mem: ``maintenance_work_mem`` for pgvector's HNSW build (e.g. ``"4GB"``);
            None sizes it to the graph.

    Raises:
        InvalidInputError: unknown kind.
    """
    data_dir = Path(data_dir)
    if kind == "qdrant":
        from vectorgeo.stores.qdrant import QdrantClientStore, QdrantEdgeStore, connect_qdrant

        client = connect_qdrant(qdrant_url, qdrant_api_key)
        return QdrantClientStore(client, name) if client is not None else QdrantEdgeStore(data_dir / "qdrant" / name)
    if kind == "pgvector":
        from vectorgeo.stores.pgvector import EmbeddedPgVectorStore, PgVectorStore

        options = {"maintenance_work_mem": pg_maintenance_work_mem}
        if database_url:
            return PgVectorStore(database_url, table=name, **options)
        return EmbeddedPgVectorStore(data_dir / "postgres", table=name, **options)
    if kind == "faiss":
        from vectorgeo.stores.faiss import FaissStore

        return FaissStore(data_dir / "faiss" / name)
    raise InvalidInputError(f"unknown store {kind!r}; use one of {', '.join(STORE_KINDS)}")
