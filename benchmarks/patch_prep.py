"""Benchmark: stencil cells -> model-ready patch batch, reading the COG included.

Side by side in one run on the synthetic default raster:
- vectorgeo: block-ordered reads (each region read once), lookup-table code
  mapping, uint8 class indices (the model one-hot encodes on its side);
- naive: the prototype's way, one window read per cell, per-pixel code
  mapping through a dict, a Python loop building the float32 one-hot.
Prints cells/s for both and the ratio; writes benchmarks/results/patch_prep.json.

    .venv/bin/python benchmarks/patch_prep.py [--resolution 8] [--naive-cells 300]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rasterio.windows import Window

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vectorgeo.legends import get_legend
from vectorgeo.raster import extract_patches, latlng_to_pixels, open_raster
from vectorgeo.stencil import build_stencil
from vectorgeo.synthetic import write_synthetic_rasters

PATCH = 32


def naive_batch(dataset, legend, lat, lng) -> np.ndarray:
    """One window read per cell, per-pixel dict lookups, a Python one-hot loop."""
    code_to_index = {code: i for i, code in enumerate(legend.codes)}
    batch = np.zeros((len(lat), PATCH, PATCH, legend.n_classes), dtype=np.float32)
    for k in range(len(lat)):
        row, col = latlng_to_pixels(dataset, lat[k : k + 1], lng[k : k + 1])
        r0, c0 = int(row[0]) - PATCH // 2, int(col[0]) - PATCH // 2
        window = dataset.read(1, window=Window(c0, r0, PATCH, PATCH), boundless=True, fill_value=255)
        for i in range(PATCH):
            for j in range(PATCH):
                index = code_to_index.get(int(window[i, j]))
                if index is not None:
                    batch[k, i, j, index] = 1.0
    return batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=8)
    parser.add_argument("--naive-cells", type=int, default=300)
    args = parser.parse_args()
    legend = get_legend("lc100")
    with tempfile.TemporaryDirectory() as tmp:
        lc_path, _ = write_synthetic_rasters(Path(tmp) / "lc.tif", Path(tmp) / "dem.tif")
        with open_raster(lc_path) as ds:
            stencil = build_stencil(args.resolution, dataset=ds, legend=legend, progress=False)
            lat, lng = stencil.column("lat").to_numpy(), stencil.column("lng").to_numpy()
        # each side opens the raster afresh, so neither profits from the other's GDAL block cache
        with open_raster(lc_path) as ds:
            started = time.perf_counter()
            patches = extract_patches(ds, lat, lng, legend, patch_px=PATCH)
            fast_s = time.perf_counter() - started
        sample = np.random.default_rng(0).choice(lat.size, min(args.naive_cells, lat.size), replace=False)
        with open_raster(lc_path) as ds:
            started = time.perf_counter()
            naive = naive_batch(ds, legend, lat[sample], lng[sample])
            naive_s = time.perf_counter() - started
    # same answer: the naive one-hot's argmax equals the fast class indices where valid
    ok = patches.valid[sample]
    agree = np.array_equal(naive[ok].argmax(axis=-1), patches.classes[sample][ok])
    fast_rate, naive_rate = lat.size / fast_s, sample.size / naive_s
    result = {
        "benchmark": "patch_prep",
        "cells": int(lat.size),
        "patch_px": PATCH,
        "vectorgeo_cells_per_s": round(fast_rate),
        "naive_cells_per_s": round(naive_rate, 1),
        "naive_cells_timed": int(sample.size),
        "speedup": round(fast_rate / naive_rate, 1),
        "same_patches": bool(agree),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
    }
    print(f"patch preparation, {PATCH}x{PATCH} px, synthetic LC100 COG, {lat.size:,} res-{args.resolution} cells")
    print(f"  vectorgeo (block-ordered, LUT, uint8): {result['vectorgeo_cells_per_s']:>10,} cells/s")
    print(f"  naive (window per cell, dict, one-hot): {result['naive_cells_per_s']:>10,} cells/s")
    print(f"  ratio: {result['speedup']}x   same patches: {agree}")
    out = Path(__file__).parent / "results" / "patch_prep.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"  wrote {out}")


if __name__ == "__main__":
    main()
