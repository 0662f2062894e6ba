"""Labelled places in: GeoJSON points or polygons, or a CSV of cells or points, as labelled H3 cells.

A user's labels become one class per H3 cell at the embeddings' resolution:

* a GeoJSON Point (or MultiPoint) labels the cell that contains it;
* a Polygon (or MultiPolygon) labels every cell whose centre lies inside it (h3's polygon fill);
  a polygon too small to hold a cell centre labels the cell under its first vertex, so no
  feature is silently lost;
* a CSV row gives ``h3`` (a hex id at any resolution finer or equal: its ancestor at the
  embeddings' resolution is used), or ``lat`` and ``lng``, and the class in ``label`` (or the
  column named by ``class_property``).

Every problem is one :class:`~vectorgeo.errors.InvalidInputError` naming the feature or row and
the fix, raised before anything is written: a missing class property, an empty class, a
self-crossing polygon, a cell labelled with two classes, a class with fewer than
:data:`MIN_PER_CLASS` cells, and (:func:`check_footprint`) labels outside the embeddings.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import h3.api.basic_int as h3i
import numpy as np

from vectorgeo.errors import InvalidInputError

__all__ = ["MIN_PER_CLASS", "LabelSet", "check_footprint", "parse_labels", "read_labels"]

MIN_PER_CLASS = 2
"""Fewest labelled cells a class needs (one to train on, one to test on)."""
MAX_CLASSES = 255
"""Most classes (the class map is a uint8 raster with 255 as nodata)."""
MAX_POLYGON_CELLS = 1_000_000
"""Most cells one label polygon may cover (estimated from its area before filling)."""


@dataclass(frozen=True)
class LabelSet:
    """Labelled H3 cells: one class per cell, sorted by cell id.

    Attributes:
        h3: uint64 cell ids at ``h3_resolution``, unique, ascending.
        label: int32 class index of each cell, into ``classes``.
        classes: Class names, sorted.
        h3_resolution: Resolution of the cells.
        source: Where the labels came from (a path or bucket key), for the registry.
        sha256: Checksum of the label file's bytes.
    """

    h3: np.ndarray
    label: np.ndarray
    classes: tuple[str, ...]
    h3_resolution: int
    source: str
    sha256: str

    def counts(self) -> dict[str, int]:
        """Labelled cells per class."""
        n = np.bincount(self.label, minlength=len(self.classes))
        return {name: int(c) for name, c in zip(self.classes, n, strict=True)}


def read_labels(path: str | Path, *, h3_resolution: int, class_property: str = "class", source: str = "") -> LabelSet:
    """Read a label file (``.geojson``/``.json`` or ``.csv``) into labelled cells.

    Args:
        path: Local file.
        h3_resolution: Resolution of the embeddings the labels are for.
        class_property: GeoJSON property (or CSV column) holding the class; a CSV without it uses ``label``.
        source: Name recorded as the labels' origin (default: the path).

    Raises:
        InvalidInputError: an unreadable file or any bad label (see the module docstring).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"cannot read the label file {str(path)!r}: {exc.strerror or exc}") from exc
    return parse_labels(data, path.name, h3_resolution=h3_resolution, class_property=class_property,
                        source=source or str(path))  # fmt: skip


def parse_labels(
    data: bytes, name: str, *, h3_resolution: int, class_property: str = "class", source: str = ""
) -> LabelSet:
    """Like :func:`read_labels`, from the bytes of a file called ``name`` (its suffix picks the format)."""
    if not 0 <= h3_resolution <= 15:
        raise InvalidInputError(f"h3_resolution must lie in 0..15, got {h3_resolution}")
    suffix = Path(name).suffix.lower()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"label file {name!r} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    if suffix in (".geojson", ".json"):
        pairs = _geojson_cells(text, name, h3_resolution, class_property)
    elif suffix == ".csv":
        pairs = _csv_cells(text, name, h3_resolution, class_property)
    else:
        raise InvalidInputError(f"label file {name!r} must end in .geojson, .json or .csv")
    return _label_set(pairs, name, h3_resolution, source or name, hashlib.sha256(data).hexdigest())


def check_footprint(labels: LabelSet, embedded_h3: np.ndarray) -> None:
    """Refuse labels on cells that have no embedding (sea, outside the raster, or an invalid patch).

    Args:
        labels: The labelled cells.
        embedded_h3: uint64 ids of every embedded cell, sorted ascending.

    Raises:
        InvalidInputError: naming how many labelled cells lie outside, and a few of them.
    """
    pos = np.searchsorted(embedded_h3, labels.h3)
    inside = pos < embedded_h3.size
    inside[inside] = embedded_h3[pos[inside]] == labels.h3[inside]
    if not inside.all():
        outside = labels.h3[~inside]
        shown = ", ".join(f"{h3i.int_to_str(int(c))} ({labels.classes[labels.label[~inside][i]]})"
                          for i, c in enumerate(outside[:5]))  # fmt: skip
        raise InvalidInputError(
            f"{outside.size} of {labels.h3.size} labelled cells have no embedding (sea, outside the embedded area, "
            f"or an invalid patch): {shown}; move or drop those labels, or embed a larger area with flow 03"
        )


