"""Classify every cell of a region from a few labelled cells: "find all like these", with probabilities.

``POST /classify`` calls :func:`classify_region` through :meth:`vectorgeo.search.SearchService.classify`:
the labelled cells' embeddings train a light classifier (:func:`vectorgeo.classifiers.make_classifier`,
logistic regression by default) on the fly, and it predicts each indexed cell of the region.

Regions are :class:`~vectorgeo.stores.base.GeoFilter` values (a bbox, a polygon ring, or a point and a
radius) with its :meth:`~vectorgeo.stores.base.GeoFilter.contains` semantics: a cell belongs to the region
when its centre does. :func:`region_to_cells` enumerates them with h3's polygon fill, first estimating the
count from the region's area so that a region far over :data:`MAX_CLASSIFY_CELLS` is refused before any
work (whole maps are flow 06's job).

Two ways to label:

* ``labels``: cell -> class name, at least two classes, one cell each is enough (few-shot);
* ``positive`` (and ``negative``) cells: classes ``"positive"`` and ``"negative"``, and each cell's
  ``probability`` is P(positive). With no negatives, :data:`BACKGROUND_PER_POSITIVE` random indexed
  cells of the region per positive (never a positive itself) stand in as negatives: background, not
  true negatives, so a region mostly like the positives gives low probabilities to cells that match.

Imports stay light (numpy, h3; scikit-learn only when a classifier is built).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence

import h3
import h3.api.basic_int as h3i
import h3.api.numpy_int as h3n
import numpy as np

from vectorgeo.classifiers import DEFAULT_CLASSIFIER, classifier_params, make_classifier
from vectorgeo.errors import InvalidInputError, NotFoundError
from vectorgeo.geodesy import EARTH_RADIUS_M
from vectorgeo.search import cell_rings
from vectorgeo.stores.base import GeoFilter, VectorStore
from vectorgeo.stores.geogrid import filter_bbox

__all__ = [
    "BACKGROUND_PER_POSITIVE",
    "MAX_CLASSES",
    "MAX_CLASSIFY_CELLS",
    "MAX_CLASS_NAME_CHARS",
    "MAX_LABELS",
    "FetchMany",
    "classify_region",
    "estimate_region_cells",
    "region_to_cells",
]

MAX_CLASSIFY_CELLS = 50_000
"""Most cells one region may hold (the answer carries one Feature per indexed cell)."""
MAX_LABELS = 1_000
"""Most labelled cells (positives and negatives together) in one request."""
MAX_CLASSES = 20
MAX_CLASS_NAME_CHARS = 64
BACKGROUND_PER_POSITIVE = 5
"""Background negatives sampled from the region per positive when no negatives are given."""
FETCH_CHUNK = 10_000
"""Cells per ``fetch_many`` call (the service's store lock is let go between calls) and per prediction
(k-NN holds a distance matrix of the chunk by the labelled cells)."""
_FILL_WORK = 1
"""Refuse a region whose outline is longer than this many times the limit in cell edges: h3's fill works along
it (a compact region at the limit has an outline of a few thousand edges; a zigzag sliver could have millions)."""
_MAX_BOX_WIDTH_DEG = 90.0  # boxes are filled in pieces this wide: h3 reads a wider edge as crossing the antimeridian

FetchMany = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
"""``fetch_many(h3) -> (found_h3, vectors, lat, lng)``, as :meth:`VectorStore.fetch_many`."""


# ------------------------------------------------------------------------------------------------- regions


def _boxes(west: float, south: float, east: float, north: float) -> list[tuple[float, float, float, float]]:
    """A bbox as boxes at most :data:`_MAX_BOX_WIDTH_DEG` wide, split at the antimeridian when ``west > east``."""
    spans = [(west, east)] if west <= east else [(west, 180.0), (-180.0, east)]
    out = []
    for lo, hi in spans:
        edges = np.linspace(lo, hi, max(1, math.ceil((hi - lo) / _MAX_BOX_WIDTH_DEG)) + 1).tolist()
        out += [(a, south, b, north) for a, b in itertools.pairwise(edges)]
    return out


def _region_size_km(region: GeoFilter) -> tuple[float, float]:
    """The region's area (km², on the sphere) and the length of its outline (km, roughly): what estimates need.

    A polygon's area treats its edges as straight in longitude and sin(latitude), close enough for an estimate.
    """
    radius_km = EARTH_RADIUS_M / 1000
    if region.is_radius:
        r = region.radius_km / radius_km
        return 2 * math.pi * radius_km**2 * (1 - math.cos(r)), 2 * math.pi * radius_km * math.sin(min(r, math.pi / 2))
    if region.is_polygon:
        lng, lat = np.radians(np.asarray(region.polygon, dtype=np.float64)).T
    else:
        west, south, east, north = region.bbox
        east = east + 360 if west > east else east
        lng, lat = np.radians([west, east, east, west]), np.radians([south, south, north, north])
    lng2, lat2 = np.roll(lng, -1), np.roll(lat, -1)
    area = abs(float(((lng2 - lng) * (np.sin(lat) + np.sin(lat2))).sum())) / 2 * radius_km**2
    outline = float(np.hypot((lng2 - lng) * np.cos((lat + lat2) / 2), lat2 - lat).sum()) * radius_km
    return area, outline


def estimate_region_cells(region: GeoFilter, h3_resolution: int) -> float:
    """About how many cells of ``h3_resolution`` the region holds: its area over the average cell area.

    Cells near the icosahedron's vertices are smaller than average, so a region there holds somewhat more.
    """
    area, _ = _region_size_km(region)
    return area / h3.average_hexagon_area(h3_resolution, "km^2")


def _too_many(count: float, h3_resolution: int, max_cells: int, about: str) -> InvalidInputError:
    return InvalidInputError(
        f"the region holds {about}{count:,.0f} H3 cells at resolution {h3_resolution}; /classify takes at most "
        f"{max_cells:,}: zoom in or use flow 06 for whole maps"
    )


def region_to_cells(
    region: GeoFilter, h3_resolution: int, *, max_cells: int = MAX_CLASSIFY_CELLS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The cells of ``h3_resolution`` whose centres lie in ``region`` (:meth:`GeoFilter.contains`), and those centres.

    h3's fill (every cell that overlaps the region's polygon, or the circle's bbox) gives candidates,
    which ``contains`` then decides exactly. The count is estimated before filling and checked after.

    Returns:
        ``(h3 uint64, lat, lng)`` in degrees, sorted by id.

    Raises:
        InvalidInputError: the region holds (or would hold, by the estimate) more than ``max_cells`` cells.
    """
    area, outline = _region_size_km(region)
    estimate = area / h3.average_hexagon_area(h3_resolution, "km^2")
    if estimate > max_cells:
        raise _too_many(estimate, h3_resolution, max_cells, "about ")
    if outline / h3.average_hexagon_edge_length(h3_resolution, "km") > _FILL_WORK * max_cells:
        raise InvalidInputError(
            f"the region's outline is about {outline:,.0f} km long: too long to enumerate at resolution "
            f"{h3_resolution} (cells {h3.average_hexagon_edge_length(h3_resolution, 'km'):g} km across); give a "
            "more compact region"
        )
    if region.is_polygon:
        polygons = [h3.LatLngPoly([(lat, lng) for lng, lat in region.polygon])]
    else:
        box = filter_bbox(region)  # a radius: its circle's box
        polygons = [h3.LatLngPoly([(s, w), (s, e), (n, e), (n, w)]) for w, s, e, n in _boxes(*box)]
    filled = [h3n.polygon_to_cells_experimental(p, h3_resolution, contain="overlap") for p in polygons]
    cells = np.unique(np.concatenate(filled).astype(np.uint64)) if filled else np.empty(0, np.uint64)
    centres = np.array([h3i.cell_to_latlng(c) for c in cells.tolist()], np.float64).reshape(-1, 2)
    inside = region.contains(centres[:, 0], centres[:, 1])
    cells, centres = cells[inside], centres[inside]
    if len(cells) > max_cells:
        raise _too_many(len(cells), h3_resolution, max_cells, "")
    return cells, centres[:, 0], centres[:, 1]


# --------------------------------------------------------------------------------------------- classifying


def _check_cells(cells: Sequence[int], h3_resolution: int, what: str) -> np.ndarray:
    for cell in cells:
        if isinstance(cell, bool) or not isinstance(cell, int | np.integer) or not h3i.is_valid_cell(int(cell)):
            raise InvalidInputError(f"{what} must be H3 cell ids (uint64 integers), got {cell!r}")
        if h3i.get_resolution(int(cell)) != h3_resolution:
            raise InvalidInputError(
                f"{what}: H3 cell {h3i.int_to_str(int(cell))} is at resolution {h3i.get_resolution(int(cell))}; "
                f"this index holds resolution-{h3_resolution} cells"
            )
    return np.array([int(c) for c in cells], np.uint64)


def _training_set(
    labels: Mapping[int, str] | None, positive: Sequence[int], negative: Sequence[int], h3_resolution: int
) -> tuple[np.ndarray, list[str], list[str], bool]:
    """``(cells uint64, class per cell, class names in answer order, positive mode)``, checked."""
    if (labels is not None) == bool(positive or negative):
        raise InvalidInputError("give labels (cell -> class), or positive cells (and optionally negative), not both")
    if labels is not None:
        names = list(labels.values())
        cells = _check_cells(list(labels), h3_resolution, "labels")
        mode = False
    else:
        if not positive:
            raise InvalidInputError("negative cells need positive cells: give at least one positive cell")
        names = ["positive"] * len(positive) + ["negative"] * len(negative)
        cells = np.concatenate([_check_cells(positive, h3_resolution, "positive"),
                                _check_cells(negative, h3_resolution, "negative")])  # fmt: skip
        both = np.intersect1d(cells[: len(positive)], cells[len(positive) :])
        if len(both):
            raise InvalidInputError(f"H3 cell {h3i.int_to_str(int(both[0]))} is both positive and negative; keep one")
        mode = True
    if not 1 <= len(cells) <= MAX_LABELS:
        raise InvalidInputError(f"give 1 to {MAX_LABELS:,} labelled cells, got {len(cells):,}")
    if len(np.unique(cells)) != len(cells):
        uniq, counts = np.unique(cells, return_counts=True)
        raise InvalidInputError(f"H3 cell {h3i.int_to_str(int(uniq[counts > 1][0]))} is labelled more than once")
    for name in names:
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_CLASS_NAME_CHARS:
            raise InvalidInputError(
                f"class names must be non-empty strings of at most {MAX_CLASS_NAME_CHARS} characters, got {name!r:.80}"
            )
    order = ["positive", "negative"] if mode else list(dict.fromkeys(names))
    if len(order) > MAX_CLASSES:
        raise InvalidInputError(f"at most {MAX_CLASSES} classes, got {len(order)}")
    if len(order) < 2:
        raise InvalidInputError(
            f"every label is class {order[0]!r}: give at least 2 classes (one labelled cell each is enough, "
            "few-shot works), or send the cells as positive to contrast them with background cells of the region"
        )
    return cells, names, order, mode


def _fetch_all(fetch: FetchMany, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    parts = [fetch(cells[i : i + FETCH_CHUNK]) for i in range(0, len(cells), FETCH_CHUNK)] or [fetch(cells)]
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(4))


def classify_region(
    source: VectorStore | FetchMany,
    labels: Mapping[int, str] | None,
    region: GeoFilter,
    *,
    h3_resolution: int,
    positive: Sequence[int] = (),
    negative: Sequence[int] = (),
    classifier: str = DEFAULT_CLASSIFIER,
    geometry: bool = True,
    seed: int = 0,
    model: str | None = None,
    store: str | None = None,
    max_cells: int = MAX_CLASSIFY_CELLS,
) -> dict:
    """Train a classifier on labelled cells and predict every indexed cell of ``region``.

    Args:
        source: A store, or its ``fetch_many`` (the search service passes one that holds its store lock).
        labels: Cell (uint64) -> class name; or None with ``positive`` (and ``negative``) cells.
        region: Where to predict (cell centres inside, per :meth:`GeoFilter.contains`).
        h3_resolution: Resolution of the indexed cells; every labelled cell must be at it.
        positive: Cells of the class sought (P(positive) is each cell's ``probability``).
        negative: Cells not of it; none: background cells of the region are sampled (module docstring).
        classifier: ``logistic``, ``knn`` or ``random_forest`` (:mod:`vectorgeo.classifiers`).
        geometry: Give each Feature its hexagon (else ``null``; the answer is about half as long).
        seed: Seeds the classifier and the background sample.
        model, store: Reported in the answer.
        max_cells: Most cells the region may hold.

    Returns:
        A GeoJSON FeatureCollection, one Feature per indexed cell of the region (id order), with properties
        ``h3``, ``class``, ``probability``, ``probabilities`` (class -> p, 4 digits) and, for labelled cells,
        ``labelled``; and ``classes``, ``n_cells``, ``n_candidates``, ``training`` and what was run.

    Raises:
        InvalidInputError: bad labels, fewer than 2 classes, an unknown classifier, a region too large.
        NotFoundError: a labelled cell is not in the index.
    """
    classifier_params(classifier)  # an unknown name fails before any work
    cells, names, order, positive_mode = _training_set(labels, positive, negative, h3_resolution)
    candidates, _, _ = region_to_cells(region, h3_resolution, max_cells=max_cells)  # a region too large: no work
    fetch = source.fetch_many if hasattr(source, "fetch_many") else source
    found, train_x, _, _ = _fetch_all(fetch, cells)
    train_x = train_x.astype(np.float64)  # probabilities in float64: float32 ones round to 0.47639998
    if len(found) < len(cells):
        missing = np.setdiff1d(cells, found)
        first = next(c for c in cells.tolist() if c in set(missing.tolist()))
        more = f" ({len(missing)} labelled cells are missing)" if len(missing) > 1 else ""
        raise NotFoundError(
            f"labelled H3 cell {h3i.int_to_str(first)} is not in the index{f' of model {model!r}' if model else ''}: "
            f"it is sea, or outside the embedded area; drop that label{more}"
        )
    by_cell = dict(zip(cells.tolist(), names, strict=True))
    y = [by_cell[c] for c in found.tolist()]
    region_h3, region_x, _, _ = _fetch_all(fetch, candidates)
    region_x = region_x.astype(np.float64)
    n_background = 0
    if positive_mode and not negative:
        pool = np.flatnonzero(~np.isin(region_h3, found))
        n_background = min(len(pool), BACKGROUND_PER_POSITIVE * len(found))
        if not n_background:
            raise InvalidInputError(
                "no indexed cells of the region are left to serve as background negatives; give negative cells "
                "or a larger region"
            )
        picked = np.random.default_rng(seed).choice(pool, n_background, replace=False)
        train_x = np.concatenate([train_x, region_x[picked]])
        y = y + ["negative"] * n_background
    y = np.array(y, dtype=object)
    smallest = min(int((y == name).sum()) for name in order)
    fitted = _fit(make_classifier(classifier, seed=seed, min_class_size=smallest), train_x, y, region_x)
    columns = [list(fitted.classes_).index(name) for name in order]
    labelled = len(found)
    accuracy = float((fitted.predict(train_x[:labelled]) == y[:labelled]).mean())
    parts = [fitted.predict_proba(region_x[i : i + FETCH_CHUNK]) for i in range(0, len(region_x), FETCH_CHUNK)]
    proba = np.concatenate(parts)[:, columns] if parts else np.empty((0, len(order)))  # chunks: k-NN's distances
    return _answer(
        region_h3, proba, order, positive_mode, by_cell, geometry,
        summary={
            "classes": [
                {"name": name, "n_labels": names.count(name), "n_cells": int((proba.argmax(axis=1) == i).sum())}
                for i, name in enumerate(order)
            ],
            "n_cells": len(region_h3),
            "n_candidates": len(candidates),
            "classifier": classifier,
            "model": model,
            "resolution": int(h3_resolution),
            "store": store,
            "region": _region_member(region),
            "training": {"n_labels": labelled, "n_background": n_background, "accuracy_on_labels": round(accuracy, 4)},
            "truncated": False,
        },
    )  # fmt: skip


def _fit(estimator, train_x: np.ndarray, y: np.ndarray, region_x: np.ndarray):
    """Fit the classifier; a scaler in front of it learns from the region's cells as well as the labelled ones.

    Few labels give a scaler nothing to learn from: fitted on two cells, it stretches every dimension to
    the same spread, so dimensions where they differ only by noise weigh as much as those that tell them
    apart (logistic regression with one label per class then got half the cells wrong on two clean
    clusters). The region's cells, unlabelled, give the spread of each dimension where it is predicted.
    """
    steps = getattr(estimator, "steps", None)
    if not steps or len(steps) != 2 or not hasattr(steps[0][1], "transform"):
        return estimator.fit(train_x, y)
    scaler, final = steps[0][1], steps[1][1]
    scaler.fit(np.concatenate([train_x, region_x]))
    final.fit(scaler.transform(train_x), y)
    return estimator


def _answer(
    h3_ids: np.ndarray,
    proba: np.ndarray,
    order: list[str],
    positive_mode: bool,
    labelled: dict[int, str],
    geometry: bool,
    summary: dict,
) -> dict:
    """The FeatureCollection: one vectorised pass for the numbers, then plain Python for the features."""
    best = proba.argmax(axis=1) if len(proba) else np.empty(0, np.int64)
    chosen = proba[:, 0] if positive_mode else proba.max(axis=1, initial=0.0)
    rounded, chosen = np.round(proba, 4).tolist(), np.round(chosen, 4).tolist()
    cells = h3_ids.tolist()
    rings = cell_rings(cells) if geometry else [None] * len(cells)
    shapes = [{"type": "Polygon", "coordinates": [ring]} if ring else None for ring in rings]
    features = []
    for cell, shape, b, p, row in zip(cells, shapes, best.tolist(), chosen, rounded, strict=True):
        name = f"{cell:x}"  # h3.int_to_str, without a call per cell
        probabilities = dict(zip(order, row, strict=True))
        properties = {"h3": name, "class": order[b], "probability": p, "probabilities": probabilities}
        if cell in labelled:
            properties["labelled"] = labelled[cell]
        features.append({"type": "Feature", "id": name, "geometry": shape, "properties": properties})
    return {"type": "FeatureCollection", "features": features, **summary}


def _region_member(region: GeoFilter) -> dict:
    if region.is_radius:
        return {"lat": region.lat, "lng": region.lng, "radius_km": region.radius_km}
    if region.is_polygon:
        return {"polygon": [list(v) for v in region.polygon]}
    return {"bbox": list(region.bbox)}
