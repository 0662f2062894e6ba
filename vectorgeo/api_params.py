"""Request values to typed search inputs: the parameter grammar shared by query strings and JSON bodies.

A query-string value arrives as :class:`Text` (it may spell a number or a boolean); a JSON value must
already have the right type. Either way only typed numbers and uint64 cell ids come out, and each
error message names the parameter, the bad value and what is allowed.
"""

from __future__ import annotations

import math
import re

from vectorgeo.classifiers import CLASSIFIERS
from vectorgeo.errors import InvalidInputError
from vectorgeo.region_classify import MAX_LABELS
from vectorgeo.search import MAX_QUERY_CELLS, Query, SearchOptions, cell_from_string, quoted
from vectorgeo.stores import GeoFilter

__all__ = [
    "GET_CELL",
    "GET_HEALTH",
    "GET_SEARCH",
    "POST_CLASSIFY",
    "POST_SEARCH",
    "Text",
    "cell_params",
    "classify_params",
    "search_params",
]

OPTIONS = ("k", "radius_km", "bbox", "polygon", "min_score", "min_separation_km", "exclude_within_km", "include_query")
GET_SEARCH = ("lat", "lng", "h3", *OPTIONS, "store")
"""Query parameters of ``GET /search``."""
POST_SEARCH = (*GET_SEARCH, "positive", "negative", "vector", "alpha")
"""Fields of the ``POST /search`` body."""
POST_CLASSIFY = ("labels", "positive", "negative", "bbox", "polygon", "lat", "lng", "radius_km", "classifier",
                 "geometry", "store")  # fmt: skip
"""Fields of the ``POST /classify`` body."""
GET_CELL = ("h3", "lat", "lng", "store")
GET_HEALTH = ("store",)
_HINTS = {
    "lat": "degrees, -90..90",
    "lng": "degrees, -180..180",
    "radius_km": "km, > 0",
    "min_score": "cosine similarity, -1..1",
    "min_separation_km": "km, >= 0",
    "exclude_within_km": "km, >= 0",
    "alpha": "0..1",
}


class Text(str):
    """A query-string value: text that may spell a number or a boolean (JSON values must be typed)."""


def search_params(p: dict) -> tuple[Query, SearchOptions, str | None]:
    """The query, options and store a ``/search`` request names (query text or a JSON body).

    Raises:
        InvalidInputError: a value of the wrong type or out of range, or an impossible combination.
    """
    return _query(p), _options(p), _store(p)


def cell_params(p: dict) -> tuple[int | None, float | None, float | None, str | None]:
    """The cell (uint64) or point (lat, lng degrees) and the store a ``GET /cell`` request names.

    Raises:
        InvalidInputError: neither or both of ``h3`` and a point, or a bad value.
    """
    h3 = p.get("h3")
    if h3 is not None and ("lat" in p or "lng" in p):
        raise InvalidInputError("give h3, or lat and lng, not both")
    lat, lng = _number(p, "lat"), _number(p, "lng")
    if h3 is None and (lat is None or lng is None):
        raise InvalidInputError("GET /cell needs h3=<H3 cell id>, or lat and lng")
    return (cell_from_string(h3) if h3 is not None else None), lat, lng, _store(p)


