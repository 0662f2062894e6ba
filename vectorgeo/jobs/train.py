"""Flow 02's unit of work: train the encoder on the bucket's training shards."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vectorgeo.artifacts import model_keys, model_name, read_train_manifest
from vectorgeo.encoder import ENCODER_DEFAULTS
from vectorgeo.errors import InvalidInputError
from vectorgeo.holdout import HOLDOUT, patch_held_out, patch_on_validation
from vectorgeo.legends import Legend
from vectorgeo.sampling import dominant_class, read_shard

__all__ = [
    "TrainingData",
    "load_training_data",
    "train_model",
]

logger = logging.getLogger(__name__)


def _load_pairs(bucket, train_set: str, n_train_files: int) -> tuple[dict[str, np.ndarray], dict]:
    manifest = read_train_manifest(bucket, train_set)
    keys = sorted(manifest["shards"])
    if n_train_files > 0:
        keys = keys[:n_train_files]
    shards = [read_shard(bucket.download(k)) for k in keys]
    names = ["anchor", "neighbor", "anchor_latlng", "neighbor_latlng"]
    if all(s.anchor_dem is not None for s in shards):
        names += ["anchor_dem", "neighbor_dem"]
    arrays = {n: np.concatenate([getattr(s, n) for s in shards]) for n in names}
    return arrays, {**shards[0].meta, "shards": keys}


@dataclass
class TrainingData:
    """Pairs split for training, with what a sidecar needs to describe them.

    Attributes:
        train: ``anchor``, ``neighbor`` (+ DEM) arrays to train on.
        val: Pairs for early stopping, drawn at random from the same ground.
        meta: The shards' sampling metadata (legend, patch size, pixel size, raster) and ``shards``.
        half_width_m: Half a patch's ground side, metres.
        n_dropped: Pairs left out because they touch held-out (or, for tuning, validation) ground.
    """

    train: dict[str, np.ndarray]
    val: dict[str, np.ndarray]
    meta: dict
    half_width_m: float
    n_dropped: int


def load_training_data(
    bucket,
    *,
    train_set: str,
    n_train_files: int = 0,
    use_dem: bool = False,
    val_fraction: float = 0.1,
    exclude_validation_ground: bool = False,
    seed: int = 0,
) -> TrainingData:
    """Read the shards, drop pairs touching held-out ground, split off validation pairs.

    Args:
        bucket: The pipeline bucket.
        train_set: Shard set under ``train/``.
        n_train_files: Shards to read; 0 = all.
        use_dem: Keep the DEM arrays (the shards must carry them).
        val_fraction: Share of the pairs kept for early stopping.
        exclude_validation_ground: Also drop pairs touching validation ground
            (:data:`vectorgeo.holdout.VALIDATION`), as tuning trials must.
        seed: Seed of the validation split.

    Raises:
        InvalidInputError: no shards, no DEM with ``use_dem``, fewer than 4 usable pairs.
    """
    arrays, meta = _load_pairs(bucket, train_set, n_train_files)
    if use_dem and "anchor_dem" not in arrays:
        raise InvalidInputError(
            f"training set {train_set!r} has no DEM patches; "
            "rerun flow 01 with a DEM (--dem) or train without --use_dem"
        )
    half_width_m = int(meta["patch_px"]) * max(meta.get("pixel_sides_m") or [meta["pixel_size_m"]]) / 2
    ends = [arrays["anchor_latlng"].T, arrays["neighbor_latlng"].T]
    dropped = np.zeros(len(arrays["anchor"]), dtype=bool)
    for lat, lng in ends:  # shards sampled before flow 01 excluded held-out ground still carry such pairs
        dropped |= patch_held_out(lat, lng, half_width_m, **HOLDOUT)[1]
        if exclude_validation_ground:
            dropped |= patch_on_validation(lat, lng, half_width_m)[1]
    keep = np.flatnonzero(~dropped)
    if keep.size < 4:
        raise InvalidInputError(
            f"only {keep.size} training pairs lie off held-out{' and validation' if exclude_validation_ground else ''} "
            "ground; sample more pairs (flow 01 --samples_per_file) or a larger area"
        )
    if keep.size < 1000:
        logger.warning("training on only %d pairs: fine for a smoke test, too few for useful embeddings", keep.size)
    keep = np.random.default_rng(seed).permutation(keep)
    n_val = max(1, round(val_fraction * keep.size))
    wanted = [
        k for k in ("anchor", "neighbor", "anchor_dem", "neighbor_dem") if k in arrays and (use_dem or "dem" not in k)
    ]
    return TrainingData(
        train={k: arrays[k][keep[n_val:]] for k in wanted},
        val={k: arrays[k][keep[:n_val]] for k in wanted},
        meta=meta,
        half_width_m=half_width_m,
        n_dropped=int(dropped.sum()),
    )


def train_model(
    bucket,
    *,
    train_set: str,
    n_train_files: int,
    model_filename: str,
    encoder: dict | None = None,
    training=None,
    val_fraction: float = 0.1,
    tuning: dict | None = None,
) -> dict:
    """Train on ``train/{train_set}`` and write ``models/{name}.keras`` + ``.json`` + ``.png``.

    Pairs touching held-out ground (:data:`vectorgeo.holdout.HOLDOUT`) are dropped; a random
    ``val_fraction`` of the rest drives early stopping.

    Args:
        bucket: The pipeline bucket.
        train_set: Shard set under ``train/``.
        n_train_files: Shards to read; 0 = all.
        model_filename: ``{name}.keras`` under ``models/``.
        encoder: Architecture settings (keys of :data:`~vectorgeo.encoder.ENCODER_DEFAULTS`); missing ones take
            the defaults.
        training: A :class:`vectorgeo.training.TrainingParams` (default: its defaults).
        val_fraction: Share of pairs kept for early stopping.
        tuning: The tuning result these settings came from, recorded in the sidecar.

    Returns:
        Summary: keys written, pair counts, best epoch and losses, speed.

    Raises:
        InvalidInputError: no shards, no DEM in the shards with ``use_dem``, too few pairs.
    """
    from vectorgeo.diagnostics import diagnostics_figure
    from vectorgeo.encoder import EncoderConfig, embed
    from vectorgeo.model_files import save_model
    from vectorgeo.training import TrainingParams, dem_stats, train_encoder

    training = training or TrainingParams()
    encoder_settings = {**ENCODER_DEFAULTS, **(encoder or {})}
    unknown = set(encoder_settings) - set(ENCODER_DEFAULTS)
    if unknown:
        raise InvalidInputError(f"unknown encoder settings {sorted(unknown)}; known: {sorted(ENCODER_DEFAULTS)}")
    keys = model_keys(model_filename)
    bucket.check_writable()
    data = load_training_data(
        bucket,
        train_set=train_set,
        n_train_files=n_train_files,
        use_dem=encoder_settings["use_dem"],
        val_fraction=val_fraction,
        seed=training.seed,
    )
    train, val, meta = data.train, data.val, data.meta
    legend = Legend.from_dict(meta["legend"])
    use_dem = encoder_settings["use_dem"]
    dem_mean, dem_std = dem_stats([train["anchor_dem"], train["neighbor_dem"]]) if use_dem else (0.0, 1.0)
    config = EncoderConfig(
        n_classes=legend.n_classes,
        patch_px=int(meta["patch_px"]),
        dem_mean_m=dem_mean,
        dem_std_m=dem_std,
        **encoder_settings,
    )
    with tempfile.TemporaryDirectory(prefix="vg-train-") as tmp:
        tmp = Path(tmp)
        model, history = train_encoder(train, val, config, training, checkpoint_path=tmp / "checkpoint.keras")
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
            "tuning": tuning,
        }
        model_path, sidecar_path = save_model(model, tmp / Path(keys["model"]).name, sidecar)
        val_vectors = embed(model, val["anchor"], val.get("anchor_dem"))
        dominant = dominant_class(val["anchor"])
        figure = diagnostics_figure(history, val_vectors, dominant, list(legend.names), tmp / "diagnostics.png")
        bucket.upload(figure, keys["figure"])
        bucket.delete(keys["sidecar"])  # a retrain never leaves the new model beside the old sidecar
        bucket.upload(model_path, keys["model"])
        bucket.upload(sidecar_path, keys["sidecar"])  # last: a sidecar means the model beside it is complete
    return {
        **keys,
        "objective": training.objective,
        "n_train": int(train["anchor"].shape[0]),
        "n_val": int(val["anchor"].shape[0]),
        "n_dropped_holdout": data.n_dropped,
        "epochs_run": history["epochs_run"],
        "best_epoch": history["best_epoch"],
        "best_val_loss": round(history["best_val_loss"], 5),
        "first_val_loss": round(history["val_loss"][0], 5),
        "train_pairs_per_s": round(history["train_pairs_per_s"], 1),
        "seconds": round(history["seconds"], 1),
        "effective_dims": history["diagnostics"]["effective_dims"],
    }
