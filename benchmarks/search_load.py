"""Benchmark: GET /search through the local server (vectorgeo.serve → Lambda handler) under load, per store.

API path /api/search. Builds an index of N real H3 land cells (global land stencil at --resolution,
sampled) with clustered unit vectors, class fractions and elevations, loads it
with flow 04's own job (every store, the search sidecars), starts
``python -m vectorgeo.serve`` on it, and replays ``GET /search?lat=&lng=&k=10&store=``
for random indexed cells from 1 and from 16 concurrent clients over keep-alive
connections: with ``wrk`` (Debian's package; ``--client wrk``, the default when
it is on PATH) for a fixed time, or with this script's own threads
(``--client python``: it needs no install but its threads take CPU from the
server on a 2-core machine).
Prints requests/s and p50/p99 latency side by side and writes
benchmarks/results/search_load_n{N}.json. The built index is kept in --work
and reused by later runs (loads are resumable, the FAISS index and sidecars are
skipped when current).

    .venv/bin/python benchmarks/search_load.py --n 1000000
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vectorgeo.inference import CellEmbeddings, embeddings_table, write_part
from vectorgeo.jobs.upload import load_store, write_search_sidecars
from vectorgeo.stencil import build_stencil
from vectorgeo.transfer import Bucket

REPO = Path(__file__).resolve().parents[1]
MODEL = "bench"
PART_ROWS = 100_000
N_CLASSES = 23


def build_index(work: Path, n: int, resolution: int, dim: int, stores: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Embedding parts for n land cells in a bucket under ``work``, loaded into every store; returns their centres."""
    bucket = Bucket(str(work / "bucket"), str(work / "cache"))
    manifest_key = f"embeddings/{MODEL}/res{resolution}/manifest.json"
    centres = work / "centres.npz"
    if not bucket.exists(manifest_key):
        rng = np.random.default_rng(0)
        stencil = build_stencil(resolution, progress=False)
        pick = np.sort(rng.choice(stencil.num_rows, size=min(n, stencil.num_rows), replace=False))
        h3, lat, lng = (stencil.column(c).to_numpy()[pick] for c in ("h3", "lat", "lng"))
        centres_k = rng.normal(size=(256, dim))
        v = centres_k[rng.integers(0, 256, len(h3))] + 0.4 * rng.normal(size=(len(h3), dim))
        v = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
        fractions = rng.dirichlet(np.full(N_CLASSES, 0.3), size=len(h3)).astype(np.float32)
        elevation = rng.gamma(2.0, 300.0, size=len(h3)).astype(np.float32)
        parts = []
        for i, s in enumerate(range(0, len(h3), PART_ROWS)):
            sl = slice(s, s + PART_ROWS)
            valid = np.ones(len(h3[sl]), bool)
            cells = CellEmbeddings(valid, v[sl], fractions[sl], elevation[sl])
            key = f"embeddings/{MODEL}/res{resolution}/part-{i:05d}.parquet"
            local = work / "parts" / f"part-{i:05d}.parquet"
            local.parent.mkdir(parents=True, exist_ok=True)
            write_part(embeddings_table(h3[sl], lat[sl], lng[sl], cells, MODEL), local, {"benchmark": True})
            bucket.upload(local, key)
            parts.append(key)
        np.savez(centres, lat=lat, lng=lng)
        bucket.write_json(manifest_key, {"model": MODEL, "h3_resolution": resolution, "n_parts": len(parts),
                                         "n_cells": len(h3), "n_embedded": len(h3), "n_invalid": 0,
                                         "n_parts_skipped": 0, "parts": parts})  # fmt: skip
    for kind in stores:
        started = time.perf_counter()
        result = load_store(bucket, kind, model_filename=f"{MODEL}.keras", h3_resolution=resolution,
                            collection=f"{MODEL}_res{resolution}", data_dir=work / "stores")  # fmt: skip
        print(f"{kind}: {result['count']:,} rows ready in {time.perf_counter() - started:.0f} s", flush=True)
    write_search_sidecars(bucket, model_filename=f"{MODEL}.keras", h3_resolution=resolution)
    data = np.load(centres)
    return data["lat"], data["lng"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(work: Path, resolution: int, stores: list[str], port: int) -> subprocess.Popen:
    env = {**os.environ, "VG_CACHE_DIR": str(work / "cache"), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "vectorgeo.serve", "--port", str(port), "--bucket", str(work / "bucket"),
           "--model", f"{MODEL}.keras", "--resolution", str(resolution), "--stores", ",".join(stores),
           "--data-dir", str(work / "stores")]  # fmt: skip
    log = (work / "server.log").open("w")  # a pipe nobody reads would fill up and stall the server
    server = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            for kind in stores:  # opens each store once (embedded PostgreSQL starts here), outside the timings
                conn.request("GET", f"/api/health?store={kind}")
                body = conn.getresponse().read()
                if not json.loads(body).get("reachable"):
                    raise RuntimeError(f"{kind} not ready: {body[:300]!r}")
            conn.close()
            return server
        except (ConnectionRefusedError, http.client.RemoteDisconnected, OSError):
            if server.poll() is not None:
                raise RuntimeError(f"server exited: {(work / 'server.log').read_text()[-2000:]}") from None
            time.sleep(0.5)
    server.kill()
    raise RuntimeError("server did not answer /health within 300 s")


def run_load(port: int, kind: str, lat: np.ndarray, lng: np.ndarray, clients: int, requests: int) -> dict:
    """``requests`` searches spread over ``clients`` keep-alive connections; latencies of the answers."""
    rng = np.random.default_rng(clients)
    pick = rng.integers(0, len(lat), requests)
    paths = [f"/api/search?lat={lat[i]:.6f}&lng={lng[i]:.6f}&k=10&store={kind}" for i in pick]
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(my_paths: list[str]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine = []
        try:
            for path in my_paths:
                t = time.perf_counter()
                conn.request("GET", path)
                response = conn.getresponse()
                body = response.read()
                mine.append((time.perf_counter() - t) * 1000)
                if response.status != 200 or b'"features"' not in body:
                    with lock:
                        errors.append(f"{response.status}: {body[:200]!r}")
        except (OSError, http.client.HTTPException) as exc:
            with lock:
                errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(paths[c::clients],)) for c in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} failed requests on {kind}, first: {errors[0]}")
    return {
        "requests": requests,
        "requests_per_s": round(requests / wall, 1),
        "p50_ms": round(float(np.percentile(latencies, 50)), 2),
        "p99_ms": round(float(np.percentile(latencies, 99)), 2),
        "mean_ms": round(statistics.fmean(latencies), 2),
    }


