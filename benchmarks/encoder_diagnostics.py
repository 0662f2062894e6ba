"""Why training does (not) move: distances, active triplets, gradient norms and spread, step by step.

Trains the encoder with a plain TensorFlow loop (no Keras ``fit``) on pairs
sampled from a raster, once per objective, and every few steps records on a
fixed probe batch: the mean squared distance between anchor and neighbour,
between two views of the same patch and between different patches; the share
of semi-hard triplets with non-zero loss; the global gradient norm; the
per-dimension spread and the effective number of dimensions. Findings are in
``docs/encoder.md``. Prints one table per objective and writes JSON.

    .venv/bin/python benchmarks/encoder_diagnostics.py --raster synthetic --steps 300
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from vectorgeo.holdout import HOLDOUT
from vectorgeo.legends import get_legend
from vectorgeo.raster import open_raster
from vectorgeo.sampling import sample_pairs

RESULTS = Path(__file__).resolve().parent / "results"


def probe_stats(encoder, probe: dict, margin: float) -> dict:
    """Distances and spread on a fixed probe batch (no augmentation but a fixed second view)."""
    from vectorgeo.keras_env import import_keras
    from vectorgeo.losses import semihard_terms
    from vectorgeo.training import participation_ratio

    ops = import_keras().ops
    a = np.asarray(encoder({"classes": probe["anchor"]}, training=False))
    v = np.asarray(encoder({"classes": probe["anchor_view"]}, training=False))
    n = np.asarray(encoder({"classes": probe["neighbor"]}, training=False))
    half = len(a) // 2
    terms = semihard_terms(ops, np.stack([a, n], 1), margin)
    std = a.std(axis=0)
    return {
        "d_neighbor": float(np.square(a - n).sum(1).mean()),
        "d_view": float(np.square(a - v).sum(1).mean()),
        "d_other": float((2 - 2 * (a[:half] @ a[half:].T)).mean()),
        "active_triplets": float((ops.convert_to_numpy(terms["loss"]) > 0).mean()),
        "triplet_loss": float(ops.convert_to_numpy(terms["loss"]).mean()),
        "mean_std": float(std.mean()),
        "min_std": float(std.min()),
        "effective_dims": participation_ratio(a),
    }


def run(objective: str, arrays: dict, probe: dict, n_classes: int, steps: int, every: int, seed: int) -> list[dict]:
    """One training run with a GradientTape loop; returns a row per recorded step."""
    from vectorgeo.keras_env import import_keras

    keras = import_keras()
    import tensorflow as tf

    from vectorgeo.encoder import EncoderConfig, build_encoder
    from vectorgeo.losses import info_nce_terms, semihard_terms
    from vectorgeo.training import TrainingParams
    from vectorgeo.views import make_views

    params = TrainingParams(objective=objective, batch_size=128 if objective == "triplet" else 256)
    lr = 1e-3 if objective == "triplet" else params.learning_rate
    keras.utils.set_random_seed(seed)
    encoder = build_encoder(EncoderConfig(n_classes=n_classes, patch_px=arrays["anchor"].shape[1]))
    optimizer = keras.optimizers.Adam(lr)
    views = params.views
    rng = np.random.default_rng(seed)
    rows = []
    for step in range(steps + 1):
        take = np.sort(rng.choice(len(arrays["anchor"]), params.batch_size, replace=False))
        batch = make_views(arrays, take, views, rng, dem=False)
        with tf.GradientTape() as tape:
            emb = tf.stack([encoder({"classes": batch[v]}, training=True) for v in views], axis=1)
            if objective == "triplet":
                loss = tf.reduce_mean(semihard_terms(keras.ops, emb, params.margin)["loss"])
            else:
                loss = tf.reduce_mean(info_nce_terms(keras.ops, emb, params.temperature, params.view_weights)["loss"])
        grads = tape.gradient(loss, encoder.trainable_variables)
        if step % every == 0:
            row = {"step": step, "loss": float(loss), "grad_norm": float(tf.linalg.global_norm(grads))}
            row.update(probe_stats(encoder, probe, params.margin))
            rows.append(row)
            logging.info("%s %s", objective, {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
        optimizer.apply_gradients(zip(grads, encoder.trainable_variables, strict=True))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--raster", default="synthetic")
    parser.add_argument("--legend", default="lc100")
    parser.add_argument("--pairs", type=int, default=6000)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--objectives", default="triplet,infonce")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from vectorgeo.views import make_views

    legend = get_legend(args.legend)
    with tempfile.TemporaryDirectory() as tmp:
        if args.raster == "synthetic":
            from vectorgeo.synthetic import write_synthetic_rasters

            raster, _ = write_synthetic_rasters(Path(tmp) / "lc.tif", Path(tmp) / "dem.tif", seed=0)
        else:
            raster = Path(args.raster)
        with open_raster(raster) as ds:
            shard = sample_pairs(ds, legend, args.pairs, seed=args.seed, holdout=HOLDOUT)
    arrays = {"anchor": shard.anchor, "neighbor": shard.neighbor}
    probe_take = np.arange(512)
    probe = make_views(arrays, probe_take, ("anchor", "anchor_view", "neighbor"), None, dem=False)
    train = {k: v[512:] for k, v in arrays.items()}
    results = {}
    for objective in args.objectives.split(","):
        results[objective] = run(objective, train, probe, legend.n_classes, args.steps, args.every, args.seed)
    cols = [
        "step",
        "loss",
        "grad_norm",
        "d_neighbor",
        "d_view",
        "d_other",
        "active_triplets",
        "mean_std",
        "effective_dims",
    ]
    for objective, rows in results.items():
        print(f"\n{objective} ({Path(str(raster)).name if args.raster != 'synthetic' else 'synthetic'})")
        print("".join(f"{c:>16}" for c in cols))
        for row in rows:
            print("".join(f"{row[c]:>16.4f}" if isinstance(row[c], float) else f"{row[c]:>16}" for c in cols))
    label = "synthetic" if args.raster == "synthetic" else Path(args.raster).stem
    out = RESULTS / f"encoder_diagnostics_{label}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "runs": results}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