def classify_params(p: dict) -> dict:
    """Keyword arguments of :meth:`SearchService.classify` from a ``POST /classify`` body (JSON values).

    Returns:
        ``labels`` (uint64 cell -> class name, or None), ``positive`` and ``negative`` (uint64 cells),
        ``region`` (a :class:`GeoFilter`), ``classifier``, ``geometry`` and ``store``.

    Raises:
        InvalidInputError: a value of the wrong type or out of range, no region or several, labels given
            both ways.
    """
    labels = _labels(p.get("labels"))
    positive, negative = _label_cells(p.get("positive"), "positive"), _label_cells(p.get("negative"), "negative")
    if labels is not None and (positive or negative):
        raise InvalidInputError("give labels, or positive (and negative) cells, not both")
    if labels is None and not positive:
        hint = " (negative cells need positive ones)" if negative else ""
        raise InvalidInputError(
            'give labels {"<h3 cell>": "<class>", ...} with at least 2 classes, or positive cells (and optionally '
            f"negative){hint}"
        )
    classifier = p.get("classifier", CLASSIFIERS[0])
    if not isinstance(classifier, str) or classifier not in CLASSIFIERS:
        raise InvalidInputError(f"classifier must be one of {', '.join(CLASSIFIERS)}, got {quoted(classifier)}")
    geometry = p.get("geometry", True)
    if not isinstance(geometry, bool):
        raise InvalidInputError(f"geometry must be true or false, got {quoted(geometry)}")
    return {
        "labels": labels,
        "region": _region(p),
        "positive": positive,
        "negative": negative,
        "classifier": classifier,
        "geometry": geometry,
        "store": _store(p),
    }


def _labels(value: object) -> dict[int, str] | None:
    """``{"<h3 cell>": "<class>", ...}`` as uint64 cell -> class name."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidInputError(f'labels must be a JSON object {{"<h3 cell>": "<class>", ...}}, got {quoted(value)}')
    if len(value) > MAX_LABELS:  # before parsing each: a body may list thousands
        raise InvalidInputError(f"at most {MAX_LABELS:,} labelled cells, got {len(value):,}")
    labels: dict[int, str] = {}
    for text, name in value.items():
        cell = cell_from_string(text, "each labels key")
        if not isinstance(name, str):
            raise InvalidInputError(f"labels values must be class names (strings), got {quoted(name)} for {text!r:.40}")
        if cell in labels:
            raise InvalidInputError(f"H3 cell {text!r:.40} is labelled more than once; keep one label")
        labels[cell] = name
    return labels


def _label_cells(value: object, name: str) -> tuple[int, ...]:
    """H3 ids from a JSON list of strings, at most :data:`MAX_LABELS`."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidInputError(f"{name} must be a list of H3 cell id strings, got {quoted(value)}")
    if len(value) > MAX_LABELS:
        raise InvalidInputError(f"at most {MAX_LABELS:,} {name} cells, got {len(value):,}")
    return tuple(cell_from_string(v, name) for v in value)


def _region(p: dict) -> GeoFilter:
    """The one region a body names: ``bbox``, ``polygon``, or ``lat``, ``lng`` and ``radius_km``."""
    radius = [name for name in ("lat", "lng", "radius_km") if name in p]
    given = ["bbox"] * ("bbox" in p) + ["polygon"] * ("polygon" in p) + (["lat/lng/radius_km"] if radius else [])
    if len(given) != 1:
        listed = f"; got {' and '.join(given)}" if given else ""
        raise InvalidInputError(
            f"give one region: bbox [west, south, east, north], polygon [[lng, lat], ...], or lat, lng and "
            f"radius_km{listed}"
        )
    if "bbox" in p:
        return GeoFilter(bbox=_bbox(p["bbox"]))
    if "polygon" in p:
        return GeoFilter(polygon=_polygon(p["polygon"]))
    if len(radius) != 3:
        raise InvalidInputError(f"a radius region needs lat, lng and radius_km; got only {', '.join(radius)}")
    return GeoFilter(lat=_number(p, "lat"), lng=_number(p, "lng"), radius_km=_number(p, "radius_km"))


def _query(p: dict) -> Query:
    if "h3" in p and "positive" in p:
        raise InvalidInputError("give h3 or positive, not both")
    cells = _cells(p.get("h3", p.get("positive")), "positive" if "positive" in p else "h3")
    vector = p.get("vector")
    if vector is not None and not isinstance(vector, list):
        raise InvalidInputError("vector must be a JSON array of numbers")
    return Query(
        lat=_number(p, "lat"),
        lng=_number(p, "lng"),
        cells=cells,
        negative=_cells(p.get("negative"), "negative"),
        vector=None if vector is None else tuple(vector),
        **({"alpha": _number(p, "alpha")} if "alpha" in p else {}),
    )


