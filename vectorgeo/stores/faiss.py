"""FAISS store: index files in a local directory, loaded in-process, exact re-ranking on the stored vectors.

The directory holds everything that is later copied to the bucket under ``indexes/{name}/``
(see :data:`INDEX_FILES`); this adapter only reads and writes the local directory.

* ``index.faiss``: the FAISS index; FAISS ids are row positions, never H3 ids (FAISS ids are int64).
* ``h3.npy`` (uint64, sorted ascending), ``lat.npy``, ``lng.npy`` (float64 degrees, WGS84): the id map.
* ``vectors.npy``: the full-precision float32 unit vectors, for exact re-ranking, ``fetch`` and
  :meth:`FaissStore.threshold_query`.
* ``geo_order.npy``, ``geo_keys.npy``: row positions sorted by their 1-degree grid cell
  (:mod:`vectorgeo.stores.geogrid`) and those keys, so a geographic filter only evaluates the rows
  in the grid cells it touches.
* ``metadata.json``: model, resolution, count, dim, index type and parameters, build time, file sizes
  and the source shards with their checksums. Written last: it marks a complete build.

The index type is chosen by size at :meth:`FaissStore.finish_load`: exact ``IndexFlatIP`` below
``flat_max_rows`` (50 000), ``IndexHNSWFlat`` (inner product, M=32) up to ``ivfpq_min_rows`` (2 000 000),
``IndexIVFPQ`` (inner product, 8-bit codes) above, where the HNSW graph (~260 bytes a row) would no longer
fit a serving machine comfortably. Approximate candidates are always re-ranked exactly on the stored vectors.

A built index is opened memory-mapped and read-only (the ``.npy`` arrays, and the FAISS index itself
where FAISS can: ``IO_FLAG_MMAP_IFC`` covers the flat, HNSW and IVF-PQ indexes chosen here), so the
worker processes of a server share one copy in the page cache instead of holding one each. Files are
only ever replaced whole (written aside, then renamed), never rewritten in place under a mapping.
Searches, fetches and counts on an opened index may run from several threads at once
(:attr:`FaissStore.thread_safe`); loading must not overlap them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import os
import secrets
from pathlib import Path
from typing import Any

import numpy as np

from vectorgeo.errors import InvalidInputError, NotFoundError, VectorGeoError
from vectorgeo.stores.base import GeoFilter, Match, cell_ids
from vectorgeo.stores.geogrid import cover_ranges, filter_bbox, geo_cells

__all__ = ["INDEX_FILES", "FaissStore", "is_current"]

logger = logging.getLogger(__name__)

METADATA_FILE = "metadata.json"
_INDEX_FILE = "index.faiss"
_ARRAY_FILES = ("h3.npy", "lat.npy", "lng.npy", "vectors.npy", "geo_order.npy", "geo_keys.npy")
INDEX_FILES = (_INDEX_FILE, *_ARRAY_FILES, METADATA_FILE)
"""Every file of a built index, in the order to copy them (``metadata.json`` last)."""

_TMP_MARK = ".tmp-"
_FLAT_MAX_ROWS = 50_000  # below: exact IndexFlatIP (a 50k x 64 scan is ~1 ms)
_IVFPQ_MIN_ROWS = 2_000_000  # from here: IVF-PQ, ~dim/2 bytes a row instead of an HNSW graph
_EXACT_MAX_ROWS = 20_000  # a filter leaving fewer rows is answered by brute force over them
_HNSW_M = 32
_HNSW_EF_CONSTRUCTION = 128
_HNSW_EF_SEARCH = 128
_IVF_NPROBE = 32
_IVF_RERANK = 8  # IVF-PQ fetches this many times k candidates for exact re-ranking
_MAX_EF_SEARCH = 4096


def _read_index(faiss: Any, path: Path) -> Any:
    """The FAISS index at ``path``, memory-mapped read-only where this FAISS can, else read into memory."""
    mmap = getattr(faiss, "IO_FLAG_MMAP_IFC", 0)
    if mmap:
        try:
            return faiss.read_index(str(path), mmap | faiss.IO_FLAG_READ_ONLY)
        except RuntimeError as exc:  # an index type FAISS cannot map
            logger.warning("cannot memory-map %s (%s); reading it into memory", path, exc)
    return faiss.read_index(str(path))


def _map_arrays(directory: Path) -> tuple[np.ndarray, ...]:
    """The ``.npy`` arrays of :data:`_ARRAY_FILES`, memory-mapped read-only, as plain ndarray views.

    Plain views index several times faster than ``np.memmap`` objects (no Python-level ``__getitem__``),
    and still read the mapped file.
    """
    return tuple(np.asarray(np.load(directory / name, mmap_mode="r")) for name in _ARRAY_FILES)


def _tmp_path(path: Path) -> Path:
    return path.with_name(f"{path.name}{_TMP_MARK}{secrets.token_hex(4)}")


def _read_metadata(directory: Path) -> dict[str, Any] | None:
    """The metadata of a complete build in ``directory``, or None when there is none (or it is damaged)."""
    path = directory / METADATA_FILE
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable %s: %s", path, exc)
        return None
    sizes = meta.get("files", {})
    for name in (_INDEX_FILE, *_ARRAY_FILES):
        file = directory / name
        if not file.is_file() or file.stat().st_size != sizes.get(name):
            logger.warning("index in %s is incomplete: %s is missing or has the wrong size", directory, name)
            return None
    return meta


def is_current(directory: str | Path, sources: dict[str, str]) -> bool:
    """Whether the index in ``directory`` was built from exactly these source shards.

    Args:
        directory: The local index directory.
        sources: Source shard key -> checksum, as given to :meth:`FaissStore.finish_load`.

    Returns:
        True when a complete build exists and its ``metadata.json`` lists the same keys with the
        same checksums, so the caller can skip a rebuild.
    """
    meta = _read_metadata(Path(directory))
    return meta is not None and meta.get("sources") == {str(k): str(v) for k, v in sources.items()}


def _to_uint64(values: Any, what: str = "h3") -> np.ndarray:
    """H3 ids as a 1-D uint64 array; rejects negative or non-integer ids."""
    if not isinstance(values, np.ndarray | np.generic):
        # Python ints: np.asarray would turn a mix of ids above and below 2**63 into float64.
        values = np.array(list(values) if isinstance(values, list | tuple) else [values], dtype=object)
    arr = np.asarray(values)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.dtype.kind == "u":
        return arr.astype(np.uint64, copy=False)
    if arr.dtype.kind == "i":
        if arr.size and arr.min() < 0:
            raise InvalidInputError(f"{what} ids must be non-negative uint64 H3 cells, got {arr.min()}")
        return arr.astype(np.uint64)
    if arr.dtype.kind == "O" or arr.size == 0:
        try:
            ints = [int(v) for v in arr.ravel()]
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"{what} ids must be integers (uint64 H3 cells), got {arr.dtype}") from exc
        if any(not 0 <= v < 2**64 for v in ints):
            raise InvalidInputError(f"{what} ids must be in 0..2**64-1, got {[v for v in ints if not 0 <= v < 2**64]}")
        return np.array(ints, dtype=np.uint64)
    raise InvalidInputError(f"{what} ids must be integers (uint64 H3 cells), got dtype {arr.dtype}")


def _unit_rows(vectors: np.ndarray, what: str) -> np.ndarray:
    """Rows scaled to unit length (float32); rejects non-finite or zero rows."""
    vec = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vec, axis=-1, keepdims=True)
    bad = ~np.isfinite(norms) | (norms == 0)
    if bad.any():
        raise InvalidInputError(f"{what} must be finite and non-zero, {int(bad.sum())} row(s) are not")
    return vec / norms


class FaissStore:
    """A :class:`~vectorgeo.stores.base.VectorStore` kept as FAISS index files in a local directory.

    Opening a directory that holds a complete build maps it read-only (the ``.npy`` arrays and the index).
    Rows upserted since the last :meth:`finish_load` are searchable at once (exactly); they are
    indexed and written to disk only by :meth:`finish_load`.

    Args:
        directory: Local directory for the index files; created if missing.
        flat_max_rows: Below this many rows the index is an exact ``IndexFlatIP``.
        ivfpq_min_rows: From this many rows the index is ``IndexIVFPQ``; between the two, HNSW.
        exact_max_rows: Geographic filters leaving fewer rows than this are answered by brute force.
        hnsw_m: HNSW graph degree.
        ef_construction: HNSW build beam width.
        ef_search: HNSW search beam width (raised to at least the number of candidates asked for).
        nprobe: IVF lists searched per query.
        seed: Seed of the IVF-PQ training sample.
    """

    thread_safe = True
    """Searches, fetches and counts may run from several threads at once; loading must not overlap them."""

    def __init__(
        self,
        directory: str | Path,
        *,
        flat_max_rows: int = _FLAT_MAX_ROWS,
        ivfpq_min_rows: int = _IVFPQ_MIN_ROWS,
        exact_max_rows: int = _EXACT_MAX_ROWS,
        hnsw_m: int = _HNSW_M,
        ef_construction: int = _HNSW_EF_CONSTRUCTION,
        ef_search: int = _HNSW_EF_SEARCH,
        nprobe: int = _IVF_NPROBE,
        seed: int = 0,
    ) -> None:
        import faiss  # heavy: only when a FAISS store is actually used

        self._faiss = faiss
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.flat_max_rows, self.ivfpq_min_rows, self.exact_max_rows = flat_max_rows, ivfpq_min_rows, exact_max_rows
        self.hnsw_m, self.ef_construction, self.ef_search, self.nprobe = hnsw_m, ef_construction, ef_search, nprobe
        self.seed = seed
        self._reset()
        self._load()

    # ----------------------------------------------------------------- state

    def _reset(self) -> None:
        self._dim: int | None = None
        self._meta: dict[str, Any] = {}
        self._index: Any = None  # None: no index over the current rows, search is exact
        self._h3 = np.empty(0, np.uint64)
        self._lat = np.empty(0, np.float64)
        self._lng = np.empty(0, np.float64)
        self._vectors = np.empty((0, 0), np.float32)
        self._geo_order = np.empty(0, np.int64)
        self._geo_keys = np.empty(0, np.int32)
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

    def _load(self) -> None:
        meta = _read_metadata(self.directory)
        if meta is None:
            return
        d = self.directory
        self._meta = meta
        self._dim = int(meta["dim"])
        self._h3, self._lat, self._lng, self._vectors, self._geo_order, self._geo_keys = _map_arrays(d)
        if self._vectors.shape != (meta["count"], self._dim):
            raise VectorGeoError(
                f"index in {d} is inconsistent: vectors {self._vectors.shape}, metadata count {meta['count']} "
                f"dim {self._dim}; rebuild it (create(dim, wipe=True), upsert, finish_load)"
            )
        self._index = _read_index(self._faiss, d / _INDEX_FILE)
        logger.info("opened FAISS index %s: %d rows, %s", d, meta["count"], meta["index"]["type"])

    def _consolidate(self) -> None:
        """Merge pending upserts into the row arrays (last write wins, sorted by H3 id)."""
        if not self._pending:
            return
        parts = [(self._h3, self._lat, self._lng, self._vectors)] if len(self._h3) else []
        parts += self._pending
        h3 = np.concatenate([p[0] for p in parts])
        rev = h3[::-1]
        self._h3, first = np.unique(rev, return_index=True)
        take = len(h3) - 1 - first  # last occurrence of each id, in ascending id order
        self._lat = np.concatenate([p[1] for p in parts])[take]
        self._lng = np.concatenate([p[2] for p in parts])[take]
        self._vectors = np.ascontiguousarray(np.concatenate([p[3] for p in parts])[take])
        keys = geo_cells(self._lat, self._lng)
        self._geo_order = np.argsort(keys, kind="stable")
        self._geo_keys = keys[self._geo_order]
        self._pending = []
        self._index = None

    # ------------------------------------------------------------ protocol

    def create(self, dim: int, *, wipe: bool = False) -> None:
        """Prepare for ``dim``-long vectors; ``wipe`` deletes the index files and every row first.

        Raises:
            InvalidInputError: ``dim`` is not positive, or differs from the stored rows without ``wipe``.
        """
        if not isinstance(dim, int | np.integer) or dim < 1:
            raise InvalidInputError(f"dim must be a positive integer, got {dim!r}")
        if wipe:
            for name in (METADATA_FILE, _INDEX_FILE, *_ARRAY_FILES):  # metadata first: the build is gone
                with contextlib.suppress(FileNotFoundError):
                    (self.directory / name).unlink()
            self._reset()
        if self._dim is not None and self._dim != dim:
            raise InvalidInputError(
                f"the FAISS store in {self.directory} holds {self._dim}-d vectors, not {dim}-d; "
                "use create(dim, wipe=True) to replace it"
            )
        self._dim = int(dim)

    def upsert(self, h3: np.ndarray, lat: np.ndarray, lng: np.ndarray, vectors: np.ndarray) -> int:
        """Insert or replace rows keyed by H3 id (the same id replaces the old row).

        Args:
            h3: H3 cell ids, uint64, shape (n,).
            lat: Cell-centre latitudes, degrees WGS84, shape (n,).
            lng: Cell-centre longitudes, degrees WGS84, shape (n,).
            vectors: Embeddings, shape (n, dim); stored scaled to unit length (float32).

        Returns:
            Rows written (n).

        Raises:
            InvalidInputError: Shapes disagree, ``dim`` differs from the store's, or values are out of range.
        """
        ids = _to_uint64(h3)
        lat = np.asarray(lat, dtype=np.float64).reshape(-1)
        lng = np.asarray(lng, dtype=np.float64).reshape(-1)
        vec = np.asarray(vectors, dtype=np.float32)
        if vec.ndim != 2 or not (len(ids) == len(lat) == len(lng) == len(vec)):
            raise InvalidInputError(
                f"upsert needs h3, lat, lng of shape (n,) and vectors of shape (n, dim); got {ids.shape}, "
                f"{lat.shape}, {lng.shape}, {vec.shape}"
            )
        if self._dim is None:
            self._dim = vec.shape[1]
        if vec.shape[1] != self._dim:
            raise InvalidInputError(
                f"vectors are {vec.shape[1]}-d but the store in {self.directory} holds {self._dim}-d vectors; "
                "use create(dim, wipe=True) to replace it"
            )
        if not (np.all(np.abs(lat) <= 90) and np.all(np.abs(lng) <= 180)):
            raise InvalidInputError("lat must lie in -90..90 and lng in -180..180 degrees (NaN is not allowed)")
        if len(ids):
            self._pending.append((ids.copy(), lat.copy(), lng.copy(), _unit_rows(vec, "vectors")))
        return len(ids)

    def finish_load(
        self,
        sources: dict[str, str] | None = None,
        model: str | None = None,
        h3_resolution: int | None = None,
    ) -> None:
        """Build the index over every row and write all files atomically (``metadata.json`` last).

        Each file goes to a temporary name first; only when all are written is the old
        ``metadata.json`` removed, the files moved into place and the new metadata written, so an
        interrupted build leaves either the previous build or no build (never a mix) and no
        temporary files.

        Args:
            sources: Source shard key -> checksum, recorded for :func:`is_current`. None keeps the previous.
            model: Name of the model that made the vectors. None keeps the previous.
            h3_resolution: H3 resolution of the cells. None keeps the previous.

        Raises:
            InvalidInputError: The store has no dimension yet (call ``create`` or ``upsert`` first).
        """
        if self._dim is None:
            raise InvalidInputError(f"the FAISS store in {self.directory} has no dimension; call create(dim) first")
        rebuild = bool(self._pending) or self._index is None
        self._consolidate()
        if len(self._h3) == 0:
            self._vectors = np.empty((0, self._dim), np.float32)
        n = len(self._h3)
        start = dt.datetime.now(dt.UTC)
        if rebuild:
            self._index, index_meta = self._build_index(np.ascontiguousarray(self._vectors))
        else:
            index_meta = self._meta["index"]
        old = self._meta
        meta: dict[str, Any] = {
            "format": 1,
            "model": model if model is not None else old.get("model"),
            "h3_resolution": h3_resolution if h3_resolution is not None else old.get("h3_resolution"),
            "count": n,
            "dim": self._dim,
            "metric": "cosine (inner product of unit vectors)",
            "index": index_meta,
            "built_at": start.isoformat() if rebuild else old.get("built_at", start.isoformat()),
            "build_s": round((dt.datetime.now(dt.UTC) - start).total_seconds(), 3) if rebuild else old.get("build_s"),
            "sources": {str(k): str(v) for k, v in sources.items()} if sources is not None else old.get("sources"),
        }
        self._write(meta)
        self._meta = meta
        logger.info("built FAISS %s index over %d rows in %s", index_meta["type"], n, self.directory)

    def search(
        self, vector: np.ndarray, k: int, *, geo: GeoFilter | None = None, exclude: tuple[int, ...] = ()
    ) -> list[Match]:
        """The ``k`` cells most similar to ``vector`` (cosine, best first), inside ``geo``, not in ``exclude``.

        Unfiltered queries search the index; a filter first selects the qualifying rows exactly
        (:meth:`GeoFilter.contains`) and then either scans them (fewer than ``exact_max_rows``) or
        searches the index restricted to them with an ``IDSelectorBitmap``. Candidates are re-ranked
        exactly on the stored vectors, and an exact scan answers whenever the index returns fewer
        than ``k`` usable rows, so ``k`` matches come back whenever ``k`` qualify.

        Raises:
            InvalidInputError: ``k`` < 1, or the vector is of the wrong length, zero or not finite.
        """
        if not isinstance(k, int | np.integer) or k < 1:
            raise InvalidInputError(f"k must be a positive integer, got {k!r}")
        q = self._query(vector)
        n = len(self._h3)
        excluded = self._positions(exclude)
        if geo is None:
            if n - len(excluded) <= 0:
                return []
            want = min(k, n - len(excluded))
            if self._index is None or n <= self.exact_max_rows:
                keep = np.ones(n, bool)
                keep[excluded] = False
                return self._exact(q, np.flatnonzero(keep), want)
            pos = self._index_search(q, want + len(excluded), None, n)
            pos = pos[~np.isin(pos, excluded)]
            if len(pos) < want:
                logger.debug("index returned %d of %d rows; answering exactly", len(pos), want)
                keep = np.ones(n, bool)
                keep[excluded] = False
                return self._exact(q, np.flatnonzero(keep), want)
            return self._rerank(q, pos, want)
        cand = self._filter(geo)
        if len(excluded):
            cand = cand[~np.isin(cand, excluded)]
        want = min(k, len(cand))
        if want == 0:
            return []
        if self._index is None or len(cand) <= self.exact_max_rows:
            return self._exact(q, cand, want)
        pos = self._index_search(q, want, cand, n)
        if len(pos) < want:
            logger.debug("filtered index search returned %d of %d rows; answering exactly", len(pos), want)
            return self._exact(q, cand, want)
        return self._rerank(q, pos, want)

    def threshold_query(self, vector: np.ndarray, min_score: float, *, geo: GeoFilter | None = None) -> list[Match]:
        """Every cell (inside ``geo``, if given) whose cosine similarity to ``vector`` is at least ``min_score``.

        Exact: scans the stored full-precision vectors of the qualifying rows. Best first.
        """
        if not math.isfinite(min_score):
            raise InvalidInputError(f"min_score must be a finite cosine similarity in -1..1, got {min_score}")
        q = self._query(vector)
        pos = self._filter(geo) if geo is not None else np.arange(len(self._h3))
        scores = self._scores(q, pos)
        hit = scores >= min_score
        return self._matches(pos[hit], scores[hit])

    def fetch(self, h3: int) -> tuple[np.ndarray, float, float]:
        """A cell's unit vector (float32) and centre ``(vector, lat, lng)``.

        Raises:
            NotFoundError: The cell is not in the store.
        """
        pos = self._positions((h3,))
        if not len(pos):
            raise NotFoundError(f"H3 cell {int(h3)} ({int(h3):x}) is not in the FAISS store in {self.directory}")
        i = int(pos[0])
        return np.array(self._vectors[i], dtype=np.float32), float(self._lat[i]), float(self._lng[i])

    def fetch_many(self, h3: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Vectors and centres of the cells present: ``(found_h3, vectors, lat, lng)``, in request order.

        One vectorised position lookup (a binary search of the sorted id map), then one gather from the
        memory-mapped arrays, read in file order. Any number of ids; see
        :meth:`~vectorgeo.stores.base.VectorStore.fetch_many`.
        """
        ids = cell_ids(h3)
        self._consolidate()
        dim = self._dim or 0
        if not len(ids) or not len(self._h3):
            return np.empty(0, np.uint64), np.empty((0, dim), np.float32), np.empty(0), np.empty(0)
        _, first = np.unique(ids, return_index=True)
        ids = ids[np.sort(first)]  # each id once, in the order it was first asked
        pos = np.minimum(np.searchsorted(self._h3, ids), len(self._h3) - 1)
        pos = pos[self._h3[pos] == ids]
        rows, back = np.unique(pos, return_inverse=True)  # sorted rows: the mapped files are read in order
        vectors = np.asarray(self._vectors[rows], dtype=np.float32)[back]
        lat, lng = np.asarray(self._lat[pos], np.float64), np.asarray(self._lng[pos], np.float64)
        return np.asarray(self._h3[pos], np.uint64), np.ascontiguousarray(vectors), lat, lng

    def count(self) -> int:
        """Rows stored (pending upserts included, each id once)."""
        self._consolidate()
        return len(self._h3)

    def close(self) -> None:
        """Drop the index and the memory maps; rows not yet written by :meth:`finish_load` are lost."""
        if self._pending:
            logger.warning("closing FAISS store %s with %d unsaved batch(es)", self.directory, len(self._pending))
        self._reset()

    def __enter__(self) -> FaissStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------- helpers

    def _query(self, vector: np.ndarray) -> np.ndarray:
        self._consolidate()
        q = np.asarray(vector, dtype=np.float32).reshape(-1)
        if self._dim is not None and len(q) != self._dim:
            raise InvalidInputError(f"query vector is {len(q)}-d but the store holds {self._dim}-d vectors")
        return _unit_rows(q, "the query vector")

    def _positions(self, ids: Any) -> np.ndarray:
        """Row positions of the ids present in the store (absent ids are dropped)."""
        self._consolidate()
        if len(ids) == 0 or len(self._h3) == 0:
            return np.empty(0, np.int64)
        try:
            u = _to_uint64(ids if isinstance(ids, np.ndarray) else [int(i) for i in ids if 0 <= int(i) < 2**64])
        except (InvalidInputError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"cell ids must be uint64 H3 integers, got {ids!r}") from exc
        pos = np.minimum(np.searchsorted(self._h3, u), len(self._h3) - 1)
        return pos[self._h3[pos] == u].astype(np.int64)

    def _filter(self, geo: GeoFilter) -> np.ndarray:
        """Positions (ascending) of rows inside ``geo``, exactly per :meth:`GeoFilter.contains`.

        Only rows in the 1-degree grid cells covering the filter (see geogrid.cover_ranges) are evaluated: each covering
        key range is one binary search in the sorted keys, one contiguous slice of ``geo_order``.
        """
        lo, hi = cover_ranges(geo)
        starts = np.searchsorted(self._geo_keys, lo, side="left")
        ends = np.searchsorted(self._geo_keys, hi, side="right")
        if not len(starts) or not (ends > starts).any():
            return np.empty(0, np.int64)
        near = np.concatenate([np.asarray(self._geo_order[a:b]) for a, b in zip(starts, ends, strict=True) if b > a])
        lat, lng = self._lat[near], self._lng[near]
        if geo.bbox is None:  # a circle or polygon: its bounding box first (4 comparisons), the exact test after
            west, south, east, north = filter_bbox(geo)
            box = (lat >= south) & (lat <= north)
            box &= (lng >= west) & (lng <= east) if west <= east else (lng >= west) | (lng <= east)
            near, lat, lng = near[box], lat[box], lng[box]
        return np.sort(near[geo.contains(lat, lng)])

    def _scores(self, q: np.ndarray, pos: np.ndarray) -> np.ndarray:
        if len(pos) == 0:
            return np.empty(0, np.float32)
        if len(pos) == len(self._h3):
            return np.asarray(self._vectors @ q)
        return np.asarray(self._vectors[pos] @ q)

    def _exact(self, q: np.ndarray, pos: np.ndarray, k: int) -> list[Match]:
        scores = self._scores(q, pos)
        if len(pos) > k:
            top = np.argpartition(-scores, k - 1)[:k]
            kth = scores[top].min()
            top = np.flatnonzero(scores >= kth)  # keep ties at the boundary; _matches orders them by id
            pos, scores = pos[top], scores[top]
        return self._matches(pos, scores)[:k]

    def _rerank(self, q: np.ndarray, pos: np.ndarray, k: int) -> list[Match]:
        pos = np.unique(pos)
        return self._matches(pos, self._scores(q, pos))[:k]

    def _matches(self, pos: np.ndarray, scores: np.ndarray) -> list[Match]:
        order = np.lexsort((self._h3[pos], -scores))  # best first, ties by ascending id
        pos, scores = pos[order], scores[order]
        h3, lat, lng = self._h3[pos].tolist(), self._lat[pos].tolist(), self._lng[pos].tolist()
        return [
            Match(h3=i, score=float(s), lat=a, lng=b) for i, s, a, b in zip(h3, scores.tolist(), lat, lng, strict=True)
        ]

    def _index_search(self, q: np.ndarray, k: int, cand: np.ndarray | None, n: int) -> np.ndarray:
        """Candidate positions from the index, restricted to ``cand`` when given (-1s dropped)."""
        faiss = self._faiss
        kind = self._meta.get("index", {}).get("type", "flat")
        frac = 1.0 if cand is None else max(len(cand) / n, 1e-6)
        fetch = k * _IVF_RERANK if kind == "ivfpq" else k
        fetch = min(fetch, n)
        bitmap = None
        sel = None
        if cand is not None:
            mask = np.zeros(n, bool)
            mask[cand] = True
            bitmap = np.packbits(mask, bitorder="little")  # IDSelectorBitmap tests bit (id & 7) of byte id >> 3
            sel = faiss.IDSelectorBitmap(n, faiss.swig_ptr(bitmap))
        if kind == "hnsw":
            params = faiss.SearchParametersHNSW()
            params.efSearch = int(min(max(self.ef_search, fetch) / frac, max(_MAX_EF_SEARCH, fetch)))
        elif kind == "ivfpq":
            nlist = self._meta["index"]["nlist"]
            params = faiss.SearchParametersIVF(nprobe=int(min(nlist, math.ceil(self.nprobe / frac))))
        else:
            params = faiss.SearchParameters()
        if sel is not None:
            params.sel = sel
        # One query: OpenMP's fan-out costs more than it saves, worst on a busy machine. OpenMP keeps this
        # setting per calling thread, so searches from several threads at once neither race on it nor undo it.
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            _, labels = self._index.search(q.reshape(1, -1), fetch, params=params)
        finally:
            faiss.omp_set_num_threads(threads)
        del bitmap  # kept alive until the search above has run
        labels = labels[0]
        return labels[labels >= 0]

    def _build_index(self, vectors: np.ndarray) -> tuple[Any, dict[str, Any]]:
        faiss = self._faiss
        n, dim = len(vectors), self._dim
        ip = faiss.METRIC_INNER_PRODUCT
        if n < self.flat_max_rows:
            index = faiss.IndexFlatIP(dim)
            meta = {"type": "flat", "factory": "Flat", "thresholds": self._thresholds()}
        elif n < self.ivfpq_min_rows:
            index = faiss.IndexHNSWFlat(dim, self.hnsw_m, ip)
            index.hnsw.efConstruction = self.ef_construction
            index.hnsw.efSearch = self.ef_search
            meta = {
                "type": "hnsw",
                "factory": f"HNSW{self.hnsw_m},Flat",
                "M": self.hnsw_m,
                "ef_construction": self.ef_construction,
                "ef_search": self.ef_search,
            }
        else:
            nlist = int(np.clip(4 * math.sqrt(n), 1, max(1, n // 39)))
            m = max(d for d in range(1, min(dim // 2, 64) + 1) if dim % d == 0) if dim > 1 else 1
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, 8, ip)
            sample_n = min(n, max(256 * 64, 64 * nlist))
            rng = np.random.default_rng(self.seed)
            sample = vectors[np.sort(rng.choice(n, sample_n, replace=False))] if sample_n < n else vectors
            index.train(np.ascontiguousarray(sample))
            index.nprobe = self.nprobe
            meta = {
                "type": "ivfpq",
                "factory": f"IVF{nlist},PQ{m}x8",
                "nlist": nlist,
                "pq_m": m,
                "pq_nbits": 8,
                "nprobe": self.nprobe,
                "rerank_factor": _IVF_RERANK,
                "train_rows": int(sample_n),
                "seed": self.seed,
            }
        if n:
            index.add(vectors)
        meta["thresholds"] = self._thresholds()
        return index, meta

    def _thresholds(self) -> dict[str, int]:
        return {
            "flat_max_rows": self.flat_max_rows,
            "ivfpq_min_rows": self.ivfpq_min_rows,
            "exact_max_rows": self.exact_max_rows,
        }

    def _write(self, meta: dict[str, Any]) -> None:
        """Write every file to a temporary name, then move them into place, ``metadata.json`` last."""
        d = self.directory
        arrays = dict(
            zip(
                _ARRAY_FILES,
                (
                    self._h3,
                    self._lat,
                    self._lng,
                    np.ascontiguousarray(self._vectors),
                    self._geo_order.astype(np.int64),
                    self._geo_keys.astype(np.int32),
                ),
                strict=True,
            )
        )
        tmps: dict[str, Path] = {}
        try:
            for name, arr in arrays.items():
                tmps[name] = _tmp_path(d / name)
                with open(tmps[name], "wb") as fh:
                    np.save(fh, np.asarray(arr))
            tmps[_INDEX_FILE] = _tmp_path(d / _INDEX_FILE)
            self._faiss.write_index(self._index, str(tmps[_INDEX_FILE]))
            meta["files"] = {name: tmp.stat().st_size for name, tmp in tmps.items()}
            tmps[METADATA_FILE] = _tmp_path(d / METADATA_FILE)
            tmps[METADATA_FILE].write_text(json.dumps(meta, indent=2, sort_keys=True))
            with contextlib.suppress(FileNotFoundError):
                (d / METADATA_FILE).unlink()  # from here until the last replace there is no complete build
            for name in (_INDEX_FILE, *_ARRAY_FILES, METADATA_FILE):
                os.replace(tmps[name], d / name)
                del tmps[name]
        finally:
            for tmp in tmps.values():
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
        # Re-open the arrays as memory maps so the in-memory copies can be freed.
        self._h3, self._lat, self._lng, self._vectors, self._geo_order, self._geo_keys = _map_arrays(d)
