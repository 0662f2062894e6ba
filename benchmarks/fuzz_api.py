"""Fuzz: a long, random Hypothesis run of the search API on a real search service; no answer may be a 5xx.

The tests run a short, derandomised version of this (tests/test_api.py). Here the seed is random
(printed; ``--seed`` repeats a run), the examples many, and every failing request is kept: saved as
readable JSON into ``tests/fuzz_examples/`` (``--save``), which the tests replay on every run, so a
failure found once stays fixed. Requests come from tests/api_fuzz.py: any method, path, query string
and body (JSON of any shape and depth, raw bytes, text), on an index of the Oregon test cells in
FAISS and Qdrant Edge (built by flow 04's own jobs in ``--work``).

Prints the statuses seen, the failures and the time per request; writes benchmarks/results/fuzz_api.json.

    .venv/bin/python benchmarks/fuzz_api.py --examples 5000
    .venv/bin/python benchmarks/fuzz_api.py --examples 500 --seed 1234
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import h3.api.basic_int as h3i
import hypothesis
import numpy as np
from hypothesis import HealthCheck, given, seed, settings

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from api_fuzz import FUZZ_EXAMPLES, check_answer, requests, save_example, validators  # noqa: E402
from search_data import build_search_bucket, open_test_service  # noqa: E402

from vectorgeo.api import ApiRequest, SearchAPI  # noqa: E402
from vectorgeo.service_settings import ServiceSettings  # noqa: E402

KINDS = ("faiss", "qdrant")


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=3000, help="requests to generate")
    parser.add_argument("--seed", type=int, help="Hypothesis seed (default: random, printed)")
    parser.add_argument("--work", type=Path, help="folder for the test index (default: a temporary one)")
    parser.add_argument("--save", type=Path, default=FUZZ_EXAMPLES, help="where failing requests are saved")
    parser.add_argument("--max-saved", type=int, default=20, help="most failing requests saved per run")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "fuzz_api.json")
    return parser.parse_args()


def main() -> int:
    args = _parse_args()
    run_seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    print(f"fuzz_api: seed {run_seed} ({args.examples} examples); repeat with --seed {run_seed}", flush=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="vg-fuzz-"))
    data = build_search_bucket(work, kinds=KINDS)
    service = open_test_service(data, KINDS)
    service_settings = ServiceSettings(bucket=data.bucket.url, cache_dir=str(work / "cache"), model="m",
                                       h3_resolution=7, stores=KINDS, data_dir=str(data.data_dir))  # fmt: skip
    api = SearchAPI(service_settings, service)
    checks = validators()
    cells = [h3i.int_to_str(int(c)) for c in (data.h3[0], data.h3[100], data.missing[0])] + ["8528f5dbfffffff"]
    statuses: collections.Counter[int] = collections.Counter()
    failures: list[tuple[ApiRequest, str]] = []
    times_ms: list[float] = []

    @seed(run_seed)
    @settings(max_examples=args.examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(request=requests(cells))
    def explore(request: ApiRequest) -> None:
        started = time.perf_counter()
        try:
            statuses[check_answer(api, request, checks)] += 1
        except Exception as exc:  # every failure is kept and the run goes on, rather than shrinking the first
            statuses["failed"] += 1
            failures.append((request, f"{type(exc).__name__}: {str(exc)[:300]}"))
        times_ms.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    try:
        explore()
    finally:
        api.close()
    elapsed = time.perf_counter() - started
    saved = [str(save_example(request, args.save).relative_to(REPO)) for request, _ in failures[: args.max_saved]]
    result = {
        "seed": run_seed,
        "examples": len(times_ms),
        "elapsed_s": round(elapsed, 2),
        "request_ms": {q: round(float(np.percentile(times_ms, p)), 3) for q, p in (("p50", 50), ("p99", 99))}
        | {"max": round(max(times_ms), 3)},
        "statuses": {str(k): v for k, v in sorted(statuses.items(), key=str)},
        "failures": [{"request": repr(request)[:300], "error": error} for request, error in failures[:50]],
        "saved": saved,
        "hypothesis": hypothesis.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
    }
    print(f"fuzz_api: {len(times_ms)} requests in {elapsed:.1f} s; statuses {result['statuses']}")
    print(f"fuzz_api: per request p50 {result['request_ms']['p50']} ms, p99 {result['request_ms']['p99']} ms")
    for request, error in failures[:10]:
        print(f"fuzz_api: FAILED {error}\n    {repr(request)[:300]}")
    if saved:
        print(f"fuzz_api: saved {len(saved)} failing request(s) under {args.save}; tests/test_api.py replays them")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"fuzz_api: wrote {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
