"""Which places are held out of training, so evaluation sees unseen ground.

A place is held out when its H3 parent cell (resolution ``parent_res``;
res 5 cells are ~250 km2, several patch widths across) hashes below
``fraction``. The rule is deterministic and needs no stored list. Patches
are judged by their centre and four corners: training drops pairs whose
patches touch held-out ground at any of them, evaluation keeps only cells
whose patch lies on held-out ground at all of them, so no patch seen in
training overlaps a scored one (up to a held-out parent narrower than a
patch poking between corners, which res-5 parents are not).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "HOLDOUT",
    "VALIDATION",
    "latlng_to_cells",
    "held_out",
    "patch_held_out",
    "patch_on_validation",
    "ground_hash",
]

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)

HOLDOUT = {"fraction": 0.2, "parent_res": 5, "seed": 0}
"""Held-out ground: H3 res-5 parents whose hash falls in the lowest 20 %.
Sampling never draws pairs whose patches touch it; evaluation (flow 05)
scores only cells whose patches lie wholly on it."""

VALIDATION = {"lo": 0.2, "hi": 0.3}
"""Validation ground: the parents whose hash (same parents and seed as
:data:`HOLDOUT`) falls in the next 10 %. Hyper-parameter tuning trains
without it and scores on it, so tuning never looks at held-out ground;
flow 02 may train on it."""


def latlng_to_cells(lat: np.ndarray, lng: np.ndarray, h3_resolution: int) -> np.ndarray:
    """H3 cells (uint64) of many points at once (vectorised, via h3ronpy)."""
    import pyarrow as pa
    from h3ronpy.vector import coordinates_to_cells

    lat = np.ascontiguousarray(lat, dtype=np.float64)
    lng = np.ascontiguousarray(lng, dtype=np.float64)
    if lat.size == 0:
        return np.empty(0, dtype=np.uint64)
    cells = coordinates_to_cells(pa.array(lat), pa.array(lng), h3_resolution)
    return np.asarray(pa.array(cells), dtype=np.uint64)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return x ^ (x >> np.uint64(31))


def ground_hash(lat: np.ndarray, lng: np.ndarray, *, parent_res: int = 5, seed: int = 0) -> np.ndarray:
    """Uniform pseudo-random number in [0, 1) of each point's H3 parent cell (the same for the whole parent).

    Args:
        lat: Latitudes, degrees (EPSG:4326).
        lng: Longitudes, degrees.
        parent_res: Resolution of the parent cells.
        seed: Changes the numbers.

    Returns:
        float64 array, same length as ``lat``.
    """
    parents = latlng_to_cells(lat, lng, parent_res)
    with np.errstate(over="ignore"):
        mixed = _splitmix64(parents ^ _splitmix64(np.full(parents.shape, seed, dtype=np.uint64)))
    return (mixed >> np.uint64(11)).astype(np.float64) / 2.0**53


def held_out(
    lat: np.ndarray, lng: np.ndarray, *, fraction: float = 0.2, parent_res: int = 5, seed: int = 0
) -> np.ndarray:
    """True where a point lies in a held-out H3 parent cell.

    Args:
        lat: Latitudes, degrees (EPSG:4326).
        lng: Longitudes, degrees.
        fraction: Share of parent cells held out, 0..1.
        parent_res: Resolution of the parent cells that are held out whole.
        seed: Changes which parents are held out.

    Returns:
        bool array, same length as ``lat``.
    """
    return ground_hash(lat, lng, parent_res=parent_res, seed=seed) < fraction


def _patch_points(lat: np.ndarray, lng: np.ndarray, half_width_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Centre and four corners of each patch, ``5 N`` points (patch-major)."""
    from vectorgeo.geodesy import destination_points

    lat, lng = np.asarray(lat, dtype=np.float64), np.asarray(lng, dtype=np.float64)
    bearings = np.radians([45.0, 135.0, 225.0, 315.0])
    c_lat, c_lng = destination_points(
        np.repeat(lat, 4), np.repeat(lng, 4), np.tile(bearings, lat.size), half_width_m * np.sqrt(2.0)
    )
    return np.column_stack([lat, c_lat.reshape(-1, 4)]).ravel(), np.column_stack([lng, c_lng.reshape(-1, 4)]).ravel()


def patch_on_validation(
    lat: np.ndarray,
    lng: np.ndarray,
    half_width_m: float,
    *,
    lo: float = VALIDATION["lo"],
    hi: float = VALIDATION["hi"],
    parent_res: int = HOLDOUT["parent_res"],
    seed: int = HOLDOUT["seed"],
) -> tuple[np.ndarray, np.ndarray]:
    """Whether each patch lies wholly, or partly, on validation ground (hash in ``[lo, hi)``).

    Returns:
        ``(all_on_validation, any_on_validation)`` bool arrays.
    """
    u = ground_hash(*_patch_points(lat, lng, half_width_m), parent_res=parent_res, seed=seed).reshape(-1, 5)
    inside = (u >= lo) & (u < hi)
    return inside.all(axis=1), inside.any(axis=1)


def patch_held_out(
    lat: np.ndarray, lng: np.ndarray, half_width_m: float, *, fraction: float = 0.2, parent_res: int = 5, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Whether each patch lies wholly, or partly, on held-out ground.

    Args:
        lat: Patch-centre latitudes, degrees.
        lng: Patch-centre longitudes, degrees.
        half_width_m: Half the patch side on the ground, metres (its corners are
            ``half_width_m * sqrt(2)`` from the centre).
        fraction: As :func:`held_out`.
        parent_res: As :func:`held_out`.
        seed: As :func:`held_out`.

    Returns:
        ``(all_held_out, any_held_out)`` bool arrays.
    """
    points_lat, points_lng = _patch_points(lat, lng, half_width_m)
    inside = held_out(points_lat, points_lng, fraction=fraction, parent_res=parent_res, seed=seed).reshape(-1, 5)
    return inside.all(axis=1), inside.any(axis=1)
