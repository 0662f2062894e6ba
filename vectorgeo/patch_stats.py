"""Descriptors of land-cover patches: composition and configuration, with numpy alone.

A patch is a square of integer class indices around a cell (uint8, ``(N, P, P)``,
no nodata). Its composition is the share of each class
(:func:`class_fractions`) and the Shannon diversity of those shares
(:func:`shannon_diversity`); its configuration is how often neighbouring pixels
differ (:func:`edge_density`). Evaluation scores embeddings against these, and
inference stores the class fractions beside each embedding, so this module
imports nothing heavier than numpy. Loops run over chunks of patches, never
over samples or pixels.
"""

from __future__ import annotations

import numpy as np

from vectorgeo.errors import InvalidInputError

__all__ = ["class_fractions", "edge_density", "shannon_diversity"]

_CHUNK = 4096  # samples per chunk where a step would otherwise hold (N, P*P, ...) temporaries


def _check_patches(patches: np.ndarray, n_classes: int | None = None) -> np.ndarray:
    patches = np.asarray(patches)
    if patches.ndim != 3 or patches.shape[0] == 0:
        raise InvalidInputError(f"patches must have shape (N, H, W) with N >= 1, got {patches.shape}")
    if not np.issubdtype(patches.dtype, np.integer):
        raise InvalidInputError(f"patches must hold integer class indices, got dtype {patches.dtype}")
    if n_classes is not None:
        if n_classes < 1:
            raise InvalidInputError(f"n_classes must be >= 1, got {n_classes}")
        lo, hi = int(patches.min()), int(patches.max())
        if lo < 0 or hi >= n_classes:
            raise InvalidInputError(
                f"patches hold class indices {lo}..{hi} but n_classes is {n_classes}; "
                "drop patches with nodata (255) or pass the legend's n_classes"
            )
    return patches


def class_fractions(patches: np.ndarray, n_classes: int) -> np.ndarray:
    """Share of each class in each patch.

    Args:
        patches: Integer class indices ``(N, H, W)``, each in ``0..n_classes-1``.
        n_classes: Number of classes ``C`` in the legend.

    Returns:
        float32 ``(N, C)``; each row sums to 1.

    Raises:
        InvalidInputError: for a wrong shape or an index outside ``0..n_classes-1``
            (nodata 255 included).
    """
    if np.ndim(patches) == 3 and np.shape(patches)[0] == 0:
        return np.zeros((0, n_classes), dtype=np.float32)
    patches = _check_patches(patches, n_classes)
    n = patches.shape[0]
    flat = patches.reshape(n, -1)
    out = np.empty((n, n_classes), dtype=np.float32)
    for start in range(0, n, _CHUNK):
        block = flat[start : start + _CHUNK]
        rows = block.shape[0]
        # one bincount for the whole chunk: offset each patch's indices by row * C
        keys = block.astype(np.intp) + (np.arange(rows, dtype=np.intp) * n_classes)[:, None]
        counts = np.bincount(keys.ravel(), minlength=rows * n_classes).reshape(rows, n_classes)
        out[start : start + rows] = counts / flat.shape[1]
    return out


def edge_density(patches: np.ndarray) -> np.ndarray:
    """Share of 4-neighbour pixel pairs whose classes differ.

    Every horizontally and every vertically adjacent pair counts once, so a
    uniform patch scores 0, a checkerboard 1, and stripes one pixel wide 0.5.

    Args:
        patches: Integer class indices ``(N, H, W)`` with ``H * W >= 2``.

    Returns:
        float32 ``(N,)`` in 0..1.
    """
    patches = _check_patches(patches)
    n, h, w = patches.shape
    n_pairs = h * (w - 1) + (h - 1) * w
    if n_pairs == 0:
        raise InvalidInputError(f"patches of {h}x{w} pixels have no adjacent pixel pairs")
    out = np.empty(n, dtype=np.float32)
    for start in range(0, n, _CHUNK):
        block = patches[start : start + _CHUNK]
        horizontal = np.count_nonzero(block[:, :, 1:] != block[:, :, :-1], axis=(1, 2))
        vertical = np.count_nonzero(block[:, 1:, :] != block[:, :-1, :], axis=(1, 2))
        out[start : start + block.shape[0]] = (horizontal + vertical) / n_pairs
    return out


def shannon_diversity(fractions: np.ndarray) -> np.ndarray:
    """Shannon diversity ``-sum p ln p`` (nats) of each composition, with ``0 ln 0 = 0``.

    Args:
        fractions: Class fractions ``(N, C)``, rows summing to 1.

    Returns:
        float32 ``(N,)``, 0 for a single class up to ``ln C``.
    """
    p = np.asarray(fractions, dtype=np.float64)
    safe = np.where(p > 0, p, 1.0)
    return (-np.sum(p * np.log(safe), axis=-1)).astype(np.float32)
