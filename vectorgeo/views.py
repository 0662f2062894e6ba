"""Training examples: augmented views of anchor/neighbour patch pairs, and the batches ``fit`` reads.

A view is a patch under one of the 8 square symmetries (rotations and flips);
``anchor_view`` is a second, independently transformed view of the anchor.
A patch's classes and DEM share one transform.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from vectorgeo.errors import InvalidInputError
from vectorgeo.patch_stats import class_fractions

__all__ = ["dihedral", "make_views", "view_batches", "view_source"]


def dihedral(batch: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Apply one of the 8 square symmetries per sample.

    Args:
        batch: ``(N, P, P, ...)`` patches, any dtype; axes 1 and 2 are rows and columns.
        k: int ``(N,)`` in 0..7: ``k % 4`` counter-clockwise quarter turns, applied after a
            left-right flip when ``k >= 4``. Reflections (4..7) are their own inverse; the
            inverse of a rotation ``k < 4`` is ``(4 - k) % 4``.

    Returns:
        New array, same shape and dtype. Vectorised: one numpy call per distinct ``k``.
    """
    k = np.asarray(k)
    if k.shape != batch.shape[:1] or (k.size and (k.min() < 0 or k.max() > 7)):
        raise InvalidInputError(f"k must be (N,) = {batch.shape[:1]} in 0..7, got shape {k.shape}")
    out = np.empty_like(batch)
    for t in np.unique(k):
        sel = k == t
        part = batch[sel][:, :, ::-1] if t >= 4 else batch[sel]
        out[sel] = np.rot90(part, int(t) % 4, axes=(1, 2))
    return out


def view_source(view: str) -> str:
    """The array a view is cut from: ``anchor_view`` is another view of the anchor."""
    return "anchor" if view == "anchor_view" else view


def make_views(arrays: dict, take: np.ndarray, views: Sequence[str], rng: np.random.Generator | None, dem: bool):
    """Inputs of one batch: each view of the pairs ``take``, independently rotated/flipped when ``rng`` is given.

    ``anchor_view`` is a second view of the anchor patch. Without ``rng`` (validation), views
    other than ``anchor`` get a fixed transform per position (``k = (i + v) % 8``), so the
    validation loss is comparable across epochs and two views of a patch still differ.
    """
    out = {}
    for v, view in enumerate(views):
        source = view_source(view)
        if rng is not None:
            k = rng.integers(0, 8, take.size)
        else:
            k = (np.arange(take.size) + v) % 8 if v else np.zeros(take.size, dtype=np.int64)
        out[view] = dihedral(arrays[source][take], k)
        if dem:
            out[view + "_dem"] = dihedral(arrays[source + "_dem"][take], k).astype(np.float32, copy=False)
    return out


@functools.cache
def _view_batches_class():
    """The PyDataset subclass, defined once keras is imported."""
    from vectorgeo.keras_env import import_keras

    keras = import_keras()

    class ViewBatches(keras.utils.PyDataset):
        """Batches of augmented views for ``fit``: ``(inputs, zeros)``; batch ``i`` of epoch ``e`` draws from
        ``default_rng([seed, e, i])``, so batches are reproducible in any order."""

        def __init__(self, arrays, batch_size, views, *, augment=True, seed=0, use_dem=False, n_classes=0, **kwargs):
            super().__init__(**kwargs)
            self.arrays, self.views, self.use_dem, self.n_classes = arrays, tuple(views), use_dem, n_classes
            self.n = len(arrays["anchor"])
            self.batch_size, self.augment, self.seed, self.epoch = int(batch_size), augment, seed, 0
            self._order = self._permutation()

        def _permutation(self):
            if not self.augment:
                return np.arange(self.n)
            return np.random.default_rng([self.seed, self.epoch]).permutation(self.n)

        def __len__(self):
            return max(1, self.n // self.batch_size) if self.augment else -(-self.n // self.batch_size)

        def __getitem__(self, idx):
            take = np.sort(self._order[idx * self.batch_size : (idx + 1) * self.batch_size])
            rng = np.random.default_rng([self.seed, self.epoch, idx]) if self.augment else None
            inputs = make_views(self.arrays, take, self.views, rng, self.use_dem)
            if not self.n_classes:
                return inputs, np.zeros(take.size, np.float32)
            return inputs, {
                "views": np.zeros(take.size, np.float32),
                "fractions": class_fractions(inputs["anchor"], self.n_classes),
            }

        def on_epoch_end(self):
            self.epoch += 1
            self._order = self._permutation()

    return ViewBatches


def view_batches(arrays: dict, batch_size: int, views: Sequence[str], **kwargs):
    """A ``keras.utils.PyDataset`` of augmented views (``ViewBatches``).

    Keyword arguments: ``augment``, ``seed``, ``use_dem``, ``n_classes`` (with it, each batch's
    targets also carry the anchors' class fractions for the composition task).
    """
    return _view_batches_class()(arrays, batch_size, views, **kwargs)
