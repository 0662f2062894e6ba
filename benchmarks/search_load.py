"""Benchmark: GET /api/search through ``vectorgeo serve`` (uvicorn workers → SearchAPI) under load, per store.

Builds an index of N real H3 land cells (global land stencil at --resolution,
sampled) with clustered unit vectors, class fractions and elevations, loads it
with flow 04's own job (every store, the search sidecars), starts
``python -m vectorgeo.serve`` on it with its default workers (or ``--workers``),
and replays ``GET /api/search?lat=&lng=&k=10&store=`` for random indexed cells
from 16 and from 64 concurrent clients (``--clients``) over keep-alive
connections: with ``wrk`` (Debian's package; ``--client wrk``, the default when
it is on PATH) for a fixed time, or with this script's own threads
(``--client python``: it needs no install but its threads take CPU from the
server on a 2-core machine).

Per store and concurrency it prints requests/s, p50/p95/p99 latency and failed
requests, and beside them what one answer costs: ``api cpu`` is the mean CPU
time of ``SearchAPI.handle`` in its worker thread (the ``cpu`` entry of the
answers' ``Server-Timing`` header: the Python of the answer, plus FAISS's own
search), ``server cpu`` is the CPU time of every server process (supervisor,
workers, the Qdrant Edge host, the embedded PostgreSQL and its backends, from
``/proc``) over the run divided by the requests answered. It writes
benchmarks/results/search_load_n{N}.json. The built index is kept in --work and
reused by later runs (loads are resumable, the FAISS index and sidecars are
skipped when current).

    .venv/bin/python benchmarks/search_load.py --n 1000000
"""

from __future__ import annotations

import argparse
import contextlib
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

from vectorgeo.artifacts import collection_name, embeddings_manifest_key, embeddings_part_key
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
    manifest_key = embeddings_manifest_key(MODEL, resolution)
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
            key = embeddings_part_key(MODEL, resolution, i)
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
                            collection=collection_name(MODEL, resolution), data_dir=work / "stores")  # fmt: skip
        print(f"{kind}: {result['count']:,} rows ready in {time.perf_counter() - started:.0f} s", flush=True)
    write_search_sidecars(bucket, model_filename=f"{MODEL}.keras", h3_resolution=resolution)
    data = np.load(centres)
    return data["lat"], data["lng"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(work: Path, resolution: int, stores: list[str], port: int, extra: list[str]) -> subprocess.Popen:
    env = {**os.environ, "VG_CACHE_DIR": str(work / "cache"), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "vectorgeo.serve", "--port", str(port), "--bucket", str(work / "bucket"),
           "--model", f"{MODEL}.keras", "--resolution", str(resolution), "--stores", ",".join(stores),
           "--data-dir", str(work / "stores"), *extra]  # fmt: skip
    log = (work / "server.log").open("w")  # a pipe nobody reads would fill up and stall the server
    server = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            for kind in stores:  # the workers opened each store at start; this checks they answer
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


def _proc_stats() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds of the process and of its reaped children) for every process."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        out[int(entry.name)] = (int(fields[1]), sum(int(f) for f in fields[11:15]) / ticks)
    return out


def server_cpu_s(roots: list[int]) -> float:
    """CPU seconds used so far by the processes under ``roots`` (themselves included)."""
    stats = _proc_stats()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [r for r in roots if r in stats]
    while todo:
        pid = todo.pop()
        total += stats[pid][1]
        todo.extend(children.get(pid, []))
    return total


def server_roots(server: subprocess.Popen, work: Path) -> list[int]:
    """The server's process and the embedded PostgreSQL's postmaster (which runs in its own session)."""
    roots = [server.pid]
    with contextlib.suppress(OSError, ValueError, IndexError):  # no embedded PostgreSQL
        roots.append(int((work / "stores" / "postgres" / "postmaster.pid").read_text().split()[0]))
    return roots


def _api_cpu_ms(header: str | None) -> float | None:
    match = re.search(r"cpu;dur=([\d.]+)", header or "")
    return float(match.group(1)) if match else None


