"""Benchmark: the global land stencil at one H3 resolution, on this machine.

Prints wall time, cells/s and peak memory of the vectorised stencil over the
whole globe (global land mask, no raster), and, side by side on a sample of
the same candidates, the throughput of a naive per-cell Python loop (the
prototype's way: h3.cell_to_latlng and a land lookup per cell), as a ratio.
No global land-cover raster fits on a laptop, so the raster refinement is
measured apart: points/s of the block-ordered class lookup on the synthetic
COG (every res-10 cell centre in it), projected onto the global land cells.
Writes benchmarks/results/stencil_global_res{R}.json.

    .venv/bin/python benchmarks/stencil_global.py --resolution 7
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vectorgeo.land import is_land_by_mask
from vectorgeo.stencil import aoi_to_cells, build_stencil, cells_to_latlng


def _naive_cells_per_s(cells: np.ndarray) -> float:
    import h3
    from global_land_mask import globe

    started = time.perf_counter()
    kept = []
    for cell in cells.tolist():
        lat, lng = h3.cell_to_latlng(h3.int_to_str(cell))
        if globe.is_land(lat, lng):
            kept.append((cell, lat, lng))
    return len(cells) / (time.perf_counter() - started)


def _vectorised_cells_per_s(cells: np.ndarray) -> float:
    started = time.perf_counter()
    lat, lng = cells_to_latlng(cells)
    land = is_land_by_mask(lat, lng)
    _ = cells[land], lat[land], lng[land]
    return len(cells) / (time.perf_counter() - started)


def _raster_refinement_points_per_s() -> float:
    import tempfile

    from vectorgeo.legends import get_legend
    from vectorgeo.raster import open_raster, raster_bounds_latlng, sample_classes
    from vectorgeo.stencil import footprint_to_geometry
    from vectorgeo.synthetic import write_synthetic_rasters

    with tempfile.TemporaryDirectory() as tmp:
        lc_path, _ = write_synthetic_rasters(Path(tmp) / "lc.tif", Path(tmp) / "dem.tif")
        with open_raster(lc_path) as ds:
            cells = np.concatenate(list(aoi_to_cells(footprint_to_geometry(*raster_bounds_latlng(ds)), 10)))
            lat, lng = cells_to_latlng(cells)
            started = time.perf_counter()
            sample_classes(ds, lat, lng, get_legend("lc100"))
            return lat.size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=7)
    parser.add_argument("--sample", type=int, default=200_000, help="candidates for the side-by-side comparison")
    args = parser.parse_args()

    is_land_by_mask(np.array([0.0]), np.array([0.0]))  # load the land mask outside the timings
    sample = next(aoi_to_cells(None, max(args.resolution, 5)))[: args.sample]
    naive = _naive_cells_per_s(sample[: args.sample // 10])
    vectorised = _vectorised_cells_per_s(sample)

    refine_rate = _raster_refinement_points_per_s()

    started = time.perf_counter()
    table = build_stencil(args.resolution, progress=False)
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    import h3

    result = {
        "benchmark": "stencil_global",
        "h3_resolution": args.resolution,
        "candidate_cells": h3.get_num_cells(args.resolution),
        "land_cells": table.num_rows,
        "seconds": round(seconds, 1),
        "cells_per_s": round(h3.get_num_cells(args.resolution) / seconds),
        "peak_rss_mb": round(peak_mb),
        "sample_naive_cells_per_s": round(naive),
        "sample_vectorised_cells_per_s": round(vectorised),
        "speedup_vs_naive": round(vectorised / naive, 1),
        "raster_refinement_points_per_s": round(refine_rate),
        "projected_refinement_s": round(table.num_rows / refine_rate, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
    }
    print(f"global stencil res {args.resolution}: {result['land_cells']:,} land cells of {result['candidate_cells']:,}")
    print(f"  wall {result['seconds']} s, {result['cells_per_s']:,} candidates/s, peak RSS {result['peak_rss_mb']} MB")
    print(
        f"  per-cell throughput on {len(sample):,} candidates: vectorised {result['sample_vectorised_cells_per_s']:,}/s"
        f"  naive loop {result['sample_naive_cells_per_s']:,}/s  ratio {result['speedup_vs_naive']}x"
    )
    print(
        f"  raster refinement (class under each centre, synthetic COG): {result['raster_refinement_points_per_s']:,} "
        f"points/s -> about {result['projected_refinement_s']} s more for the global land cells"
    )
    out = Path(__file__).parent / "results" / f"stencil_global_res{args.resolution}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"  wrote {out}")


if __name__ == "__main__":
    main()
