"""Anchor/neighbour patch pairs for triplet-loss training.

An anchor is a random point on land; its neighbour, also on land, lies at a
random bearing, at a great-circle distance between one patch width and
``pair_distance_m``. Pairs whose patches share pixels, touch nodata or the
raster edge, or are near-uniform (one class covering almost the whole patch:
nothing to learn), are dropped and redrawn; so are pairs touching held-out
ground when a hold-out rule is given, so no draw is wasted on pairs that
training would drop.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vectorgeo.errors import InvalidInputError
from vectorgeo.geodesy import destination_points
from vectorgeo.holdout import patch_held_out
from vectorgeo.land import is_land
from vectorgeo.legends import Legend
from vectorgeo.raster import dem_patches, extract_patches, latlng_to_pixels, pixel_sides_m, raster_bounds_latlng

if TYPE_CHECKING:
    from rasterio.io import DatasetReader

__all__ = [
    "PairShard",
    "dominant_class_fraction",
    "dominant_class",
    "random_points_in_bounds",
    "read_shard",
    "sample_pairs",
    "write_shard",
]

logger = logging.getLogger(__name__)


@dataclass
class PairShard:
    """One training shard: paired uint8 class-index patches and their centres.

    Attributes:
        anchor: uint8 ``(N, P, P)`` class indices.
        neighbor: uint8 ``(N, P, P)`` class indices.
        anchor_latlng: float64 ``(N, 2)``, degrees.
        neighbor_latlng: float64 ``(N, 2)``, degrees.
        meta: JSON-ready dict: legend, patch size, pixel size, sampling
            parameters; everything a reader needs to interpret the arrays.
        anchor_dem: float16 ``(N, P, P)`` elevation in metres on the anchor
            patch's pixels, or None when no DEM was given.
        neighbor_dem: the same for the neighbour patch.
    """

    anchor: np.ndarray
    neighbor: np.ndarray
    anchor_latlng: np.ndarray
    neighbor_latlng: np.ndarray
    meta: dict
    anchor_dem: np.ndarray | None = None
    neighbor_dem: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.anchor.shape[0])


def random_points_in_bounds(
    bounds: tuple[float, float, float, float], n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Points uniform by area on the sphere inside ``(west, south, east, north)``.

    Returns:
        ``(lat, lng)`` in degrees.
    """
    west, south, east, north = bounds
    if east < west:
        east += 360.0
    z = rng.uniform(np.sin(np.radians(south)), np.sin(np.radians(north)), n)
    lat = np.degrees(np.arcsin(z))
    lng = (rng.uniform(west, east, n) + 180.0) % 360.0 - 180.0
    return lat, lng


def _patches_overlap(
    dataset: DatasetReader,
    a_lat: np.ndarray,
    a_lng: np.ndarray,
    n_lat: np.ndarray,
    n_lng: np.ndarray,
    patch_px: int,
) -> np.ndarray:
    """True where two patches share pixels in the raster's own grid (the distance alone cannot tell)."""
    a_row, a_col = latlng_to_pixels(dataset, a_lat, a_lng)
    n_row, n_col = latlng_to_pixels(dataset, n_lat, n_lng)
    d_row = np.abs(np.floor(a_row) - np.floor(n_row))
    d_col = np.abs(np.floor(a_col) - np.floor(n_col))
    return (d_row < patch_px) & (d_col < patch_px)


def dominant_class_fraction(patches: np.ndarray) -> np.ndarray:
    """Share of each patch covered by its most common class.

    Args:
        patches: uint8 ``(N, H, W)`` class indices.

    Returns:
        float64 ``(N,)`` in (0, 1].
    """
    if patches.shape[0] == 0:
        return np.empty(0)
    return _class_counts(patches).max(axis=1) / patches[0].size


def dominant_class(patches: np.ndarray) -> np.ndarray:
    """Most common class index of each patch (ties: the lowest index).

    Args:
        patches: uint8 ``(N, H, W)`` class indices.

    Returns:
        int64 ``(N,)``.
    """
    return _class_counts(patches).argmax(axis=1)


