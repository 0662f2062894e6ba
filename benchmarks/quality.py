"""Embedding quality on held-out ground: flows 00 -> 01 -> 02 -> 03 -> 05 per raster and dimension.

Runs the real flows (the Metaflow CLI, a local bucket per raster) on the
synthetic default and on each real clip in ``../shared/realdata`` that is
present, with the same training budget as the demo, and prints one table: the
encoder against random vectors, PCA of the one-hot patch and the class
histogram, with the issue-10 targets checked. Writes JSON to
``benchmarks/results/quality.json`` (or ``--out``).

    .venv/bin/python benchmarks/quality.py                       # every raster, 16 dims
    .venv/bin/python benchmarks/quality.py --rasters synthetic,nlcd --dims 16,32,64

Targets (issue 10), at 16 dimensions: retrieval JSD@10 below PCA's and at most
1.5 x the histogram's; R² class fractions >= 0.90; R² edge density above PCA's
and the histogram's; R² Shannon above PCA's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

# label: (file in realdata, legend, H3 resolution giving >= 1,500 held-out cells)
RASTERS = {
    "synthetic": ("", "lc100", 8),
    "nlcd": ("nlcd2011_zion_UT.tif", str(REPO / "examples" / "legends" / "nlcd.csv"), 9),
    "worldcover": ("esa_worldcover_2021_saotome_10m_clip.tif", "worldcover", 10),
    "esacci": ("esacci7_newguinea_2015_300m.tif", "{realdata}/esacci7_legend.csv", 7),
}
METRICS = ("retrieval_jsd", "r2_class_fractions", "r2_edge_density", "r2_shannon")


def run_flow(work: Path, flow: str, *args: str) -> float:
    """Run one flow; raise with its output's tail when it fails. Returns seconds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VG_")}
    env.update(
        USERNAME=env.get("USERNAME") or env.get("USER") or "vectorgeo",
        VG_BUCKET=str(work / "bucket"),
        VG_CACHE_DIR=str(work / "cache"),
        VG_DATA_DIR=str(work / "stores"),
        METAFLOW_DATASTORE_SYSROOT_LOCAL=str(work / "metaflow"),
    )
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, str(REPO / "flows" / flow), "--no-pylint", "run", *args],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise SystemExit(f"{flow} {' '.join(args)} failed:\n{(result.stdout + result.stderr)[-3000:]}")
    return time.perf_counter() - started


def targets(scores: dict) -> dict[str, bool]:
    """The issue-10 targets, from one report's methods."""
    enc, pca, hist = scores["encoder"], scores["pca_onehot"], scores["histogram"]

    def val(row, m):
        return float("nan") if row[m] is None else row[m]

    return {
        "jsd_below_pca": val(enc, "retrieval_jsd") < val(pca, "retrieval_jsd"),
        "jsd_within_1.5x_histogram": val(enc, "retrieval_jsd") <= 1.5 * val(hist, "retrieval_jsd"),
        "r2_fractions_ge_0.90": val(enc, "r2_class_fractions") >= 0.90,
        "edge_density_above_pca_and_histogram": val(enc, "r2_edge_density")
        > max(val(pca, "r2_edge_density"), val(hist, "r2_edge_density")),
        "shannon_above_pca": val(enc, "r2_shannon") > val(pca, "r2_shannon"),
    }


