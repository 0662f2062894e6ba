"""Benchmark: the three vector stores side by side on clustered unit vectors.

For N clustered unit vectors (real embeddings cluster; uniform noise would
flatter nothing) at land-like locations, per store (Qdrant Edge, embedded
PostgreSQL + pgvector, FAISS): load rate, index build time, recall@10 against
exact search, single-threaded query latency p50/p99 unfiltered and with
50 km and 1,000 km radius filters (and whether k rows came back whenever k
exist), and disk and resident memory per million vectors. Memory is what
serving costs: a fresh process opens the built store, runs 300 queries (all
three kinds), and reports the proportional set size (PSS, shared pages split
between sharers) the store added to it, plus, for PostgreSQL, its server
processes (bounded by shared_buffers; the OS page cache serves the rest and
is not counted). Writes
benchmarks/results/stores_d{D}_n{N}.json.

    .venv/bin/python benchmarks/stores.py --n 1000000 --dim 16
    .venv/bin/python benchmarks/stores.py --n 1000000 --dim 16 --stores qdrant --load-repeats 5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vectorgeo.land import is_land_by_mask
from vectorgeo.sampling import random_points_in_bounds
from vectorgeo.stores import GeoFilter, open_store

BATCH = 100_000


def land_points(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Points uniform by area over land (1 km mask), between 60 S and 75 N."""
    lat, lng = np.empty(0), np.empty(0)
    while lat.size < n:
        a, b = random_points_in_bounds((-180, -60, 180, 75), 3 * n, rng)
        keep = is_land_by_mask(a, b)
        lat, lng = np.r_[lat, a[keep]], np.r_[lng, b[keep]]
    return lat[:n], lng[:n]


