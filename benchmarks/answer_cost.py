"""Benchmark: what one answer of ``SearchService.search`` costs, split into store time and Python around it.

Builds (once, kept in --work) an index of N res-7 cells (a disk in Oregon) with clustered
unit vectors, WorldCover class fractions and elevations, loaded by flow 04's own jobs into every store
(FAISS, Qdrant Edge, embedded PostgreSQL + pgvector) with the search sidecars. Then, in this process
and single-threaded, runs point queries (k = 10, the load test's request; and k = 10 within 50 km)
per store and times each answer: *store* is the time spent inside the store's own calls (``fetch``
of the query cell, ``search``), *python* is everything else ``SearchService.search`` does (resolve
the query, post-filter, percentiles, explanations, GeoJSON), as wall time and as this thread's CPU
time (*python_cpu*: the figure to compare on a busy machine). Prints the medians per store and writes
benchmarks/results/answer_cost.json (``--out`` to change).

    .venv/bin/python benchmarks/answer_cost.py --n 50000
    .venv/bin/python benchmarks/answer_cost.py --n 50000 --profile pgvector   # cProfile of one store's answers
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import sys
import time
from pathlib import Path

import h3.api.numpy_int as h3n
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vectorgeo.artifacts import collection_name, embeddings_manifest_key, embeddings_part_key, model_keys
from vectorgeo.inference import CellEmbeddings, embeddings_table, write_part
from vectorgeo.jobs.upload import load_store, write_search_sidecars
from vectorgeo.legends import BUILTIN_LEGENDS
from vectorgeo.search import Query, SearchOptions, open_search_service
from vectorgeo.transfer import Bucket

REPO = Path(__file__).resolve().parents[1]
MODEL, RES = "cost", 7
CENTRE = (44.0, -122.0)  # Oregon: the index is a disk of res-7 cells around it
PART_ROWS = 25_000
STORES = ("faiss", "qdrant", "pgvector")
QUERY_KINDS = {"point_k10": {"k": 10}, "point_k10_r50km": {"k": 10, "radius_km": 50.0}}


def build_index(work: Path, n: int, dim: int, stores: list[str]) -> tuple[Bucket, np.ndarray, np.ndarray]:
    """About ``n`` cells (a disk) loaded into ``stores`` with their sidecars; returns the bucket and cell centres."""
    bucket = Bucket(work / "bucket", work / "cache")
    manifest_key = embeddings_manifest_key(MODEL, RES)
    rings = int(np.ceil((-3 + np.sqrt(9 + 12 * (n - 1))) / 6))  # a disk of r rings holds 3 r (r + 1) + 1 cells
    cells = np.sort(h3n.grid_disk(h3n.latlng_to_cell(*CENTRE, RES), rings))[:n]
    lat, lng = np.array([h3n.cell_to_latlng(c) for c in cells]).T
    if not bucket.exists(manifest_key):
        rng = np.random.default_rng(0)
        legend = BUILTIN_LEGENDS["worldcover"]
        centres = rng.normal(size=(256, dim))
        v = centres[rng.integers(0, 256, len(cells))] + 0.4 * rng.normal(size=(len(cells), dim))
        v = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
        fractions = rng.dirichlet(np.full(legend.n_classes, 0.3), size=len(cells)).astype(np.float32)
        elevation = rng.gamma(2.0, 300.0, size=len(cells)).astype(np.float32)
        parts = []
        for i, s in enumerate(range(0, len(cells), PART_ROWS)):
            sl = slice(s, s + PART_ROWS)
            embedded = CellEmbeddings(np.ones(len(cells[sl]), bool), v[sl], fractions[sl], elevation[sl])
            local = work / "parts" / f"part-{i:05d}.parquet"
            local.parent.mkdir(parents=True, exist_ok=True)
            write_part(embeddings_table(cells[sl], lat[sl], lng[sl], embedded, MODEL), local, {"benchmark": True})
            parts.append(embeddings_part_key(MODEL, RES, i))
            bucket.upload(local, parts[-1])
        bucket.write_json(model_keys(MODEL + ".keras")["sidecar"], {"legend": legend.to_dict()})
        bucket.write_json(manifest_key, {"parts": parts, "n_embedded": len(cells)})
    for kind in stores:
        started = time.perf_counter()
        done = load_store(bucket, kind, model_filename=f"{MODEL}.keras", h3_resolution=RES,
                          collection=collection_name(MODEL, RES), data_dir=work / "stores")  # fmt: skip
        print(f"{kind}: {done['count']:,} rows ready in {time.perf_counter() - started:.1f} s", flush=True)
    write_search_sidecars(bucket, model_filename=f"{MODEL}.keras", h3_resolution=RES)
    return bucket, lat, lng


class _Timed:
    """A store whose calls add their wall time to ``seconds`` and this thread's CPU time to ``cpu_seconds``."""

    def __init__(self, store) -> None:
        self._store, self.seconds, self.cpu_seconds = store, 0.0, 0.0

    def __getattr__(self, name: str):
        attr = getattr(self._store, name)
        if name not in ("search", "fetch", "count"):
            return attr

        def timed(*args, **kwargs):
            started, cpu = time.perf_counter(), time.thread_time()
            try:
                return attr(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started
                self.cpu_seconds += time.thread_time() - cpu

        return timed


def measure(service, kind: str, queries: list[tuple[Query, SearchOptions]], timed: dict, repeats: int) -> dict:
    """Median wall, store and Python milliseconds per answer, each the least over ``repeats`` passes.

    ``python_cpu`` is this thread's CPU time outside the store calls. On a shared machine one pass is one
    sample of how busy it was: the least of several passes is the figure that compares runs.
    """
    for query, options in queries[:20]:  # warm-up: plans, page cache, connections
        service.search(query, options, store=kind)
    passes = []
    for _ in range(repeats):
        walls, stores, cpus = [], [], []
        for query, options in queries:
            store_s, store_cpu_s = timed[kind].seconds, timed[kind].cpu_seconds
            started, cpu = time.perf_counter(), time.thread_time()
            service.search(query, options, store=kind)
            walls.append(time.perf_counter() - started)
            cpus.append(time.thread_time() - cpu - (timed[kind].cpu_seconds - store_cpu_s))
            stores.append(timed[kind].seconds - store_s)
        wall, store, python_cpu = np.array(walls) * 1000, np.array(stores) * 1000, np.array(cpus) * 1000
        passes.append({"wall": wall, "store": store, "python": wall - store, "python_cpu": python_cpu})
    out = {"answers": len(queries), "repeats": repeats}
    for part in ("wall", "store", "python", "python_cpu"):
        out[f"{part}_ms_median"] = round(min(float(np.median(p[part])) for p in passes), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000, help="indexed cells")
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--queries", type=int, default=300, help="answers timed per store and query kind")
    parser.add_argument("--repeats", type=int, default=3, help="passes over the queries; the least median is kept")
    parser.add_argument("--stores", default=",".join(STORES))
    parser.add_argument("--work", default=str(REPO / "tmp" / "bench-answer-cost"), help="kept between runs")
    parser.add_argument("--profile", metavar="STORE", help="print a cProfile of STORE's answers instead")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "answer_cost.json"))
    args = parser.parse_args()
    stores = [s for s in args.stores.split(",") if s]
    work = Path(args.work) / f"n{args.n}_d{args.dim}"
    os.environ.setdefault("USERNAME", "vectorgeo")
    bucket, lat, lng = build_index(work, args.n, args.dim, stores)
    service = open_search_service(bucket, model=MODEL, h3_resolution=RES, stores=stores, data_dir=work / "stores")
    timed = {}
    for kind in stores:
        opener = service._openers[kind]  # a benchmark may reach in: the service has no timing hook

        def open_timed(opener=opener, kind=kind):
            timed[kind] = _Timed(opener())
            return timed[kind]

        service._openers[kind] = open_timed
        service.health(kind)  # opens it (an embedded PostgreSQL starts here), outside the timings
    rng = np.random.default_rng(1)
    pick = rng.choice(len(lat), args.queries, replace=False)
    queries = {
        name: [(Query(lat=float(lat[i]), lng=float(lng[i])), SearchOptions(**opts)) for i in pick]
        for name, opts in QUERY_KINDS.items()
    }
    try:
        if args.profile:
            profile = cProfile.Profile()
            profile.enable()
            for batch in queries.values():
                for query, options in batch:
                    service.search(query, options, store=args.profile)
            profile.disable()
            pstats.Stats(profile).sort_stats(os.environ.get("VG_PROFILE_SORT", "tottime")).print_stats(30)
            return
        results = {kind: {name: measure(service, kind, batch, timed, args.repeats) for name, batch in queries.items()}
                   for kind in stores}  # fmt: skip
    finally:
        service.close()
    print(f"\nSearchService.search per answer, {len(lat):,} res-{RES} cells, dim {args.dim}, one thread, "
          f"median ms (least of {args.repeats} passes)")  # fmt: skip
    print(f"{'':34}" + "".join(f"{k:>12}" for k in results))
    for name in QUERY_KINDS:
        for part in ("wall", "store", "python", "python_cpu"):
            cells = "".join(f"{r[name][f'{part}_ms_median']:>12.3f}" for r in results.values())
            print(f"{f'{name} {part}':34}" + cells)
    meta = {
        "n": len(lat),
        "h3_resolution": RES,
        "dim": args.dim,
        "queries": args.queries,
        "repeats": args.repeats,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
    }
    out = Path(args.out)
    out.write_text(json.dumps({**meta, "stores": results}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
