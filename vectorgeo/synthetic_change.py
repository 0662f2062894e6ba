"""A second epoch of a land-cover raster with known, seeded edits: ground truth for change detection.

Epoch B is epoch A with four kinds of edit, each a real-world change a user would ask about:

* ``urban_growth``: a ring grown around the largest town (land that is not water becomes built-up);
* ``forest_clearing``: a forested square cleared to cropland;
* ``reservoir``: a new lake flooding a disc of land;
* ``wetland_drained``: the largest wetland turned to cropland.

Every other pixel is copied unchanged, so a cell whose patch touches no edit has exactly the same
pixels in both epochs. :func:`edit_landscape` returns the edited codes and the list of edits (kind,
codes before and after, pixels changed, bounds in degrees); :func:`write_synthetic_epoch` writes
epoch B as a COG beside a GeoJSON of the edited areas. Imports numpy and scipy only, like
:mod:`vectorgeo.synthetic`; rasterio is imported where a file is written.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
from scipy import ndimage

from vectorgeo.errors import InvalidInputError

__all__ = ["EDIT_KINDS", "edit_landscape", "write_synthetic_epoch"]

logger = logging.getLogger(__name__)

EDIT_KINDS = ("urban_growth", "forest_clearing", "reservoir", "wetland_drained")
"""The edits, in the order they are applied (a later one may overwrite an earlier one's pixels)."""

_URBAN, _CROP, _WATER, _WETLAND, _SEA = 50, 40, 80, 90, 200
_FOREST = (111, 112, 113, 114, 115, 116, 121, 122, 123, 124, 125, 126)
_NOT_LAND = (_SEA, _WATER, 255)
_RING_PX = 8  # urban growth: 800 m at 100 m pixels
_CLEARING_PX = 30  # forest clearing: a 3 km square
_RESERVOIR_PX = 12  # reservoir radius: 1.2 km


def edit_landscape(codes: np.ndarray, transform, *, seed: int = 0) -> tuple[np.ndarray, list[dict]]:
    """Epoch B: ``codes`` with the four seeded edits.

    Args:
        codes: Epoch A, uint8 LC100 codes ``(H, W)`` (the synthetic default's, or any LC100 raster).
        transform: Its affine transform (pixel to degrees), for the edits' bounds.
        seed: Picks the clearing and the reservoir.

    Returns:
        ``(codes_b, edits)``: a new array, and one dict per edit applied: ``kind``, ``from`` (codes it
        replaced), ``to`` (code), ``n_pixels`` (pixels that changed), ``bounds`` (west, south, east, north).

    Raises:
        InvalidInputError: an edit finds nowhere to go (no town, forest, land or wetland).
    """
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.dtype != np.uint8:
        raise InvalidInputError(f"codes must be a 2-D uint8 array of LC100 codes, got {codes.dtype} {codes.shape}")
    rng = np.random.default_rng(seed)
    out = codes.copy()
    land = ~np.isin(codes, _NOT_LAND)
    edits = []
    for kind, where in (
        ("urban_growth", _urban_ring(codes, land)),
        ("forest_clearing", _clearing(codes, rng)),
        ("reservoir", _reservoir(codes, land, rng)),
        ("wetland_drained", _largest(codes == _WETLAND, "wetland")),
    ):
        to = {"urban_growth": _URBAN, "forest_clearing": _CROP, "reservoir": _WATER, "wetland_drained": _CROP}[kind]
        changed = where & (out != to)
        before = np.unique(out[changed]).tolist()
        out[changed] = to
        rows, cols = np.nonzero(changed)
        edits.append({"kind": kind, "from": before, "to": to, "n_pixels": int(changed.sum()),
                      "bounds": _bounds(transform, rows, cols)})  # fmt: skip
    return out, edits


def _largest(mask: np.ndarray, what: str) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if not n:
        raise InvalidInputError(f"epoch A has no {what} to edit")
    sizes = np.bincount(labels.ravel())[1:]
    return labels == int(np.argmax(sizes)) + 1


def _urban_ring(codes: np.ndarray, land: np.ndarray) -> np.ndarray:
    town = _largest(codes == _URBAN, "town")
    grown = ndimage.binary_dilation(town, iterations=_RING_PX)
    return grown & ~town & land


def _clearing(codes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A square mostly (>= 80 %) forested, picked at random among such squares."""
    forest = np.isin(codes, _FOREST)
    share = ndimage.uniform_filter(forest.astype(np.float32), size=_CLEARING_PX, mode="constant")
    half = _CLEARING_PX // 2
    share[:half], share[-half:], share[:, :half], share[:, -half:] = 0, 0, 0, 0  # whole squares only
    centres = np.flatnonzero(share >= 0.8)
    if not centres.size:
        raise InvalidInputError("epoch A has no 3 km square that is mostly forest to clear")
    cy, cx = divmod(int(rng.choice(centres)), codes.shape[1])
    square = np.zeros(codes.shape, bool)
    square[cy - half : cy + half, cx - half : cx + half] = True
    return square & forest


def _reservoir(codes: np.ndarray, land: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A disc of land (no town in it), away from the raster's edge."""
    r = _RESERVOIR_PX
    inland = ndimage.binary_erosion(land & (codes != _URBAN), iterations=r)
    inland[: 2 * r], inland[-2 * r :], inland[:, : 2 * r], inland[:, -2 * r :] = False, False, False, False
    centres = np.flatnonzero(inland)
    if not centres.size:
        raise InvalidInputError("epoch A has no land wide enough for a reservoir")
    cy, cx = divmod(int(rng.choice(centres)), codes.shape[1])
    yy, xx = np.ogrid[: codes.shape[0], : codes.shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _bounds(transform, rows: np.ndarray, cols: np.ndarray) -> list[float]:
    """``[west, south, east, north]`` in degrees of the pixels ``rows, cols`` (their outer edges)."""
    west, north = transform * (int(cols.min()), int(rows.min()))
    east, south = transform * (int(cols.max()) + 1, int(rows.max()) + 1)
    return [float(west), float(south), float(east), float(north)]


def write_synthetic_epoch(
    landcover_a: str | os.PathLike, landcover_b: str | os.PathLike, edits_path: str | os.PathLike, *, seed: int = 0
) -> list[dict]:
    """Read epoch A, write epoch B (a COG on the same grid, same colour table) and a GeoJSON of the edits.

    Returns:
        The edits (see :func:`edit_landscape`); the GeoJSON holds one box Feature per edit.
    """
    import rasterio

    from vectorgeo.synthetic import write_landcover_cog

    with rasterio.open(landcover_a) as src:
        codes, transform = src.read(1), src.transform
    codes_b, edits = edit_landscape(codes, transform, seed=seed)
    write_landcover_cog(Path(landcover_b), codes_b, transform)
    features = [
        {"type": "Feature", "properties": {k: v for k, v in e.items() if k != "bounds"},
         "geometry": {"type": "Polygon", "coordinates": [[[w, s], [e_, s], [e_, n], [w, n], [w, s]]]}}
        for e in edits
        for w, s, e_, n in [e["bounds"]]
    ]  # fmt: skip
    tmp = Path(edits_path).with_suffix(".tmp")
    tmp.write_text(json.dumps({"type": "FeatureCollection", "features": features}, indent=1))
    os.replace(tmp, edits_path)
    logger.info("epoch B: %s", ", ".join(f"{e['kind']} {e['n_pixels']} px" for e in edits))
    return edits
