"""Training objectives side by side: held-out quality per candidate, same pairs, same budget.

Samples training pairs off held-out ground and held-out cells on it (the same
rule as flows 01/02/05), trains one encoder per candidate, and scores each on
the held-out cells against the baselines (random, PCA of the one-hot patch,
class histogram). This is how the default objective was picked
(``docs/encoder.md``). Prints one table and writes JSON.

    .venv/bin/python benchmarks/objectives.py --raster synthetic --candidates triplet,infonce
    .venv/bin/python benchmarks/objectives.py --raster ../shared/realdata/nlcd2011_zion_UT.tif \\
        --legend examples/legends/nlcd.csv --candidates infonce,infonce+skip

A candidate is ``name[+option...]``, built up from the plain objective
(``triplet`` or ``infonce``: no neighbour positive, no composition task, no
skip), whatever today's defaults are. Options: ``skip`` (composition skip),
``comp[W]`` (composition task, weight W, default 1), ``nb``/``nb1``
(neighbour positives, weight 0.5/1), ``vic`` (VICReg term, 0.1),
``t05``/``t2``/``t3``/``t5`` (temperature 0.05/0.2/0.3/0.5), ``b128``/``b512``
(batch), ``lrX`` (learning rate X), ``fN`` (filters), ``dN`` (dimensions).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from vectorgeo.evaluate import evaluate_embeddings
from vectorgeo.holdout import HOLDOUT, latlng_to_cells, patch_held_out
from vectorgeo.land import is_land
from vectorgeo.legends import get_legend
from vectorgeo.raster import extract_patches, open_raster, pixel_sides_m, raster_bounds_latlng
from vectorgeo.sampling import random_points_in_bounds, sample_pairs

RESULTS = Path(__file__).resolve().parent / "results"


def held_out_cells(dataset, legend, patch_px: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Up to ``n`` random valid patches lying wholly on held-out ground: ``(classes, lat, lng)``."""
    rng = np.random.default_rng([seed, 99])
    half_width_m = patch_px * max(pixel_sides_m(dataset)) / 2
    lat, lng = random_points_in_bounds(raster_bounds_latlng(dataset), 40 * n, rng)
    keep = is_land(lat, lng, dataset, legend)
    lat, lng = lat[keep], lng[keep]
    keep = patch_held_out(lat, lng, half_width_m, **HOLDOUT)[0]
    lat, lng = lat[keep][: n * 2], lng[keep][: n * 2]
    patches = extract_patches(dataset, lat, lng, legend, patch_px=patch_px)
    ok = np.flatnonzero(patches.valid)[:n]
    return patches.classes[ok], lat[ok], lng[ok]


