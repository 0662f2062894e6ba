"""Flow 01's units of work: plan, sample and check training-pair shards."""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path

from vectorgeo.artifacts import shard_key, train_manifest_key
from vectorgeo.errors import IncompleteOutputError, InvalidInputError
from vectorgeo.holdout import HOLDOUT
from vectorgeo.raster import open_raster
from vectorgeo.sampling import PairShard, sample_pairs, write_shard
from vectorgeo.sources import resolve_legend, resolve_rasters
from vectorgeo.transfer import Bucket

__all__ = ["plan_pair_shards", "make_pair_shards", "finish_pair_shards"]

logger = logging.getLogger(__name__)


def plan_pair_shards(bucket: Bucket, n_files: int, n_jobs: int, **settings) -> list[list[int]]:
    """Validate the sampling settings once, then split shards over workers.

    Shard ``i`` always gets seed ``[seed, i]``, so the split does not change
    the data. Workers that would get nothing are left out. Validation draws
    one pair, so bad settings fail here, once, not in every worker; it also
    makes sure the synthetic default exists before workers race to make it.

    Args:
        bucket: The pipeline bucket.
        n_files: Shards to write.
        n_jobs: Most workers to use.
        **settings: The keyword arguments of :func:`make_pair_shards`.

    Returns:
        One list of shard indices per worker.
    """
    if n_files < 1 or n_jobs < 1:
        raise InvalidInputError(f"n_files and n_jobs must be >= 1, got n_files={n_files}, n_jobs={n_jobs}")
    if settings["samples_per_file"] < 1:
        raise InvalidInputError(f"samples_per_file must be >= 1, got {settings['samples_per_file']}")
    bucket.check_writable()
    bucket.exists(shard_key(settings["train_set"], 0))  # a train_set that makes a bad key fails here, once
    sampling = {k: v for k, v in settings.items() if k not in ("train_set", "samples_per_file")}
    _sample_shard(bucket, 0, samples=1, **sampling)
    return [list(range(j, n_files, n_jobs)) for j in range(min(n_jobs, n_files))]


def _sample_shard(
    bucket: Bucket,
    index: int,
    *,
    samples: int,
    patch_px: int,
    pair_distance_m: float,
    max_uniform_fraction: float,
    landcover: str,
    legend: str,
    synthetic_seed: int,
    dem: str = "",
    seed: int = 0,
) -> PairShard:
    legend_obj = resolve_legend(bucket, legend)
    rasters = resolve_rasters(bucket, landcover, dem, with_dem=True, synthetic_seed=synthetic_seed)
    with contextlib.ExitStack() as stack:
        dataset = stack.enter_context(open_raster(rasters.landcover))
        dem_dataset = stack.enter_context(open_raster(rasters.dem)) if rasters.dem else None
        shard = sample_pairs(
            dataset,
            legend_obj,
            samples,
            patch_px=patch_px,
            pair_distance_m=pair_distance_m,
            max_uniform_fraction=max_uniform_fraction,
            seed=[seed, index],
            dem=dem_dataset,
            holdout=HOLDOUT,
        )
    shard.meta.update({"raster": rasters.source, "seed": seed, "shard": index})
    return shard


def make_pair_shards(
    bucket: Bucket, shard_indices: list[int], *, train_set: str, samples_per_file: int, **settings
) -> dict:
    """Sample anchor/neighbour pairs into ``train/{train_set}/part-{i}.npz``.

    Args:
        bucket: The pipeline bucket.
        shard_indices: Shards this worker writes.
        train_set: Name of the shard set.
        samples_per_file: Pairs per shard.
        **settings: ``patch_px``, ``pair_distance_m``, ``max_uniform_fraction``,
            ``landcover``, ``dem``, ``legend``, ``synthetic_seed``, ``seed``.

    Returns:
        Summary: pairs per key written, pixel size, raster source.
    """
    written = {}
    meta = {}
    with tempfile.TemporaryDirectory(prefix="vg-pairs-") as tmp:
        for index in shard_indices:
            shard = _sample_shard(bucket, index, samples=samples_per_file, **settings)
            key = shard_key(train_set, index)
            bucket.upload(write_shard(shard, Path(tmp) / f"part-{index:05d}.npz"), key)
            written[key] = len(shard)
            meta = shard.meta
            logger.info("wrote %s (%d pairs)", bucket.uri(key), len(shard))
    return {"shards": written, "pixel_size_m": meta.get("pixel_size_m"), "raster": meta.get("raster")}


def finish_pair_shards(bucket: Bucket, results: list[dict], *, n_files: int, train_set: str, **settings) -> dict:
    """Check every shard arrived and write ``train/{train_set}/manifest.json``.

    Raises:
        InvalidInputError: when shards are missing (a worker lost its output).
    """
    shards = {key: n for result in results for key, n in result["shards"].items()}
    expected = [shard_key(train_set, i) for i in range(n_files)]
    missing = [k for k in expected if k not in shards or not bucket.exists(k)]
    if missing:
        raise IncompleteOutputError(
            f"{len(missing)} of {n_files} training shards are missing from the bucket: {missing[:5]}; rerun flow 01"
        )
    manifest = {
        "train_set": train_set,
        "n_files": n_files,
        "n_pairs": sum(shards.values()),
        "shards": dict(sorted(shards.items())),
        "raster": results[0]["raster"],
        "pixel_size_m": results[0]["pixel_size_m"],
        **settings,
    }
    bucket.write_json(train_manifest_key(train_set), manifest)
    return manifest
