"""Flow 02's unit of work: train the encoder on the bucket's training shards."""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path

import numpy as np

from vectorgeo.errors import BucketKeyNotFoundError, InvalidInputError, NotFoundError
from vectorgeo.holdout import patch_held_out
from vectorgeo.legends import Legend
from vectorgeo.sampling import dominant_class, read_shard

__all__ = ["HOLDOUT", "model_name", "model_keys", "read_sidecar", "train_model"]

logger = logging.getLogger(__name__)

HOLDOUT = {"fraction": 0.2, "parent_res": 5, "seed": 0}
"""Held-out ground: H3 res-5 parents whose hash falls in the lowest 20 %.
Training drops pairs whose patches touch it; evaluation scores only cells
whose patches lie wholly on it (see :func:`vectorgeo.holdout.patch_held_out`)."""


def model_name(model_filename: str) -> str:
    """``"test.keras"`` -> ``"test"``; refuses names that are not plain file names."""
    name = model_filename[: -len(".keras")] if model_filename.endswith(".keras") else model_filename
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise InvalidInputError(
            f"model_filename {model_filename!r} must be a plain file name like 'demo.keras' "
            "(letters, digits, '_', '-', '.')"
        )
    return name


def model_keys(model_filename: str) -> dict[str, str]:
    """Bucket keys of a model, its sidecar and its diagnostics figure."""
    name = model_name(model_filename)
    return {"model": f"models/{name}.keras", "sidecar": f"models/{name}.json", "figure": f"models/{name}.png"}


def read_sidecar(bucket, model_filename: str) -> dict:
    """A model's JSON sidecar from the bucket.

    Raises:
        NotFoundError: the model is not in the bucket.
    """
    keys = model_keys(model_filename)
    try:
        return bucket.read_json(keys["sidecar"])
    except BucketKeyNotFoundError as exc:
        raise NotFoundError(
            f"model {keys['model']!r} (with its sidecar {keys['sidecar']!r}) is not in bucket {bucket.url!r}; "
            "train it with flows/02_train_flow.py or check --model_filename"
        ) from exc


def _load_pairs(bucket, train_set: str, n_train_files: int) -> tuple[dict[str, np.ndarray], dict]:
    try:
        manifest = bucket.read_json(f"train/{train_set}/manifest.json")
    except BucketKeyNotFoundError as exc:
        raise InvalidInputError(
            f"no training set {train_set!r} in bucket {bucket.url!r}; run flows/01_preprocess_flow.py first"
        ) from exc
    keys = sorted(manifest["shards"])
    if n_train_files > 0:
        keys = keys[:n_train_files]
    shards = [read_shard(bucket.download(k)) for k in keys]
    names = ["anchor", "neighbor", "anchor_latlng", "neighbor_latlng"]
    if all(s.anchor_dem is not None for s in shards):
        names += ["anchor_dem", "neighbor_dem"]
    arrays = {n: np.concatenate([getattr(s, n) for s in shards]) for n in names}
    return arrays, {**shards[0].meta, "shards": keys}


