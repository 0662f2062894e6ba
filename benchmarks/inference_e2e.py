"""Benchmark: inference end to end (raster -> Parquet) against the model alone.

In one run, on the synthetic default raster with the default encoder
(32x32 patches, 23 classes, embed_dim 16):
- model only: `embed` on pre-made uint8 patch tensors already in memory;
- end to end: stencil rows -> block-ordered patch and DEM reads -> the same
  forward passes -> class fractions and mean elevation -> a Parquet part.
Prints cells/s for both and their ratio (1.0 means reading and preprocessing
cost nothing); writes benchmarks/results/inference_e2e_{backend}.json.
The encoder's weights are untrained: throughput does not depend on them.

    .venv/bin/python benchmarks/inference_e2e.py [--resolution 8] [--batch-size 512]
    KERAS_BACKEND=jax .venv/bin/python benchmarks/inference_e2e.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from vectorgeo.inference import embed_cells, embeddings_table, write_part
from vectorgeo.legends import get_legend
from vectorgeo.model import EncoderConfig, build_encoder, embed
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
    args = parser.parse_args()
    legend = get_legend("lc100")
    encoder = build_encoder(EncoderConfig(n_classes=legend.n_classes, patch_px=32))
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

        def end_to_end() -> float:
            with open_raster(lc_path) as lc, open_raster(dem_path) as dem:  # fresh handles: no warm block cache
                started = time.perf_counter()
                cells = embed_cells(encoder, lc, legend, lat, lng, patch_px=32, dem=dem, batch_size=args.batch_size)
                write_part(embeddings_table(h3, lat, lng, cells, "bench"), Path(tmp) / "part.parquet", {})
                return time.perf_counter() - started

        model_only(), end_to_end()  # warm-up: compile, page cache
        pairs = [(model_only(), end_to_end()) for _ in range(args.repeats)]  # alternate, so drift hits both
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
        "model_only_cells_per_s": round(model_rate),
        "end_to_end_cells_per_s": round(e2e_rate),
        "ratio": round(ratio, 3),
        "repeats": args.repeats,
        "projected_global_res7_hours": round(28_067_759 / e2e_rate / 3600, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
    }
    print(
        f"inference, {backend} backend, {n:,} cells, batch {args.batch_size}, median of {args.repeats} alternating runs"
    )
    print(f"  model only (pre-made uint8 tensors): {result['model_only_cells_per_s']:>8,} cells/s")
    print(f"  end to end (raster -> Parquet):       {result['end_to_end_cells_per_s']:>8,} cells/s")
    print(f"  ratio end-to-end / model-only (median of pairs): {result['ratio']}")
    print(f"  projected 28.07 M global res-7 cells on this machine: {result['projected_global_res7_hours']} h")
    out = Path(__file__).parent / "results" / f"inference_e2e_{backend}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"  wrote {out}")


if __name__ == "__main__":
    main()