# --- GeoJSON ---------------------------------------------------------------------------------------------------


def _geojson_cells(text: str, name: str, res: int, class_property: str) -> list[tuple[int, str, str]]:
    """``(cell, class, where)`` for every cell each feature labels."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"label file {name!r} is not valid JSON: {exc}") from exc
    if isinstance(doc, dict) and doc.get("type") == "Feature":
        features = [doc]
    elif isinstance(doc, dict) and doc.get("type") == "FeatureCollection" and isinstance(doc.get("features"), list):
        features = doc["features"]
    else:
        raise InvalidInputError(f"label file {name!r} must hold a GeoJSON FeatureCollection (or one Feature)")
    out: list[tuple[int, str, str]] = []
    for i, feature in enumerate(features):
        where = f"feature {i} of {name!r}"
        if not isinstance(feature, dict) or not isinstance(feature.get("geometry"), dict):
            raise InvalidInputError(f"{where} is not a GeoJSON Feature with a geometry")
        properties = feature.get("properties") or {}
        if not isinstance(properties, dict):
            raise InvalidInputError(f"{where}: its properties must be a JSON object, got {type(properties).__name__}")
        if class_property not in properties:
            present = sorted(properties)[:10]
            raise InvalidInputError(
                f"{where} has no property {class_property!r} (it has {present or 'none'}); "
                "pass the name of the class property with --class_property"
            )
        label = _class_name(properties[class_property], where)
        out.extend((cell, label, where) for cell in _geometry_cells(feature["geometry"], res, where))
    return out


def _geometry_cells(geometry: dict, res: int, where: str) -> list[int]:
    kind, coords = geometry.get("type"), geometry.get("coordinates")
    try:
        if kind == "Point":
            return [_point_cell(coords, res, where)]
        if kind == "MultiPoint":
            if not coords:
                raise InvalidInputError(f"{where} is an empty MultiPoint; give it points or drop the feature")
            return [_point_cell(c, res, where) for c in coords]
        if kind == "Polygon":
            return _polygon_cells([coords], res, where)
        if kind == "MultiPolygon":
            return _polygon_cells(coords, res, where)
    except InvalidInputError:
        raise
    except (TypeError, ValueError, IndexError) as exc:
        raise InvalidInputError(f"{where} has malformed {kind} coordinates ({exc})") from exc
    raise InvalidInputError(f"{where} is a {kind}; labels must be Point, MultiPoint, Polygon or MultiPolygon")


def _point_cell(coords, res: int, where: str) -> int:
    lng, lat = float(coords[0]), float(coords[1])
    if not (-90 <= lat <= 90 and -180 <= lng <= 180):
        raise InvalidInputError(f"{where}: point [{lng}, {lat}] is not [lng, lat] in degrees (GeoJSON order)")
    return int(h3i.latlng_to_cell(lat, lng, res))


def _polygon_cells(polygons: list, res: int, where: str) -> list[int]:
    import shapely
    from shapely.geometry import shape
    from shapely.validation import explain_validity

    geometry = {"type": "MultiPolygon", "coordinates": polygons}
    geom = shape(geometry)
    if geom.is_empty:
        raise InvalidInputError(f"{where} is an empty polygon")
    if not geom.is_valid:
        raise InvalidInputError(
            f"{where} is not a valid polygon ({explain_validity(geom)}): rings must not cross themselves or each "
            "other; fix it in your GIS (e.g. QGIS 'Fix geometries') and export again"
        )
    west, south, east, north = shapely.bounds(geom).tolist()
    if not (west >= -180 and east <= 180 and south >= -90 and north <= 90):
        raise InvalidInputError(f"{where}: coordinates are not [lng, lat] degrees (GeoJSON order)")
    for ring in (r for polygon in polygons for r in polygon):
        lngs = np.asarray(ring, dtype=np.float64)[:, 0]
        if (np.abs(np.diff(lngs)) > 180).any():
            raise InvalidInputError(
                f"{where} has an edge spanning more than 180 degrees of longitude: if it crosses the antimeridian, "
                "split it there into two polygons"
            )
    mean_lat = math.radians((south + north) / 2)
    area_km2 = shapely.area(geom) * 111.32**2 * max(math.cos(mean_lat), 0.01)
    estimate = area_km2 / h3i.average_hexagon_area(res, "km^2")
    if estimate > MAX_POLYGON_CELLS:
        raise InvalidInputError(
            f"{where} covers about {estimate:,.0f} cells at resolution {res}; a label polygon may cover at most "
            f"{MAX_POLYGON_CELLS:,}: label smaller areas (a classifier learns from a few hundred cells a class)"
        )
    cells = [int(c) for c in h3i.geo_to_cells(geometry, res)]
    if not cells:  # smaller than a cell: label the cell under the polygon's first vertex
        lng, lat = polygons[0][0][0]
        cells = [int(h3i.latlng_to_cell(float(lat), float(lng), res))]
    return cells


# --- CSV -------------------------------------------------------------------------------------------------------


def _csv_cells(text: str, name: str, res: int, class_property: str) -> list[tuple[int, str, str]]:
    reader = csv.DictReader(io.StringIO(text))
    columns = [c.strip() for c in reader.fieldnames or []]
    reader.fieldnames = columns
    label_column = class_property if class_property in columns else "label"
    if label_column not in columns:
        raise InvalidInputError(
            f"label file {name!r} has columns {columns}; it needs a class column ('label' or --class_property) "
            "and either 'h3' or 'lat' and 'lng'"
        )
    by_cell = "h3" in columns
    if not by_cell and not {"lat", "lng"} <= set(columns):
        raise InvalidInputError(f"label file {name!r} has columns {columns}; it needs 'h3', or 'lat' and 'lng'")
    out = []
    for i, row in enumerate(reader, start=2):  # line 1 is the header
        where = f"line {i} of {name!r}"
        label = _class_name(row.get(label_column), where)
        out.append((_csv_cell(row, by_cell, res, where), label, where))
    return out


def _csv_cell(row: dict, by_cell: bool, res: int, where: str) -> int:
    if by_cell:
        text = (row.get("h3") or "").strip()
        try:
            cell = int(h3i.str_to_int(text))
            valid = h3i.is_valid_cell(cell)
        except (ValueError, TypeError, OverflowError):
            valid = False
        if not valid:
            raise InvalidInputError(f"{where}: {text!r} is not an H3 cell id (hex, like 8928308280fffff)")
        cell_res = h3i.get_resolution(cell)
        if cell_res < res:
            raise InvalidInputError(
                f"{where}: cell {text} is at resolution {cell_res}, coarser than the embeddings' {res}; "
                "give a cell at that resolution or finer, or a polygon"
            )
        return int(h3i.cell_to_parent(cell, res)) if cell_res > res else cell
    try:
        lat, lng = float(row["lat"]), float(row["lng"])
    except (TypeError, ValueError):
        raise InvalidInputError(f"{where}: lat {row.get('lat')!r} and lng {row.get('lng')!r} must be numbers") from None
    if not (-90 <= lat <= 90 and -180 <= lng <= 180):
        raise InvalidInputError(f"{where}: lat {lat}, lng {lng} is outside -90..90, -180..180")
    return int(h3i.latlng_to_cell(lat, lng, res))


# --- checks ----------------------------------------------------------------------------------------------------


def _class_name(value: object, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidInputError(f"{where}: the class must be a name (text) or an integer code, got {value!r}")
    name = str(value).strip()
    if not name:
        raise InvalidInputError(f"{where} has an empty class; give every label a class name")
    if len(name) > 64:
        raise InvalidInputError(f"{where}: class name {name[:20]!r}... is longer than 64 characters")
    return name


def _label_set(pairs: Iterable[tuple[int, str, str]], name: str, res: int, source: str, sha256: str) -> LabelSet:
    first: dict[int, tuple[str, str]] = {}
    for cell, label, where in pairs:
        seen = first.setdefault(cell, (label, where))
        if seen[0] != label:
            raise InvalidInputError(
                f"cell {h3i.int_to_str(cell)} is labelled {seen[0]!r} by {seen[1]} and {label!r} by {where}; "
                "one cell takes one class: fix the overlapping labels"
            )
    if not first:
        raise InvalidInputError(f"label file {name!r} labels no cell")
    classes = tuple(sorted({label for label, _ in first.values()}))
    if len(classes) > MAX_CLASSES:
        raise InvalidInputError(f"label file {name!r} has {len(classes)} classes; at most {MAX_CLASSES}")
    index = {c: i for i, c in enumerate(classes)}
    cells = np.fromiter(first, np.uint64, len(first))
    labels = np.fromiter((index[label] for label, _ in first.values()), np.int32, len(first))
    order = np.argsort(cells)
    result = LabelSet(cells[order], labels[order], classes, res, source, sha256)
    few = {c: n for c, n in result.counts().items() if n < MIN_PER_CLASS}
    if few:
        raise InvalidInputError(
            f"classes {few} have fewer than {MIN_PER_CLASS} labelled cells at resolution {res}; label more places "
            "of those classes (or use a polygon) or drop them"
        )
    if len(classes) < 2:
        raise InvalidInputError(f"label file {name!r} has one class ({classes[0]!r}); a classifier needs two or more")
    return result