def _options(p: dict) -> SearchOptions:
    k = p.get("k", 10)
    if isinstance(k, Text):
        if not re.fullmatch(r"\s*[+-]?\d{1,9}\s*", k):
            raise InvalidInputError(f"k must be an integer, 1..1000, got {quoted(k)}")
        k = int(k)
    include = p.get("include_query", False)
    if isinstance(include, Text):
        if include.strip().lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise InvalidInputError(f"include_query must be true or false, got {quoted(include)}")
        include = include.strip().lower() in ("true", "1", "yes")
    return SearchOptions(
        k=k,
        radius_km=_number(p, "radius_km"),
        bbox=_bbox(p.get("bbox")),
        polygon=_polygon(p.get("polygon")),
        min_score=_number(p, "min_score"),
        min_separation_km=_number(p, "min_separation_km") or 0.0,
        exclude_within_km=_number(p, "exclude_within_km") or 0.0,
        include_query=include,
    )


def _store(p: dict) -> str | None:
    store = p.get("store")
    if store is not None and not isinstance(store, str):
        raise InvalidInputError(f"store must be a string such as 'faiss', got {quoted(store)}")
    return None if store is None else str(store)


def _number(p: dict, name: str) -> float | None:
    """A parameter as a finite float (from query text or a JSON number), or None when absent."""
    value = p.get(name)
    if value is None:
        return None
    hint = f" ({_HINTS[name]})" if name in _HINTS else ""
    if isinstance(value, Text):
        try:
            if "_" in value:  # float() reads "1_0" as 10; a client means no such thing
                raise ValueError(value)
            number = float(value)
        except ValueError:
            raise InvalidInputError(f"{name} must be a number{hint}, got {quoted(value)}") from None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)  # JSON integers past 18 digits arrive as floats: no overflow here
    else:
        raise InvalidInputError(f"{name} must be a number{hint}, got {quoted(value)}")
    if not math.isfinite(number):
        raise InvalidInputError(f"{name} must be a finite number{hint}, got {quoted(value)}")
    return number


def _bbox(value: object) -> tuple[float, ...] | None:
    if value is None:
        return None
    parts = [Text(v) for v in value.split(",")] if isinstance(value, str) else value
    if not isinstance(parts, list) or len(parts) != 4:
        raise InvalidInputError(f"bbox must be west,south,east,north (4 numbers, degrees), got {quoted(value)}")
    return tuple(_number({"bbox": v}, "bbox") for v in parts)


def _polygon(value: object) -> tuple[tuple[float, float], ...] | None:
    """A ring from ``lng,lat,lng,lat,...`` (query text) or ``[[lng, lat], ...]`` (JSON)."""
    if value is None:
        return None
    shape = "lng,lat,lng,lat,... (at least 3 vertices, degrees) or, in JSON, [[lng, lat], ...]"
    if isinstance(value, str):
        numbers = [_number({"polygon": Text(v)}, "polygon") for v in value.split(",")]
        if len(numbers) % 2:
            raise InvalidInputError(f"polygon must be {shape}; got an odd count of numbers, {len(numbers)}")
        return tuple(zip(numbers[::2], numbers[1::2], strict=True))
    if not isinstance(value, list) or not all(isinstance(v, list) and len(v) == 2 for v in value):
        raise InvalidInputError(f"polygon must be {shape}, got {quoted(value)}")
    return tuple((_number({"polygon": x}, "polygon"), _number({"polygon": y}, "polygon")) for x, y in value)


def _cells(value: object, name: str) -> tuple[int, ...]:
    """H3 ids from a comma-separated string (query) or a list of strings (JSON)."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        raise InvalidInputError(f"{name} must be a list of H3 cell id strings, got {quoted(value)}")
    if len(items) > MAX_QUERY_CELLS:  # before parsing each: a body may list thousands
        what = "negative cells" if name == "negative" else "cells"
        raise InvalidInputError(f"at most {MAX_QUERY_CELLS} {what} per query, got {len(items)}")
    return tuple(cell_from_string(v, name) for v in items)
