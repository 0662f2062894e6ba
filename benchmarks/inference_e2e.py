"""Benchmark: inference end to end (raster -> Parquet) against the model alone.

In one run, on the synthetic default raster with the default encoder
(32x32 patches, 23 classes, embed_dim 16):
- model only: `embed` on pre-made uint8 patch tensors already in memory;
- end to end: stencil rows -> block-ordered patch and DEM reads -> the same
  forward passes -> class fractions and mean elevation -> a Parquet part.
Prints cells/s for both and their ratio (1.0 means reading and preprocessing
cost nothing); writes benchmarks/results/inference_e2e_{backend}.json (or --out),
recording the device the backend ran on and the versions.
The encoder's weights are untrained: throughput does not depend on them.
--breakdown also times the reads alone (the end-to-end pipeline without the
model, one thread): when it is no faster than end to end, the CPU side bounds it.
--workers N runs N end-to-end pipelines at once in threads, over contiguous
runs of the cells (as N inference workers would share a GPU, each with its own
copy of the encoder); its rate is all cells over the wall time.

    .venv/bin/python benchmarks/inference_e2e.py [--resolution 8] [--batch-size 512]
    KERAS_BACKEND=jax .venv/bin/python benchmarks/inference_e2e.py
    KERAS_BACKEND=jax python3 benchmarks/inference_e2e.py --resolution 9 --max-cells 200000 \
        --batch-size 4096 --breakdown --workers 4 --out benchmarks/results/inference_e2e_jax_gpu_h100.json
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from vectorgeo.encoder import EncoderConfig, build_encoder, embed
from vectorgeo.inference import _prepare, embed_cells, embeddings_table, write_part
from vectorgeo.legends import get_legend
from vectorgeo.raster import extract_patches, open_raster
from vectorgeo.stencil import build_stencil
from vectorgeo.synthetic import write_synthetic_rasters


def main() -> None:
    import keras

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--max-cells", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5, help="alternating timed runs of each; medians reported")
    parser.add_argument("--prefetch-cells", type=int, default=None, help="default: max(4096, batch size)")
    parser.add_argument("--workers", type=int, default=1, help="end-to-end pipelines at once (threads)")
    parser.add_argument("--breakdown", action="store_true", help="also time the reads alone (no model)")
    parser.add_argument(
        "--out", type=Path, default=None, help="result JSON (default: results/inference_e2e_{backend}.json)"
    )
    args = parser.parse_args()
    prefetch = args.prefetch_cells or max(4096, args.batch_size)
    legend = get_legend("lc100")
    config = EncoderConfig(n_classes=legend.n_classes, patch_px=32)
    encoder = build_encoder(config)
    # one encoder per worker, as separate worker processes would have (Keras's JAX predict is not thread-safe)
    encoders = [encoder] + [build_encoder(config) for _ in range(args.workers - 1)]
    for other in encoders[1:]:
        other.set_weights(encoder.get_weights())
    with tempfile.TemporaryDirectory() as tmp:
        lc_path, dem_path = write_synthetic_rasters(Path(tmp) / "lc.tif", Path(tmp) / "dem.tif")
        with open_raster(lc_path) as lc:
            stencil = build_stencil(args.resolution, dataset=lc, legend=legend, progress=False)
            stencil = stencil.slice(0, min(args.max_cells, stencil.num_rows))
            h3, lat, lng = (stencil.column(c).to_numpy() for c in ("h3", "lat", "lng"))
            patches = extract_patches(lc, lat, lng, legend, patch_px=32)
        classes = patches.classes[patches.valid]

        def model_only() -> float:
            started = time.perf_counter()
            embed(encoder, classes, batch_size=args.batch_size)
            return time.perf_counter() - started

        def pipeline(k: int, sl: slice) -> None:
            with open_raster(lc_path) as lc, open_raster(dem_path) as dem:  # fresh handles: no warm block cache
                cells = embed_cells(
                    encoders[k],
                    lc,
                    legend,
                    lat[sl],
                    lng[sl],
                    patch_px=32,
                    dem=dem,
                    batch_size=args.batch_size,
                    prefetch_cells=prefetch,
                )
                table = embeddings_table(h3[sl], lat[sl], lng[sl], cells, "bench")
                write_part(table, Path(tmp) / f"part{k}.parquet", {})

        bounds = [round(lat.size * w / args.workers) for w in range(args.workers + 1)]
        runs = [slice(a, b) for a, b in itertools.pairwise(bounds)]

        def end_to_end() -> float:
            started = time.perf_counter()
            if len(runs) == 1:
                pipeline(0, runs[0])
            else:
                with ThreadPoolExecutor(max_workers=len(runs)) as pool:
                    list(pool.map(pipeline, range(len(runs)), runs))
            return time.perf_counter() - started

        def reads_only() -> float:  # the end-to-end pipeline's CPU side alone, one thread, no model
            with open_raster(lc_path) as lc, open_raster(dem_path) as dem:
                started = time.perf_counter()
                for s in range(0, lat.size, prefetch):
                    _prepare(
                        lc, legend, lat[s : s + prefetch], lng[s : s + prefetch], patch_px=32, use_dem=False, dem=dem
                    )
                return time.perf_counter() - started

        model_only(), end_to_end()  # warm-up: compile, page cache
        pairs = [(model_only(), end_to_end()) for _ in range(args.repeats)]  # alternate, so drift hits both
        reads = [reads_only() for _ in range(args.repeats)] if args.breakdown else []
    model_s = statistics.median(m for m, _ in pairs)
    e2e_s = statistics.median(e for _, e in pairs)
    ratio = statistics.median(m / e for m, e in pairs)
    n = int(classes.shape[0])
    model_rate, e2e_rate = n / model_s, n / e2e_s
    backend = keras.backend.backend()
    result = {
        "benchmark": "inference_e2e",
        "keras_backend": backend,
        "cells": n,
        "batch_size": args.batch_size,
        "prefetch_cells": prefetch,
        "workers": args.workers,
        "model_only_cells_per_s": round(model_rate),
        "end_to_end_cells_per_s": round(e2e_rate),
        "ratio": round(ratio, 3),
        "repeats": args.repeats,
        "projected_global_res7_hours": round(28_067_759 / e2e_rate / 3600, 1),
        "resolution": args.resolution,
        "device": _device(backend),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "versions": _versions(backend),
    }
    if reads:
        result["reads_only_cells_per_s"] = round(n / statistics.median(reads))
    print(
        f"inference, {backend} backend, {n:,} cells, batch {args.batch_size}, median of {args.repeats} alternating runs"
    )
    print(f"  model only (pre-made uint8 tensors): {result['model_only_cells_per_s']:>8,} cells/s")
    print(f"  end to end (raster -> Parquet):       {result['end_to_end_cells_per_s']:>8,} cells/s")
    print(f"  ratio end-to-end / model-only (median of pairs): {result['ratio']}")
    if reads:
        print(f"  reads only (no model, one thread):    {result['reads_only_cells_per_s']:>8,} cells/s")
    print(f"  device: {result['device']}; workers {args.workers}, prefetch {prefetch}; {result['versions']}")
    print(f"  projected 28.07 M global res-7 cells on this machine: {result['projected_global_res7_hours']} h")
    out = args.out or Path(__file__).parent / "results" / f"inference_e2e_{backend}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"  wrote {out}")


def _device(backend: str) -> str:
    """What the backend computes on, in words (best effort)."""
    try:
        if backend == "jax":
            import jax

            d = jax.devices()[0]
            return f"{d.platform}: {getattr(d, 'device_kind', d)}"
        if backend == "torch":
            import torch

            return f"cuda: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "cpu"
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            return f"gpu: {gpus[0].name}" if gpus else "cpu"
    except Exception as exc:  # a label only: never fail the benchmark for it
        return f"unknown ({exc})"
    return "unknown"


def _versions(backend: str) -> dict:
    import importlib.metadata as md

    names = {"jax": ["jax", "jaxlib"], "torch": ["torch"], "tensorflow": ["tensorflow"]}.get(backend, [])
    out = {}
    for name in ["keras", *names, "numpy", "rasterio"]:
        with contextlib.suppress(md.PackageNotFoundError):
            out[name] = md.version(name)
    return out


if __name__ == "__main__":
    main()