def _class_counts(patches: np.ndarray) -> np.ndarray:
    """Pixels of each of the 256 uint8 values per patch, ``(N, 256)``, by one bincount."""
    n = patches.shape[0]
    flat = patches.reshape(n, -1).astype(np.int64)
    return np.bincount((np.arange(n)[:, None] * 256 + flat).ravel(), minlength=n * 256).reshape(n, 256)


def sample_pairs(
    dataset: DatasetReader,
    legend: Legend,
    n_pairs: int,
    *,
    patch_px: int = 32,
    pair_distance_m: float | None = None,
    max_uniform_fraction: float = 0.95,
    seed: int | list[int] | np.random.Generator = 0,
    max_rounds: int = 50,
    dem: DatasetReader | None = None,
    holdout: dict | None = None,
) -> PairShard:
    """Draw ``n_pairs`` valid anchor/neighbour patch pairs from a raster.

    Args:
        dataset: Open land-cover raster, any CRS.
        legend: Its legend.
        n_pairs: Pairs wanted.
        patch_px: Patch side, pixels of this raster.
        pair_distance_m: Largest anchor-neighbour distance, metres; the
            smallest is one patch width (its longer ground side), and pairs
            whose patches share pixels are redrawn. None or 0 = two patch
            widths, so the default follows the raster's pixel size (a fixed
            5 km was shorter than one patch on 300 m rasters).
        max_uniform_fraction: Drop a patch whose most common class covers
            more than this share of it (1.0 keeps everything).
        seed: Seed, seed list (e.g. ``[run_seed, shard]``) or generator;
            same seed, same pairs.
        max_rounds: Give up after this many redraw rounds.
        dem: Optional open DEM (any CRS); its elevation is resampled onto
            both patches, and pairs touching DEM nodata are dropped.

    Returns:
        A :class:`PairShard` with exactly ``n_pairs`` pairs.

    Raises:
        InvalidInputError: bad parameters, or too few valid pairs found (the
            message says how many and what to change).
    """
    if n_pairs < 1:
        raise InvalidInputError(f"samples per file must be >= 1, got {n_pairs}")
    if not 0 < max_uniform_fraction <= 1:
        raise InvalidInputError(f"max_uniform_fraction must lie in (0, 1], got {max_uniform_fraction}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    sides_m = pixel_sides_m(dataset)
    min_distance_m = patch_px * max(sides_m)
    if not pair_distance_m:
        pair_distance_m = 2 * min_distance_m
    if pair_distance_m <= min_distance_m:
        raise InvalidInputError(
            f"pair_distance_meters={pair_distance_m:g} must exceed one patch width "
            f"({patch_px} px x {max(sides_m):.1f} m = {min_distance_m:.0f} m) so neighbours do not overlap anchors"
        )
    bounds = raster_bounds_latlng(dataset)
    found: list[tuple[np.ndarray, ...]] = []
    have = drawn = 0
    for _ in range(max_rounds):
        # draw enough for the pairs still missing at the acceptance rate seen so far (an island
        # clip can keep under 5 % of its draws: sea, uniform forest, held-out ground)
        rate = have / drawn if drawn else 0.5
        want = int(min(max(64, 1.5 * (n_pairs - have) / max(rate, 0.002)), 200_000))
        drawn += want
        a_lat, a_lng = random_points_in_bounds(bounds, want, rng)
        keep = is_land(a_lat, a_lng, dataset, legend)
        a_lat, a_lng = a_lat[keep], a_lng[keep]
        r2 = rng.uniform(min_distance_m**2, pair_distance_m**2, a_lat.size)
        n_lat, n_lng = destination_points(a_lat, a_lng, rng.uniform(0, 2 * np.pi, a_lat.size), np.sqrt(r2))
        anchors = extract_patches(dataset, a_lat, a_lng, legend, patch_px=patch_px)
        neighbors = extract_patches(dataset, n_lat, n_lng, legend, patch_px=patch_px)
        ok = anchors.valid & neighbors.valid & is_land(n_lat, n_lng, dataset, legend)
        ok &= ~_patches_overlap(dataset, a_lat, a_lng, n_lat, n_lng, patch_px)
        if holdout is not None:
            cand = np.flatnonzero(ok)
            half_width_m = min_distance_m / 2
            touches = patch_held_out(a_lat[cand], a_lng[cand], half_width_m, **holdout)[1]
            touches |= patch_held_out(n_lat[cand], n_lng[cand], half_width_m, **holdout)[1]
            ok[cand[touches]] = False
        ok[ok] &= dominant_class_fraction(anchors.classes[ok]) <= max_uniform_fraction
        ok[ok] &= dominant_class_fraction(neighbors.classes[ok]) <= max_uniform_fraction
        parts = [anchors.classes, neighbors.classes, a_lat, a_lng, n_lat, n_lng]
        if dem is not None:
            cand = np.flatnonzero(ok)
            a_dem = dem_patches(dem, dataset, a_lat[cand], a_lng[cand], patch_px=patch_px)
            n_dem = dem_patches(dem, dataset, n_lat[cand], n_lng[cand], patch_px=patch_px)
            full_a, full_n = (np.zeros((a_lat.size, patch_px, patch_px), np.float16) for _ in range(2))
            full_a[cand], full_n[cand] = a_dem, n_dem
            ok[cand] &= np.isfinite(a_dem).all(axis=(1, 2)) & np.isfinite(n_dem).all(axis=(1, 2))
            parts += [full_a, full_n]
        take = np.flatnonzero(ok)[: n_pairs - have]
        found.append(tuple(part[take] for part in parts))
        have += take.size
        if have >= n_pairs:
            break
    if have < n_pairs:
        raise InvalidInputError(
            f"found only {have} of {n_pairs} valid pairs after {max_rounds} rounds: the raster has too little "
            "land with valid, non-uniform patches; raise max_uniform_fraction, shrink the patch, "
            "or use a raster with more land"
            + (
                " (held-out ground is excluded: a clip smaller than a few H3 res-5 cells may lie mostly on it)"
                if holdout
                else ""
            )
        )
    cols = [np.concatenate(parts) for parts in zip(*found, strict=False)]
    meta = {
        "legend": legend.to_dict(),
        "patch_px": patch_px,
        "pixel_size_m": float(np.sqrt(sides_m[0] * sides_m[1])),
        "pixel_sides_m": list(sides_m),
        "pair_distance_m": float(pair_distance_m),
        "min_distance_m": float(min_distance_m),
        "max_uniform_fraction": float(max_uniform_fraction),
    }
    meta["dem"] = dem is not None
    meta["holdout"] = holdout
    return PairShard(
        anchor=cols[0],
        neighbor=cols[1],
        anchor_latlng=np.column_stack([cols[2], cols[3]]),
        neighbor_latlng=np.column_stack([cols[4], cols[5]]),
        meta=meta,
        anchor_dem=cols[6] if dem is not None else None,
        neighbor_dem=cols[7] if dem is not None else None,
    )


def write_shard(shard: PairShard, path: str | Path) -> Path:
    """Write a shard as compressed ``.npz`` (uint8 patches compress well; DEMs as float16)."""
    arrays = {
        "anchor": shard.anchor,
        "neighbor": shard.neighbor,
        "anchor_latlng": shard.anchor_latlng,
        "neighbor_latlng": shard.neighbor_latlng,
        "meta": np.array(json.dumps(shard.meta)),
    }
    if shard.anchor_dem is not None:
        arrays.update(anchor_dem=shard.anchor_dem, neighbor_dem=shard.neighbor_dem)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    Path(path).write_bytes(buf.getvalue())
    return Path(path)


def read_shard(path: str | Path) -> PairShard:
    """Read a shard written by :func:`write_shard`."""
    with np.load(path, allow_pickle=False) as data:
        missing = {"anchor", "neighbor", "anchor_latlng", "neighbor_latlng", "meta"} - set(data.files)
        if missing:
            raise InvalidInputError(f"{str(path)!r} is not a training shard: arrays {sorted(missing)} are missing")
        return PairShard(
            anchor=data["anchor"],
            neighbor=data["neighbor"],
            anchor_latlng=data["anchor_latlng"],
            neighbor_latlng=data["neighbor_latlng"],
            meta=json.loads(str(data["meta"])),
            anchor_dem=data["anchor_dem"] if "anchor_dem" in data.files else None,
            neighbor_dem=data["neighbor_dem"] if "neighbor_dem" in data.files else None,
        )