def clustered_vectors(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    centres = rng.normal(size=(256, dim))
    v = centres[rng.integers(0, 256, n)] + 0.4 * rng.normal(size=(n, dim))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def exact_top(vectors, lat, lng, q, k, geo):
    scores = vectors @ q
    if geo is not None:
        idx = np.flatnonzero(geo.contains(lat, lng))
        return idx[np.argsort(-scores[idx])[:k]], idx.size
    return np.argpartition(-scores, k)[:k], len(scores)


def pss_mb(pid: int | str = "self") -> float:
    """Proportional set size of one process, MB (Linux /proc)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0.0
    return next(int(line.split()[1]) for line in text.splitlines() if line.startswith("Pss:")) / 1024


def server_pss_mb(store) -> float:
    """PSS of an embedded PostgreSQL's postmaster and its children, MB; 0 for in-process stores."""
    server = getattr(store, "server", None)
    if server is None:
        return 0.0
    postmaster = int((server.data_dir / "postmaster.pid").read_text().split()[0])
    pids = [postmaster]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                pids.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return sum(pss_mb(pid) for pid in pids)


def serving_memory_mb(kind: str, data_dir: str, dim: int) -> float:
    """Open the built store in a fresh process, query it, return the PSS it added there (+ its server's)."""
    probe = [sys.executable, __file__, "--probe-memory", kind, data_dir, "--dim", str(dim)]
    done = subprocess.run(probe, capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def probe_memory(kind: str, data_dir: str, dim: int) -> None:
    """The --probe-memory mode: print the MB the opened, queried store holds."""
    rng = np.random.default_rng(1)
    lat, lng = land_points(100, rng)  # loads the land mask: before the baseline
    queries = clustered_vectors(300, dim, rng)
    before_mb = pss_mb()
    store = open_store(kind, "bench", data_dir=data_dir)
    for i, q in enumerate(queries):
        radius = (None, 50.0, 1000.0)[i % 3]
        geo = None if radius is None else GeoFilter(lat=float(lat[i % 100]), lng=float(lng[i % 100]), radius_km=radius)
        store.search(q, 10, geo=geo)
    print(pss_mb() - before_mb + server_pss_mb(store))
    store.close()


@contextlib.contextmanager
def store_dir(work_dir: str | None, kind: str, dim: int, n: int) -> Iterator[str]:
    """The folder a store is built in: kept under ``work_dir`` for reuse, else temporary."""
    if work_dir is None:
        with tempfile.TemporaryDirectory(prefix=f"vg-bench-{kind}-") as tmp:
            yield tmp
        return
    path = Path(work_dir) / f"{kind}-d{dim}-n{n}"
    path.mkdir(parents=True, exist_ok=True)
    yield str(path)


def load_and_build(store, dim: int, h3, lat, lng, vectors) -> dict:
    """Load every row in batches, then build the indexes; the timings of both."""
    store.create(dim, wipe=True)
    started = time.perf_counter()
    for s in range(0, len(h3), BATCH):
        store.upsert(h3[s : s + BATCH], lat[s : s + BATCH], lng[s : s + BATCH], vectors[s : s + BATCH])
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    store.finish_load()
    build_s = time.perf_counter() - started
    return {"load_rows_per_s": round(len(h3) / load_s), "index_build_s": round(build_s, 1)}


def load_rates(args: argparse.Namespace, h3, lat, lng, vectors) -> None:
    """Time the load alone, ``args.load_repeats`` times per store: on a shared machine one run is one sample."""
    results = {}
    for kind in args.stores.split(","):
        rates = []
        for _ in range(args.load_repeats):
            with tempfile.TemporaryDirectory(prefix=f"vg-bench-{kind}-") as tmp:
                store = open_store(kind, "bench", data_dir=tmp)
                store.create(args.dim, wipe=True)
                started = time.perf_counter()
                for s in range(0, len(h3), BATCH):
                    store.upsert(h3[s : s + BATCH], lat[s : s + BATCH], lng[s : s + BATCH], vectors[s : s + BATCH])
                rates.append(round(len(h3) / (time.perf_counter() - started)))
                store.close()
        results[kind] = {"median": int(np.median(rates)), "min": min(rates), "max": max(rates), "runs": rates}
        print(f"{kind}: load rows/s median {results[kind]['median']:,} (min {min(rates):,}, max {max(rates):,})")
    out = Path(__file__).parent / "results" / f"stores_load_d{args.dim}_n{args.n}.json"
    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    out.write_text(json.dumps({"n": args.n, "dim": args.dim, "machine": machine, "load_rows_per_s": results}) + "\n")
    print(f"wrote {out}")


def dir_size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--stores", default="qdrant,pgvector,faiss")
    parser.add_argument(
        "--work-dir",
        help="keep each built store under this folder and reuse it (with its load/build figures) on the next run",
    )
    parser.add_argument(
        "--load-repeats",
        type=int,
        default=0,
        help="only time loading, this many times per store into fresh stores (median, min, max); writes "
        "stores_load_d{D}_n{N}.json",
    )
    parser.add_argument("--probe-memory", nargs=2, metavar=("KIND", "DATA_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe_memory:
        probe_memory(*args.probe_memory, args.dim)
        return
    rng = np.random.default_rng(0)
    lat, lng = land_points(args.n, rng)
    vectors = clustered_vectors(args.n, args.dim, rng)
    h3 = np.arange(1, args.n + 1, dtype=np.uint64) + np.uint64(6 * 10**17)
    if args.load_repeats:
        load_rates(args, h3, lat, lng, vectors)
        return
    pick = rng.choice(args.n, args.queries, replace=False)
    queries = vectors[pick] + 0.05 * rng.normal(size=(args.queries, args.dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    filters = {
        "none": [None] * args.queries,
        "radius_50km": [GeoFilter(lat=float(lat[i]), lng=float(lng[i]), radius_km=50.0) for i in pick],
        "radius_1000km": [GeoFilter(lat=float(lat[i]), lng=float(lng[i]), radius_km=1000.0) for i in pick],
    }
    results = {}
    for kind in args.stores.split(","):
        with store_dir(args.work_dir, kind, args.dim, args.n) as tmp:
            built = Path(tmp) / "built.json"
            store = open_store(kind, "bench", data_dir=tmp)
            if built.exists():
                store.create(args.dim)  # brings a store built by an earlier version up to date
                row = json.loads(built.read_text())
                print(f"{kind}: reusing the store built in {tmp}", flush=True)
            else:
                row = load_and_build(store, args.dim, h3, lat, lng, vectors)
                if args.work_dir:
                    built.write_text(json.dumps(row))
            for name, geos in filters.items():
                latencies, recalls, short = [], [], 0
                for q, geo in zip(queries, geos, strict=True):
                    t = time.perf_counter()
                    got = store.search(q, 10, geo=geo)
                    latencies.append((time.perf_counter() - t) * 1000)
                    expected, n_ok = exact_top(vectors, lat, lng, q, 10, geo)
                    short += len(got) < min(10, n_ok)
                    hits = {m.h3 for m in got} & {int(h) for h in h3[expected]}
                    recalls.append(len(hits) / max(1, min(10, n_ok)))
                row[name] = {
                    "p50_ms": round(float(np.percentile(latencies, 50)), 2),
                    "p99_ms": round(float(np.percentile(latencies, 99)), 2),
                    "recall_at_10": round(float(np.mean(recalls)), 4),
                    "queries_short_of_k": short,
                }
            store.close()
            row["memory_mb_per_million"] = round(serving_memory_mb(kind, tmp, args.dim) * 1e6 / args.n, 1)
            row["disk_mb_per_million"] = round(dir_size_mb(Path(tmp)) * 1e6 / args.n, 1)
        results[kind] = row
        print(f"{kind}: {json.dumps(row)}", flush=True)

    metrics = [("load rows/s", lambda r: f"{r['load_rows_per_s']:,}"), ("index build s", lambda r: r["index_build_s"])]
    for name in filters:
        metrics += [
            (f"{name} p50/p99 ms", lambda r, n=name: f"{r[n]['p50_ms']}/{r[n]['p99_ms']}"),
            (f"{name} recall@10", lambda r, n=name: r[n]["recall_at_10"]),
            (f"{name} short of k", lambda r, n=name: r[n]["queries_short_of_k"]),
        ]
    metrics.append(("disk MB per 1M", lambda r: r["disk_mb_per_million"]))
    metrics.append(("memory MB per 1M", lambda r: r["memory_mb_per_million"]))
    print(f"\nstores, {args.n:,} clustered unit vectors, dim {args.dim}, {args.queries} queries, single-threaded")
    print(f"{'':26}" + "".join(f"{k:>18}" for k in results))
    for label, fn in metrics:
        print(f"{label:26}" + "".join(f"{fn(r)!s:>18}" for r in results.values()))
    out = Path(__file__).parent / "results" / f"stores_d{args.dim}_n{args.n}.json"
    meta = {
        "n": args.n,
        "dim": args.dim,
        "queries": args.queries,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }
    out.write_text(json.dumps({**meta, "stores": results}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