def run_load(port: int, kind: str, lat: np.ndarray, lng: np.ndarray, clients: int, requests: int) -> dict:
    """``requests`` searches spread over ``clients`` keep-alive connections; latencies of the answers."""
    rng = np.random.default_rng(clients)
    pick = rng.integers(0, len(lat), requests)
    paths = [f"/api/search?lat={lat[i]:.6f}&lng={lng[i]:.6f}&k=10&store={kind}" for i in pick]
    latencies: list[float] = []
    api_cpu: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(my_paths: list[str]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine, cpu = [], []
        for path in my_paths:
            try:
                t = time.perf_counter()
                conn.request("GET", path)
                response = conn.getresponse()
                body = response.read()
                mine.append((time.perf_counter() - t) * 1000)
                cpu.append(_api_cpu_ms(response.getheader("server-timing")))
                if response.status != 200 or b'"features"' not in body:
                    with lock:
                        errors.append(f"{response.status}: {body[:200]!r}")
            except (OSError, http.client.HTTPException) as exc:
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.close()
        with lock:
            latencies.extend(mine)
            api_cpu.extend(c for c in cpu if c is not None)

    threads = [threading.Thread(target=client, args=(paths[c::clients],)) for c in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    if errors:
        print(f"{len(errors)} failed requests on {kind} with {clients} clients, first: {errors[0]}", flush=True)
    return {
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(float(np.percentile(latencies, 50)), 2),
        "p95_ms": round(float(np.percentile(latencies, 95)), 2),
        "p99_ms": round(float(np.percentile(latencies, 99)), 2),
        "mean_ms": round(statistics.fmean(latencies), 2),
        "errors": len(errors),
        "api_cpu_ms": round(statistics.fmean(api_cpu), 3) if api_cpu else None,
    }


_WRK_SCRIPT = """
local paths = {}
for line in io.lines(os.getenv("VG_WRK_PATHS")) do paths[#paths + 1] = line end
local i = math.random(#paths)
cpu_sum, cpu_n = 0, 0
request = function()
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end
response = function(status, headers, body)
  local c = (headers["server-timing"] or ""):match("cpu;dur=([%d%.]+)")
  if c then cpu_sum, cpu_n = cpu_sum + tonumber(c), cpu_n + 1 end
end
local threads = {}
setup = function(thread) threads[#threads + 1] = thread end
done = function(summary, latency, requests)
  local s, n = 0, 0
  for _, t in ipairs(threads) do s, n = s + t:get("cpu_sum"), n + t:get("cpu_n") end
  local e = summary.errors
  io.write(string.format(
    'VG_RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p95_us": %d, "p99_us": %d, "mean_us": %.1f, ' ..
    '"errors": %d, "api_cpu_ms_sum": %.3f, "api_cpu_n": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(95), latency:percentile(99),
    latency.mean, e.connect + e.read + e.write + e.status + e.timeout, s, n))
end
"""


def run_wrk(work: Path, port: int, kind: str, lat, lng, clients: int, seconds: int) -> dict:
    """wrk with ``clients`` keep-alive connections for ``seconds``, random indexed cells; its latency percentiles."""
    rng = np.random.default_rng(clients)
    paths = work / f"paths-{kind}.txt"
    paths.write_text("".join(f"/api/search?lat={lat[i]:.6f}&lng={lng[i]:.6f}&k=10&store={kind}\n"
                             for i in rng.integers(0, len(lat), 20_000)))  # fmt: skip
    script = work / "wrk.lua"
    script.write_text(_WRK_SCRIPT)
    cmd = ["wrk", f"-t{min(clients, 2)}", f"-c{clients}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script),
           f"http://127.0.0.1:{port}"]  # fmt: skip
    out = subprocess.run(cmd, env={**os.environ, "VG_WRK_PATHS": str(paths)}, capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    found = re.search(r"^VG_RESULT (.*)$", out, re.M)
    if found is None:
        raise RuntimeError(f"wrk printed no result for {kind}:\n{out}")
    r = json.loads(found.group(1))
    if r["errors"]:
        print(f"wrk saw {r['errors']} failed requests on {kind} with {clients} clients:\n{out}", flush=True)
    return {
        "requests": r["requests"],
        "requests_per_s": round(r["requests"] / (r["duration_us"] / 1e6), 1),
        "p50_ms": round(r["p50_us"] / 1e3, 2),
        "p95_ms": round(r["p95_us"] / 1e3, 2),
        "p99_ms": round(r["p99_us"] / 1e3, 2),
        "mean_ms": round(r["mean_us"] / 1e3, 2),
        "errors": r["errors"],
        "api_cpu_ms": round(r["api_cpu_ms_sum"] / r["api_cpu_n"], 3) if r["api_cpu_n"] else None,
    }


ROWS = (
    ("req/s", "requests_per_s"),
    ("p50 ms", "p50_ms"),
    ("p95 ms", "p95_ms"),
    ("p99 ms", "p99_ms"),
    ("errors", "errors"),
    ("api cpu ms/answer", "api_cpu_ms"),
    ("server cpu ms/answer", "server_cpu_ms"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="indexed cells")
    parser.add_argument("--resolution", type=int, default=6, help="H3 resolution of the sampled land cells")
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--stores", default="qdrant,pgvector,faiss")
    parser.add_argument("--clients", default="16,64", help="concurrent clients, comma-separated")
    parser.add_argument("--workers", type=int, help="server worker processes (default: the server's own default)")
    parser.add_argument("--serve-args", default="", help="more options for vectorgeo serve, e.g. '--http h11'")
    parser.add_argument("--requests", type=int, default=2000, help="python client: requests per store and concurrency")
    parser.add_argument("--seconds", type=int, default=15, help="wrk client: seconds per store and concurrency")
    parser.add_argument("--client", choices=("wrk", "python"), default="wrk" if shutil.which("wrk") else "python")
    parser.add_argument("--work", default=str(REPO / "tmp" / "bench-search-load"), help="kept between runs")
    parser.add_argument("--out", help="result file (default benchmarks/results/search_load_n{N}.json)")
    args = parser.parse_args()
    stores = [s for s in args.stores.split(",") if s]
    concurrency = [int(c) for c in args.clients.split(",") if c]
    work = Path(args.work) / f"n{args.n}_res{args.resolution}_d{args.dim}"
    os.environ.setdefault("USERNAME", "vectorgeo")
    lat, lng = build_index(work, args.n, args.resolution, args.dim, stores)
    port = free_port()
    extra = [*(["--workers", str(args.workers)] if args.workers else []), *args.serve_args.split()]
    server = start_server(work, args.resolution, stores, port, extra)
    results: dict[str, dict] = {}
    try:
        roots = server_roots(server, work)
        for kind in stores:
            run_load(port, kind, lat, lng, 4, 200)  # warm-up: caches, connections, first plans
            results[kind] = {}
            for c in concurrency:
                cpu = server_cpu_s(roots)
                if args.client == "wrk":
                    result = run_wrk(work, port, kind, lat, lng, c, args.seconds)
                else:
                    result = run_load(port, kind, lat, lng, c, args.requests)
                result["server_cpu_ms"] = round((server_cpu_s(roots) - cpu) * 1e3 / max(result["requests"], 1), 3)
                results[kind][f"clients_{c}"] = result
            print(f"{kind}: {json.dumps(results[kind])}", flush=True)
    finally:
        server.terminate()
        try:
            server.wait(timeout=90)
        except subprocess.TimeoutExpired:
            server.kill()
    workers = re.search(r"(\d+) worker\(s\)", (work / "server.log").read_text())
    print(f"\nGET /api/search, k = 10, {len(lat):,} indexed res-{args.resolution} cells, dim {args.dim}, "
          f"vectorgeo serve ({workers.group(1) if workers else '?'} workers), {args.client} client")  # fmt: skip
    print(f"{'':34}" + "".join(f"{k:>14}" for k in results))
    for c in concurrency:
        for label, key in ROWS:
            row = "".join(f"{r[f'clients_{c}'][key]!s:>14}" for r in results.values())
            print(f"{f'{c} clients {label}':34}" + row)
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"search_load_n{args.n}.json"
    meta = {
        "n": len(lat),
        "h3_resolution": args.resolution,
        "dim": args.dim,
        "k": 10,
        "client": args.client,
        "workers": int(workers.group(1)) if workers else None,
        "serve_args": extra,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
    }
    out.write_text(json.dumps({**meta, "stores": results}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