def run_raster(args, label: str, raster_args: list[str], res: int) -> list[dict]:
    """Flows 00 -> 01 once, then 02 -> 03 -> 05 per dimension: one row per dimension."""
    work = Path(args.work_dir) / label
    work.mkdir(parents=True, exist_ok=True)
    print(f"{label}: stencil res {res}, {args.n_files} x {args.samples_per_file} pairs", flush=True)
    run_flow(work, "00_h3_stencil_flow.py", f"--h3_resolution={res}", *raster_args)
    pairs_s = run_flow(
        work,
        "01_preprocess_flow.py",
        f"--n_files={args.n_files}",
        "--n_jobs=2",
        f"--samples_per_file={args.samples_per_file}",
        *raster_args,
    )
    rows = []
    for dim in (int(d) for d in args.dims.split(",")):
        model = f"{label}_d{dim}.keras"
        name = model.removesuffix(".keras")
        train = [f"--model_filename={model}", f"--embed_dim={dim}", *args.train_args.split()]
        train += [f"--epochs={args.epochs}"] if args.epochs else []
        train_s = run_flow(work, "02_train_flow.py", *train)
        run_flow(work, "03_inference_flow.py", f"--model_filename={model}", f"--h3_resolution={res}", *raster_args)
        run_flow(work, "05_evaluate_flow.py", f"--model_filename={model}", f"--h3_resolution={res}", *raster_args)
        report = json.loads((work / "bucket" / "reports" / name / f"res{res}" / "evaluation.json").read_text())
        training = json.loads((work / "bucket" / "models" / f"{name}.json").read_text())["training"]
        row = {
            "raster": label,
            "dim": dim,
            "h3_resolution": res,
            "n_cells": report["n_cells"],
            "scores": report["methods"],
            "targets": targets(report["methods"]),
            "warnings": report.get("warnings", []),
            "probe_split": report.get("probe_split"),
            "train_seconds": round(train_s, 1),
            "pairs_seconds": round(pairs_s, 1),
            "fit_seconds": round(training["seconds"], 1),
            "train_pairs_per_s": round(training["train_pairs_per_s"], 1),
            "epochs_run": training["epochs_run"],
            "n_train_pairs": training["n_train"],
            "params": training["params"],
        }
        rows.append(row)
        print(f"  d={dim}: {row['scores']['encoder']} targets {row['targets']} ({train_s:.0f} s flow 02)", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rasters", default=",".join(RASTERS))
    parser.add_argument("--dims", default="16")
    parser.add_argument("--realdata", default=str(REPO.parent / "shared" / "realdata"))
    parser.add_argument("--work-dir", default=str(REPO / "tmp" / "quality"))
    parser.add_argument("--n-files", type=int, default=16, help="flow 01 shards")
    parser.add_argument("--samples-per-file", type=int, default=1000, help="flow 01 pairs per shard")
    parser.add_argument("--epochs", type=int, default=0, help="flow 02 epochs; 0 = flow 02's default")
    parser.add_argument("--train-args", default="", help="extra flow 02 flags, space separated")
    parser.add_argument("--out", default=str(RESULTS / "quality.json"))
    args = parser.parse_args()
    realdata = Path(args.realdata)
    rows, skipped, failed = [], {}, {}
    for label in args.rasters.split(","):
        file, legend, res = RASTERS[label]
        raster_args = []
        if file:
            if not (realdata / file).is_file():
                skipped[label] = f"{realdata / file} is absent"
                print(f"skip {label}: {skipped[label]}")
                continue
            raster_args = [f"--landcover={realdata / file}", f"--legend={legend.format(realdata=realdata)}"]
        try:
            rows += run_raster(args, label, raster_args, res)
        except SystemExit as exc:  # one raster failing must not lose the others' figures
            failed[label] = str(exc)[-2000:]
            print(f"FAILED {label}: {failed[label]}", flush=True)
    print_table(rows)
    for label in failed:
        print(f"{label}: FAILED (see above)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    document = {"machine": machine, "args": vars(args), "skipped": skipped, "failed": failed, "rows": rows}
    out.write_text(json.dumps(document, indent=1))
    print(f"wrote {out}")


def print_table(rows: list[dict]) -> None:
    """One line per raster, dimension and method; targets as a last column on the encoder's line."""
    head = f"{'raster':<11}{'D':>3}{'cells':>7}  {'method':<11}" + "".join(f"{m:>20}" for m in METRICS)
    print("\n" + head + "  targets met\n" + "-" * (len(head) + 13))
    for row in rows:
        for method in ("encoder", "random", "pca_onehot", "histogram"):
            values = row["scores"][method]
            cells = "".join(f"{'n/a' if values[m] is None else f'{values[m]:.4f}':>20}" for m in METRICS)
            met = ""
            if method == "encoder":
                met = f"  {sum(row['targets'].values())}/{len(row['targets'])}"
                missed = [k for k, ok in row["targets"].items() if not ok]
                met += f" (missed: {', '.join(missed)})" if missed else ""
            print(f"{row['raster']:<11}{row['dim']:>3}{row['n_cells']:>7}  {method:<11}{cells}{met}")
        for warning in row["warnings"]:
            print(f"{'':<11}   warning: {warning}")


if __name__ == "__main__":
    main()
