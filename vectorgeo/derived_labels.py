"""Labels drawn from the land-cover raster itself: a known answer for classification on any raster.

A cell whose patch is mostly one class is labelled with that class. Flow 06 then has to
recover, from the embeddings alone, what the patch's composition says outright; the class
histogram is the baseline that sees the composition directly. Used by the tests, the
classification benchmark and the demo; the output is the GeoJSON that flow 06 reads.
"""

from __future__ import annotations

import numpy as np

from vectorgeo.errors import InvalidInputError

__all__ = ["labels_from_fractions"]


def labels_from_fractions(
    h3: np.ndarray,
    lat: np.ndarray,
    lng: np.ndarray,
    fractions: np.ndarray,
    class_names: list[str],
    *,
    min_fraction: float = 0.6,
    per_class: int = 50,
    max_classes: int = 5,
    classes: list[str] | None = None,
    seed: int = 0,
) -> dict:
    """A GeoJSON FeatureCollection of points at cell centres, each with ``class`` and ``h3`` properties.

    Args:
        h3, lat, lng: Embedded cells (uint64 ids, centres in degrees).
        fractions: Their patches' class fractions ``(N, C)`` (the ``class_fractions`` column of flow 03).
        class_names: Legend class names, in class-index order.
        min_fraction: A cell is labelled when its main class covers at least this share of its patch.
        per_class: Labelled cells drawn per class (fewer where fewer qualify).
        max_classes: Without ``classes``: the most common main classes, at most this many.
        classes: Class names to label (each needs at least 2 qualifying cells).
        seed: Seed of the draw.

    Raises:
        InvalidInputError: fewer than 2 classes qualify, or a named class has too few cells.
    """
    fractions = np.asarray(fractions)
    main = fractions.argmax(axis=1)
    pure = fractions.max(axis=1) >= min_fraction
    counts = np.bincount(main[pure], minlength=len(class_names))
    if classes is None:
        chosen = [i for i in np.argsort(-counts, kind="stable")[:max_classes] if counts[i] >= 2]
    else:
        unknown = [c for c in classes if c not in class_names]
        if unknown:
            raise InvalidInputError(f"classes {unknown} are not in the legend: {class_names}")
        chosen = [class_names.index(c) for c in classes]
        few = {class_names[i]: int(counts[i]) for i in chosen if counts[i] < 2}
        if few:
            raise InvalidInputError(f"classes {few} have fewer than 2 cells at least {min_fraction:.0%} pure")
    if len(chosen) < 2:
        raise InvalidInputError(
            f"fewer than 2 classes cover at least {min_fraction:.0%} of some cell's patch; lower min_fraction"
        )
    rng = np.random.default_rng(seed)
    features = []
    for index in chosen:
        members = np.flatnonzero(pure & (main == index))
        picked = np.sort(rng.choice(members, min(per_class, members.size), replace=False))
        for i in picked.tolist():
            features.append({
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [float(lng[i]), float(lat[i])]},
                "properties": {"class": class_names[index], "h3": format(int(h3[i]), "x")},
            })  # fmt: skip
    return {"type": "FeatureCollection", "features": features}