_WRK_SCRIPT = """
local paths = {}
for line in io.lines(os.getenv("VG_WRK_PATHS")) do paths[#paths + 1] = line end
local i = math.random(#paths)
request = function()
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end
"""


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def run_wrk(work: Path, port: int, kind: str, lat, lng, clients: int, seconds: int) -> dict:
    """wrk with ``clients`` keep-alive connections for ``seconds``, random indexed cells; its latency percentiles."""
    rng = np.random.default_rng(clients)
    paths = work / f"paths-{kind}.txt"
    paths.write_text("".join(f"/api/search?lat={lat[i]:.6f}&lng={lng[i]:.6f}&k=10&store={kind}\n"
                             for i in rng.integers(0, len(lat), 20_000)))  # fmt: skip
    script = work / "wrk.lua"
    script.write_text(_WRK_SCRIPT)
    cmd = ["wrk", f"-t{min(clients, 2)}", f"-c{clients}", f"-d{seconds}s", "--latency", "-s", str(script),
           f"http://127.0.0.1:{port}"]  # fmt: skip
    out = subprocess.run(cmd, env={**os.environ, "VG_WRK_PATHS": str(paths)}, capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    if bad or errors:
        raise RuntimeError(f"wrk saw failed requests on {kind}:\n{out}")
    percentile = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    return {
        "requests": requests,
        "requests_per_s": round(float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), 1),
        "p50_ms": round(_ms(percentile["50"]), 2),
        "p99_ms": round(_ms(percentile["99"]), 2),
        "mean_ms": round(_ms(re.search(r"Latency\s+(\S+)", out).group(1)), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="indexed cells")
    parser.add_argument("--resolution", type=int, default=6, help="H3 resolution of the sampled land cells")
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--stores", default="qdrant,pgvector,faiss")
    parser.add_argument("--requests", type=int, default=2000, help="python client: requests per store and concurrency")
    parser.add_argument("--seconds", type=int, default=15, help="wrk client: seconds per store and concurrency")
    parser.add_argument("--client", choices=("wrk", "python"), default="wrk" if shutil.which("wrk") else "python")
    parser.add_argument("--work", default=str(REPO / "tmp" / "bench-search-load"), help="kept between runs")
    args = parser.parse_args()
    stores = [s for s in args.stores.split(",") if s]
    work = Path(args.work) / f"n{args.n}_res{args.resolution}_d{args.dim}"
    os.environ.setdefault("USERNAME", "vectorgeo")
    lat, lng = build_index(work, args.n, args.resolution, args.dim, stores)
    port = free_port()
    server = start_server(work, args.resolution, stores, port)
    results: dict[str, dict] = {}
    try:
        for kind in stores:
            run_load(port, kind, lat, lng, 4, 200)  # warm-up: caches, connections, first plans
            if args.client == "wrk":
                results[kind] = {f"clients_{c}": run_wrk(work, port, kind, lat, lng, c, args.seconds) for c in (1, 16)}
            else:
                results[kind] = {f"clients_{c}": run_load(port, kind, lat, lng, c, args.requests) for c in (1, 16)}
            print(f"{kind}: {json.dumps(results[kind])}", flush=True)
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()

    print(f"\nGET /search, k = 10, {len(lat):,} indexed res-{args.resolution} cells, dim {args.dim}, local server, "
          f"{args.client} client")  # fmt: skip
    print(f"{'':28}" + "".join(f"{k:>18}" for k in results))
    for c in (1, 16):
        for label, key in (("req/s", "requests_per_s"), ("p50 ms", "p50_ms"), ("p99 ms", "p99_ms")):
            row = "".join(f"{r[f'clients_{c}'][key]!s:>18}" for r in results.values())
            print(f"{f'{c} client(s) {label}':28}" + row)
    out = Path(__file__).parent / "results" / f"search_load_n{args.n}.json"
    meta = {
        "n": len(lat),
        "h3_resolution": args.resolution,
        "dim": args.dim,
        "k": 10,
        "client": args.client,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
    }
    out.write_text(json.dumps({**meta, "stores": results}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