def train_model(
    bucket,
    *,
    train_set: str,
    n_train_files: int,
    model_filename: str,
    embed_dim: int,
    batch_size: int,
    num_filters: int,
    n_conv_blocks: int,
    use_dem: bool,
    use_se: bool = True,
    epochs: int = 10,
    margin: float = 0.2,
    learning_rate: float = 1e-3,
    patience: int = 3,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> dict:
    """Train on ``train/{train_set}`` and write ``models/{name}.keras`` + ``.json`` + ``.png``.

    Pairs touching held-out ground (:data:`HOLDOUT`) are dropped; a random
    ``val_fraction`` of the rest drives early stopping.

    Returns:
        Summary: keys written, pair counts, best epoch and losses.

    Raises:
        InvalidInputError: no shards, no DEM in the shards with ``use_dem``, too few pairs.
    """
    from vectorgeo.model import EncoderConfig, dem_stats, diagnostics_figure, embed, save_model, train_encoder

    keys = model_keys(model_filename)
    bucket.check_writable()
    arrays, meta = _load_pairs(bucket, train_set, n_train_files)
    if use_dem and "anchor_dem" not in arrays:
        raise InvalidInputError(
            f"training set {train_set!r} has no DEM patches; "
            "rerun flow 01 with a DEM (--dem) or train without --use_dem"
        )
    half_width_m = int(meta["patch_px"]) * max(meta.get("pixel_sides_m") or [meta["pixel_size_m"]]) / 2
    touches_holdout = (
        patch_held_out(*arrays["anchor_latlng"].T, half_width_m, **HOLDOUT)[1]
        | patch_held_out(*arrays["neighbor_latlng"].T, half_width_m, **HOLDOUT)[1]
    )
    keep = np.flatnonzero(~touches_holdout)
    if keep.size < 4:
        raise InvalidInputError(f"only {keep.size} training pairs outside held-out ground; sample more (flow 01)")
    if keep.size < 1000:
        logger.warning("training on only %d pairs: fine for a smoke test, too few for useful embeddings", keep.size)
    rng = np.random.default_rng(seed)
    keep = rng.permutation(keep)
    n_val = max(1, round(val_fraction * keep.size))
    wanted = [
        k for k in ("anchor", "neighbor", "anchor_dem", "neighbor_dem") if k in arrays and (use_dem or "dem" not in k)
    ]
    val = {k: arrays[k][keep[:n_val]] for k in wanted}
    train = {k: arrays[k][keep[n_val:]] for k in wanted}
    legend = Legend.from_dict(meta["legend"])
    dem_mean, dem_std = dem_stats([train["anchor_dem"], train["neighbor_dem"]]) if use_dem else (0.0, 1.0)
    config = EncoderConfig(
        n_classes=legend.n_classes,
        patch_px=int(meta["patch_px"]),
        embed_dim=embed_dim,
        num_filters=num_filters,
        n_conv_blocks=n_conv_blocks,
        use_se=use_se,
        use_dem=use_dem,
        dem_mean_m=dem_mean,
        dem_std_m=dem_std,
    )
    with tempfile.TemporaryDirectory(prefix="vg-train-") as tmp:
        tmp = Path(tmp)
        encoder, history = train_encoder(
            train,
            val,
            config,
            epochs=epochs,
            batch_size=batch_size,
            margin=margin,
            learning_rate=learning_rate,
            patience=patience,
            seed=seed,
            checkpoint_path=tmp / "checkpoint.keras",
        )
        sidecar = {
            "name": model_name(model_filename),
            "legend": meta["legend"],
            "pixel_size_m": meta["pixel_size_m"],
            "pixel_sides_m": meta.get("pixel_sides_m"),
            "raster": meta.get("raster"),
            "train_set": train_set,
            "train_shards": meta["shards"],
            "holdout": HOLDOUT,
            "training": history,
        }
        model_path, sidecar_path = save_model(encoder, tmp / Path(keys["model"]).name, sidecar)
        val_vectors = embed(encoder, val["anchor"], val.get("anchor_dem"))
        dominant = dominant_class(val["anchor"])
        figure = diagnostics_figure(history, val_vectors, dominant, list(legend.names), tmp / "diagnostics.png")
        bucket.upload(figure, keys["figure"])
        bucket.delete(keys["sidecar"])  # a retrain never leaves the new model beside the old sidecar
        bucket.upload(model_path, keys["model"])
        bucket.upload(sidecar_path, keys["sidecar"])  # last: a sidecar means the model beside it is complete
    return {
        **keys,
        "n_train": int(train["anchor"].shape[0]),
        "n_val": int(n_val),
        "n_dropped_holdout": int(touches_holdout.sum()),
        "epochs_run": history["epochs_run"],
        "best_epoch": history["best_epoch"],
        "best_val_loss": round(history["best_val_loss"], 5),
        "first_val_loss": round(history["val_loss"][0], 5),
        "train_pairs_per_s": round(history["train_pairs_per_s"], 1),
        "seconds": round(history["seconds"], 1),
    }