def candidate(spec: str, epochs: int, seed: int):
    """``(EncoderConfig overrides, TrainingParams)`` of a candidate spec."""
    from vectorgeo.training import TrainingParams

    name, *opts = spec.split("+")
    kw: dict = {"objective": name, "epochs": epochs, "seed": seed, "neighbor_weight": 0.0, "composition_weight": 0.0}
    enc: dict = {}
    for opt in opts:
        if opt == "skip":
            enc["composition_skip"] = True
        elif opt == "nb":
            kw["neighbor_weight"] = 0.5
        elif opt == "nb1":
            kw["neighbor_weight"] = 1.0
        elif opt.startswith("comp"):
            kw["composition_weight"] = float(opt[4:] or 1.0)
        elif opt == "vic":
            kw["vicreg_weight"] = 0.1
        elif opt.startswith("t"):
            kw["temperature"] = {"t05": 0.05, "t2": 0.2, "t3": 0.3, "t5": 0.5}[opt]
        elif opt.startswith("b"):
            kw["batch_size"] = int(opt[1:])
        elif opt.startswith("lr"):
            kw["learning_rate"] = float(opt[2:])
        elif opt.startswith("f"):
            enc["num_filters"] = int(opt[1:])
        elif opt.startswith("d"):
            enc["embed_dim"] = int(opt[1:])
        else:
            raise SystemExit(f"unknown candidate option {opt!r} in {spec!r}")
    if name == "triplet":
        kw.setdefault("batch_size", 128)
        kw.setdefault("learning_rate", 1e-3)
    return enc, TrainingParams(**kw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--raster", default="synthetic", help="'synthetic' or a land-cover GeoTIFF")
    parser.add_argument("--legend", default="lc100", help="legend name or file")
    parser.add_argument("--patch-px", type=int, default=32)
    parser.add_argument("--pairs", type=int, default=12000)
    parser.add_argument("--eval-cells", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--embed-dim", type=int, default=16)
    parser.add_argument("--candidates", default="triplet,infonce")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="", help="JSON path (default benchmarks/results/objectives_{raster}.json)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from vectorgeo.encoder import EncoderConfig, embed
    from vectorgeo.training import train_encoder

    with tempfile.TemporaryDirectory() as tmp:
        if args.raster == "synthetic":
            from vectorgeo.synthetic import write_synthetic_rasters

            raster, _ = write_synthetic_rasters(Path(tmp) / "lc.tif", Path(tmp) / "dem.tif", seed=0)
            label = "synthetic"
        else:
            raster, label = Path(args.raster), Path(args.raster).stem
        legend = get_legend(args.legend)
        with open_raster(raster) as ds:
            t0 = time.perf_counter()
            shard = sample_pairs(ds, legend, args.pairs, patch_px=args.patch_px, seed=args.seed, holdout=HOLDOUT)
            cells, lat, lng = held_out_cells(ds, legend, args.patch_px, args.eval_cells, args.seed)
            half_width_m = args.patch_px * max(pixel_sides_m(ds)) / 2
            logging.info(
                "sampled %d pairs, %d held-out cells in %.0f s", len(shard), len(cells), time.perf_counter() - t0
            )
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(shard))
    n_val = max(1, len(order) // 10)
    arrays = {"anchor": shard.anchor, "neighbor": shard.neighbor}
    val = {k: v[order[:n_val]] for k, v in arrays.items()}
    train = {k: v[order[n_val:]] for k, v in arrays.items()}
    groups = latlng_to_cells(lat, lng, HOLDOUT["parent_res"])
    rows = {}
    for spec in args.candidates.split(","):
        enc, params = candidate(spec, args.epochs, args.seed)
        config = EncoderConfig(
            **{"n_classes": legend.n_classes, "patch_px": args.patch_px, "embed_dim": args.embed_dim, **enc}
        )
        encoder, history = train_encoder(train, val, config, params)
        vectors = embed(encoder, cells)
        report = evaluate_embeddings(
            vectors,
            cells,
            legend.n_classes,
            k=10,
            seed=args.seed,
            groups=groups,
            lat=lat,
            lng=lng,
            half_width_m=half_width_m,
        )
        rows[spec] = {
            "scores": report["methods"],
            "seconds": round(history["seconds"], 1),
            "pairs_per_s": round(history["train_pairs_per_s"], 1),
            "epochs_run": history["epochs_run"],
            "diagnostics_init": {k: v for k, v in history["diagnostics_init"].items() if k != "embedding_std"},
            "diagnostics": {k: v for k, v in history["diagnostics"].items() if k != "embedding_std"},
            "loss": history["loss"],
            "val_loss": history["val_loss"],
        }
        logging.info("%s: %s", spec, report["methods"]["encoder"])
    metrics = ("retrieval_jsd", "r2_class_fractions", "r2_edge_density", "r2_shannon")
    base = next(iter(rows.values()))["scores"]
    print(f"\n{label}: {len(train['anchor'])} train pairs, {len(cells)} held-out cells, D={args.embed_dim}")
    print(f"{'method':<28}" + "".join(f"{m:>20}" for m in metrics) + f"{'train s':>9}{'pairs/s':>9}")
    for name in ("random", "pca_onehot", "histogram"):
        print(
            f"{name:<28}"
            + "".join(f"{base[name][m] if base[name][m] is not None else float('nan'):>20.4f}" for m in metrics)
        )
    for spec, row in rows.items():
        enc = row["scores"]["encoder"]
        print(
            f"{spec:<28}"
            + "".join(f"{enc[m] if enc[m] is not None else float('nan'):>20.4f}" for m in metrics)
            + f"{row['seconds']:>9.0f}{row['pairs_per_s']:>9.0f}"
        )
    out = Path(args.out) if args.out else RESULTS / f"objectives_{label}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"raster": label, "args": vars(args), "candidates": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
