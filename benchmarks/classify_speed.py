"""Benchmark: flow 06's prediction at scale, and ``POST /classify`` over a region of 50,000 cells.

1. A bucket of N res-8 cells (one contiguous disk, N = 1,000,000 by default) with clustered
   16-dimensional embeddings and class fractions, in parts of 50,000 rows as flow 03 writes them.
   A classifier is trained on 200 derived labels; then, in a fresh process (its peak RSS is the
   step's own), flow 06's jobs predict every part and write the GeoParquet and the class COG.
   Reported: cells/s of prediction, of the map outputs, and overall, with peak memory.
2. The same cells loaded into FAISS (flow 04's job); ``POST /classify`` through
   :class:`vectorgeo.api.SearchAPI` (the code every entry point runs) with 30 labels and a box
   holding about 47,500 cells (the API refuses more than 50,000 from the
   box's area; the estimate runs a few % high), 30 times per classifier: p50 and p99 latency, cells answered.

    .venv/bin/python benchmarks/classify_speed.py                 # both, 1 M cells
    .venv/bin/python benchmarks/classify_speed.py --n 200000 --skip-api

Writes ``benchmarks/results/classify_speed_n{N}.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RES, DIM, PART_ROWS = 8, 16, 50_000
CENTRE = (44.0, -120.0)


def build_bucket(root: Path, n: int, seed: int = 0) -> dict:
    """Embeddings parts of ``n`` cells and a labels file, as flows 03 and a user would leave them."""
    import h3.api.numpy_int as h3n
    import h3ronpy.vector as hv
    import pyarrow as pa

    from vectorgeo.derived_labels import labels_from_fractions
    from vectorgeo.inference import CellEmbeddings, embeddings_table, write_part
    from vectorgeo.legends import BUILTIN_LEGENDS
    from vectorgeo.transfer import Bucket

    bucket = Bucket(root / "bucket", root / "cache")
    legend = BUILTIN_LEGENDS["worldcover"]
    k = int(np.ceil((-3 + np.sqrt(9 + 12 * (n - 1))) / 6))  # grid_disk(k) holds 3k(k+1)+1 cells
    cells = np.sort(np.asarray(h3n.grid_disk(h3n.latlng_to_cell(*CENTRE, RES), k), np.uint64))[:n]
    coords = hv.cells_to_coordinates(pa.array(cells, pa.uint64()))
    lat, lng = coords.column("lat").to_numpy(), coords.column("lng").to_numpy()
    rng = np.random.default_rng(seed)
    # smooth land-cover fields: each cell's composition follows a few spatial waves, so classes form regions
    waves = rng.normal(size=(4, legend.n_classes))
    phase = np.stack([np.sin(lat * 7), np.cos(lng * 5), np.sin((lat + lng) * 3), np.cos((lat - lng) * 11)], 1)
    logits = 2.5 * phase @ waves + 0.5 * rng.normal(size=(n, legend.n_classes))
    fractions = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    vectors = fractions @ rng.normal(size=(legend.n_classes, DIM)) + 0.05 * rng.normal(size=(n, DIM))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    keys = []
    for i, start in enumerate(range(0, n, PART_ROWS)):
        rows = slice(start, min(start + PART_ROWS, n))
        m = rows.stop - rows.start
        embedded = CellEmbeddings(np.ones(m, bool), vectors[rows].astype(np.float32),
                                  fractions[rows].astype(np.float32), np.full(m, np.nan, np.float32))  # fmt: skip
        table = embeddings_table(cells[rows], lat[rows], lng[rows], embedded, "bench")
        keys.append(f"embeddings/bench/res{RES}/part-{i:05d}.parquet")
        bucket.upload(write_part(table, root / "part.parquet", {"model_sha256": "bench"}), keys[-1])
    bucket.write_json(f"embeddings/bench/res{RES}/manifest.json", {"parts": keys, "n_embedded": n})
    bucket.write_json("models/bench.json", {"legend": legend.to_dict()})
    doc = labels_from_fractions(cells, lat, lng, fractions, list(legend.names), min_fraction=0.5, per_class=40,
                                max_classes=5, seed=seed)  # fmt: skip
    bucket.write_json("labels/bench.geojson", doc)
    return {"n": n, "parts": len(keys), "bbox_centre": CENTRE}


def predict_stage(root: Path, classifier: str) -> dict:
    """Train, then predict every part and write the map (run in its own process for a clean peak RSS)."""
    from vectorgeo.jobs.classify import plan_prediction, run_prediction, train_classifier
    from vectorgeo.jobs.classify_maps import finish_prediction
    from vectorgeo.transfer import Bucket

    bucket = Bucket(root / "bucket", root / f"cache-{classifier}")
    t0 = time.perf_counter()
    sidecar = train_classifier(bucket, model_filename="bench.keras", h3_resolution=RES, labels="labels/bench.geojson",
                               class_property="class", classifier=classifier, name=f"bench-{classifier}")  # fmt: skip
    t1 = time.perf_counter()
    (worker,) = plan_prediction(bucket, model_filename="bench.keras", h3_resolution=RES, n_workers=1)
    name, version = f"bench-{classifier}", sidecar["version"]
    result = run_prediction(bucket, worker, name=name, version=version, h3_resolution=RES)
    t2 = time.perf_counter()
    summary = finish_prediction(bucket, [result], name=name, version=version, h3_resolution=RES, n_parts=len(worker))
    t3 = time.perf_counter()
    n = summary["n_cells"]
    return {
        "classifier": classifier,
        "n_cells": n,
        "train_s": round(t1 - t0, 2),
        "predict_s": round(t2 - t1, 2),
        "maps_s": round(t3 - t2, 2),
        "predict_cells_per_s": round(n / (t2 - t1)),
        "maps_cells_per_s": round(n / (t3 - t2)),
        "overall_cells_per_s": round(n / (t3 - t1)),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "raster_size": summary["raster_size"],
        "macro_f1_embeddings": sidecar["cv"]["features"]["embeddings"]["macro_f1"],
    }


def api_stage(root: Path, n_requests: int, region_cells: int) -> list[dict]:
    """``POST /classify`` latency over a box of about ``region_cells`` cells, per classifier."""
    import h3.api.basic_int as h3i

    from vectorgeo.api import ApiRequest, SearchAPI
    from vectorgeo.jobs.upload import load_store
    from vectorgeo.search import open_search_service
    from vectorgeo.service_settings import ServiceSettings
    from vectorgeo.transfer import Bucket

    bucket = Bucket(root / "bucket", root / "cache-api")
    load_store(bucket, "faiss", model_filename="bench.keras", h3_resolution=RES, collection="bench_res8",
               data_dir=root / "stores")  # fmt: skip
    service = open_search_service(bucket, model="bench", h3_resolution=RES, stores=("faiss",), data_dir=root / "stores")
    settings = ServiceSettings(bucket=bucket.url, cache_dir=str(root / "cache-api"), model="bench", h3_resolution=RES,
                               stores=("faiss",), data_dir=str(root / "stores"))  # fmt: skip
    api = SearchAPI(settings, service)
    # a square box holding about region_cells cells at the centre
    side_km = np.sqrt(region_cells * h3i.average_hexagon_area(RES, "km^2"))
    half_lat = side_km / 2 / 111.2
    half_lng = half_lat / np.cos(np.radians(CENTRE[0]))
    bbox = [CENTRE[1] - half_lng, CENTRE[0] - half_lat, CENTRE[1] + half_lng, CENTRE[0] + half_lat]
    doc = bucket.read_json("labels/bench.geojson")
    rng = np.random.default_rng(1)
    picked = rng.choice(len(doc["features"]), 30, replace=False)
    labels = {doc["features"][i]["properties"]["h3"]: doc["features"][i]["properties"]["class"] for i in picked}
    rows = []
    for classifier in ("logistic", "knn", "random_forest"):
        body = json.dumps({"labels": labels, "bbox": bbox, "classifier": classifier}).encode()
        times, answered = [], 0
        for _ in range(n_requests + 2):
            started = time.perf_counter()
            response = api.handle(ApiRequest(method="POST", path="/classify", body=body, headers={}))
            times.append(time.perf_counter() - started)
            if response.status != 200:
                raise SystemExit(f"POST /classify answered {response.status}: {response.body[:300]!r}")
            answered = response.json()["n_cells"]
        times = np.array(times[2:]) * 1000  # the first two warm the store and the imports
        rows.append({"classifier": classifier, "n_cells": answered, "n_labels": len(labels), "bbox": bbox,
                     "p50_ms": round(float(np.percentile(times, 50)), 1),
                     "p99_ms": round(float(np.percentile(times, 99)), 1), "requests": n_requests})  # fmt: skip
    api.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--classifiers", default="logistic,random_forest")
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--region-cells", type=int, default=47_500, help="cells in the box (the API takes 50,000)")
    parser.add_argument("--skip-api", action="store_true")
    parser.add_argument("--skip-predict", action="store_true", help="only the POST /classify part")
    parser.add_argument("--stage", choices=("predict",), help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--classifier", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    if args.stage == "predict":
        print(json.dumps(predict_stage(Path(args.root), args.classifier)))
        return
    with tempfile.TemporaryDirectory(prefix="vg-bench-classify-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        built = build_bucket(root, args.n)
        print(f"built {args.n} cells in {built['parts']} parts in {time.perf_counter() - t0:.0f} s", flush=True)
        predict = []
        for classifier in [] if args.skip_predict else args.classifiers.split(","):
            done = subprocess.run([sys.executable, __file__, "--stage=predict", f"--root={root}",
                                   f"--classifier={classifier}"], capture_output=True, text=True)  # fmt: skip
            if done.returncode:
                raise SystemExit(done.stderr[-3000:])
            predict.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(predict[-1]), flush=True)
        api = [] if args.skip_api else api_stage(root, args.requests, args.region_cells)
    print(f"\nflow 06 on {args.n:,} cells (2 cores), one worker:")
    print(f"{'classifier':<15}{'predict c/s':>13}{'maps c/s':>11}{'overall c/s':>13}{'peak RSS MB':>13}")
    for r in predict:
        print(f"{r['classifier']:<15}{r['predict_cells_per_s']:>13,}{r['maps_cells_per_s']:>11,}"
              f"{r['overall_cells_per_s']:>13,}{r['peak_rss_mb']:>13,}")  # fmt: skip
    if api:
        print(
            f"\nPOST /classify, {api[0]['n_labels']} labels, a box of {api[0]['n_cells']:,} cells, FAISS, in-process:"
        )
        print(f"{'classifier':<15}{'p50 ms':>9}{'p99 ms':>9}")
        for r in api:
            print(f"{r['classifier']:<15}{r['p50_ms']:>9}{r['p99_ms']:>9}")
    suffix = "_api" if args.skip_predict else ""
    out = Path(args.out or REPO / "benchmarks" / "results" / f"classify_speed_n{args.n}{suffix}.json")
    out.write_text(json.dumps({"machine": f"{platform.machine()}, {platform.processor() or '?'}, "
                               f"python {platform.python_version()}", "n": args.n, "predict": predict,
                               "classify_api": api}, indent=2) + "\n")  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
