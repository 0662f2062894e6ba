"""Land-cover legends: class code -> contiguous class index, by lookup table.

Rasters store product-specific codes (LC100 uses 0, 20, ... 200); the model
wants contiguous indices 0..n-1 in uint8. A :class:`Legend` maps one to the
other with a lookup table, so a whole block converts in one numpy take and
no pixel ever passes through Python. Index 255 (:data:`NODATA_INDEX`) marks
nodata; a code the legend does not list raises :class:`UnknownClassCodeError`
instead of being silently mapped to something.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vectorgeo.errors import InvalidInputError, UnknownClassCodeError

__all__ = [
    "BUILTIN_LEGENDS",
    "NODATA_INDEX",
    "Legend",
    "get_legend",
    "hex_to_rgb",
    "read_legend_file",
]

NODATA_INDEX = 255
"""Class index used for nodata pixels (and never for a real class)."""


def hex_to_rgb(colour: str) -> tuple[int, int, int]:
    """``"#rrggbb"`` (the colours legends and classifiers carry) as ``(r, g, b)`` integers 0..255."""
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


_UNMAPPED = 65535  # lookup-table entry for codes the legend does not list


@dataclass(frozen=True)
class Legend:
    """An ordered set of land-cover classes.

    Attributes:
        name: Short identifier stored in model sidecars (``"lc100"``).
        codes: Raster codes, one per class; a class's index is its position.
        names: Human-readable class names, same order as ``codes``.
        colors: ``#rrggbb`` display colours, same order as ``codes``.
        sea_codes: Codes that mean open sea; a stencil cell whose centre falls
            on one of them is not land.
    """

    name: str
    codes: tuple[int, ...]
    names: tuple[str, ...]
    colors: tuple[str, ...] = ()
    sea_codes: frozenset[int] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if not self.codes:
            raise InvalidInputError(f"legend {self.name!r} lists no classes")
        if len(self.codes) >= NODATA_INDEX:
            raise InvalidInputError(
                f"legend {self.name!r} has {len(self.codes)} classes; at most "
                f"{NODATA_INDEX - 1} fit in uint8 class indices"
            )
        if len(set(self.codes)) != len(self.codes):
            raise InvalidInputError(f"legend {self.name!r} repeats a class code")
        if len(self.names) != len(self.codes):
            raise InvalidInputError(f"legend {self.name!r}: {len(self.codes)} codes but {len(self.names)} names")
        if self.colors and len(self.colors) != len(self.codes):
            raise InvalidInputError(f"legend {self.name!r}: {len(self.codes)} codes but {len(self.colors)} colours")
        if min(self.codes) < 0 or max(self.codes) > 65534:
            raise InvalidInputError(f"legend {self.name!r}: class codes must lie in 0..65534")
        unknown_sea = set(self.sea_codes) - set(self.codes)
        if unknown_sea:
            raise InvalidInputError(f"legend {self.name!r}: sea codes {sorted(unknown_sea)} are not classes")

    @property
    def n_classes(self) -> int:
        """Number of classes (the depth of a one-hot encoding)."""
        return len(self.codes)

    @property
    def sea_indices(self) -> np.ndarray:
        """Class indices (uint8) of the sea codes."""
        return np.array([self.codes.index(c) for c in sorted(self.sea_codes)], dtype=np.uint8)

    def lookup_table(self) -> np.ndarray:
        """Return a uint16 table of length 65536: code -> class index.

        Codes the legend does not list map to 65535, so callers can tell them
        apart from real classes before narrowing to uint8.
        """
        table = np.full(65536, _UNMAPPED, dtype=np.uint16)
        table[np.asarray(self.codes)] = np.arange(self.n_classes, dtype=np.uint16)
        return table

    def codes_to_indices(self, codes: np.ndarray, nodata: float | int | None = None) -> np.ndarray:
        """Map raster codes to uint8 class indices.

        Args:
            codes: Integer array of raster values, any shape.
            nodata: The raster's nodata value; those pixels become
                :data:`NODATA_INDEX`.

        Returns:
            uint8 array of the same shape.

        Raises:
            UnknownClassCodeError: when a non-nodata pixel holds a code the
                legend does not list (the message lists those codes).
        """
        codes = np.asarray(codes)
        if not np.issubdtype(codes.dtype, np.integer):
            raise InvalidInputError(
                f"land-cover values must be integers, got dtype {codes.dtype}; "
                "is this a continuous raster (a DEM?) passed as land cover?"
            )
        nodata_mask = codes == nodata if nodata is not None else np.zeros(codes.shape, dtype=bool)
        in_range = (codes >= 0) & (codes <= 65535)
        safe = np.where(in_range, codes, 0).astype(np.uint16, copy=False)
        mapped = _lookup(self, safe)
        bad = ((mapped == _UNMAPPED) | ~in_range) & ~nodata_mask
        if bad.any():
            found = np.unique(codes[bad])
            shown = ", ".join(str(int(c)) for c in found[:20])
            more = f" (and {found.size - 20} more)" if found.size > 20 else ""
            raise UnknownClassCodeError(
                f"raster holds class codes [{shown}]{more} that legend {self.name!r} does not list; "
                "pick the legend of that product (VG_LEGEND=lc100|worldcover) or pass a legend file "
                "(CSV or JSON of code,name) that lists every code"
            )
        out = mapped.astype(np.uint8)
        out[nodata_mask] = NODATA_INDEX
        return out

    def to_dict(self) -> dict:
        """JSON-ready description, stored beside models and shards."""
        return {
            "name": self.name,
            "classes": [
                {"code": c, "name": n, **({"color": self.colors[i]} if self.colors else {}), "sea": c in self.sea_codes}
                for i, (c, n) in enumerate(zip(self.codes, self.names, strict=False))
            ],
        }

    @classmethod
    def from_dict(cls, data: dict) -> Legend:
        """Inverse of :meth:`to_dict`."""
        try:
            classes = data["classes"]
            codes = tuple(int(c["code"]) for c in classes)
            names = tuple(str(c["name"]) for c in classes)
            colors = tuple(str(c["color"]) for c in classes) if all("color" in c for c in classes) else ()
            sea = frozenset(int(c["code"]) for c in classes if c.get("sea"))
            return cls(str(data.get("name", "custom")), codes, names, colors, sea)
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(
                f"legend description is malformed ({exc}); expected "
                '{"name": ..., "classes": [{"code": 10, "name": "Forest"}, ...]}'
            ) from exc


_TABLE_CACHE: dict[Legend, np.ndarray] = {}


def _lookup(legend: Legend, codes: np.ndarray) -> np.ndarray:
    table = _TABLE_CACHE.get(legend)
    if table is None:
        table = _TABLE_CACHE[legend] = legend.lookup_table()
    return table[codes]


_LC100 = [
    (0, "Unknown", "#282828"),
    (20, "Shrubs", "#ffbb22"),
    (30, "Herbaceous vegetation", "#ffff4c"),
    (40, "Cultivated and managed vegetation / agriculture", "#f096ff"),
    (50, "Urban / built up", "#fa0000"),
    (60, "Bare / sparse vegetation", "#b4b4b4"),
    (70, "Snow and ice", "#f0f0f0"),
    (80, "Permanent water bodies", "#0032c8"),
    (90, "Herbaceous wetland", "#0096a0"),
    (100, "Moss and lichen", "#fae6a0"),
    (111, "Closed forest, evergreen needle leaf", "#58481f"),
    (112, "Closed forest, evergreen broad leaf", "#009900"),
    (113, "Closed forest, deciduous needle leaf", "#70663e"),
    (114, "Closed forest, deciduous broad leaf", "#00cc00"),
    (115, "Closed forest, mixed", "#4e751f"),
    (116, "Closed forest, other", "#007800"),
    (121, "Open forest, evergreen needle leaf", "#666000"),
    (122, "Open forest, evergreen broad leaf", "#8db400"),
    (123, "Open forest, deciduous needle leaf", "#8d7400"),
    (124, "Open forest, deciduous broad leaf", "#a0dc00"),
    (125, "Open forest, mixed", "#929900"),
    (126, "Open forest, other", "#648c00"),
    (200, "Oceans, seas", "#000080"),
]

_WORLDCOVER = [
    (10, "Tree cover", "#006400"),
    (20, "Shrubland", "#ffbb22"),
    (30, "Grassland", "#ffff4c"),
    (40, "Cropland", "#f096ff"),
    (50, "Built-up", "#fa0000"),
    (60, "Bare / sparse vegetation", "#b4b4b4"),
    (70, "Snow and ice", "#f0f0f0"),
    (80, "Permanent water bodies", "#0064c8"),
    (90, "Herbaceous wetland", "#0096a0"),
    (95, "Mangroves", "#00cf75"),
    (100, "Moss and lichen", "#fae6a0"),
]


def _builtin(name: str, rows: list[tuple[int, str, str]], sea: set[int]) -> Legend:
    codes, names, colors = zip(*rows, strict=False)
    return Legend(name, tuple(codes), tuple(names), tuple(colors), frozenset(sea))


BUILTIN_LEGENDS: dict[str, Legend] = {
    "lc100": _builtin("lc100", _LC100, {200}),
    "worldcover": _builtin("worldcover", _WORLDCOVER, set()),
}
"""Legends that ship with VectorGeo: Copernicus LC100 (23 classes, the
default) and ESA WorldCover (11 classes; its sea is class 80, shared with
inland water, so the land mask alone separates sea)."""


def get_legend(name_or_path: str) -> Legend:
    """Return a built-in legend by name, or read a legend file.

    Args:
        name_or_path: ``"lc100"``, ``"worldcover"``, or a path to a ``.csv`` /
            ``.json`` legend file (see :func:`read_legend_file`).

    Raises:
        InvalidInputError: for an unknown name or a malformed file.
    """
    key = name_or_path.strip().lower()
    if key in BUILTIN_LEGENDS:
        return BUILTIN_LEGENDS[key]
    path = Path(name_or_path).expanduser()
    if path.suffix.lower() in {".csv", ".json"}:
        return read_legend_file(path)
    raise InvalidInputError(
        f"unknown legend {name_or_path!r}; use one of {sorted(BUILTIN_LEGENDS)} or the path of a .csv/.json legend file"
    )


def read_legend_file(path: str | Path) -> Legend:
    """Read a user legend for any other product (CORINE, NLCD, MODIS, ...).

    CSV: a header row with ``code`` and ``name`` columns, optional ``color``
    (``#rrggbb``) and ``sea`` (``1``/``true`` for open-sea classes). JSON: the
    :meth:`Legend.to_dict` form. The legend is named after the file stem.

    Raises:
        InvalidInputError: when the file is missing or malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"legend file {str(path)!r} does not exist; pass a built-in name or an existing file")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"legend file {str(path)!r} is not valid JSON: {exc}") from exc
        data.setdefault("name", path.stem)
        return Legend.from_dict(data)
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"code", "name"} <= set(rows[0]):
        raise InvalidInputError(f"legend file {str(path)!r} needs a header row with 'code' and 'name' columns")
    classes = []
    for line_no, row in enumerate(rows, start=2):
        try:
            code = int(row["code"])
        except (TypeError, ValueError):
            raise InvalidInputError(
                f"legend file {str(path)!r} line {line_no}: code {row['code']!r} is not an integer"
            ) from None
        entry = {"code": code, "name": row["name"].strip()}
        if row.get("color"):
            entry["color"] = row["color"].strip()
        entry["sea"] = str(row.get("sea", "")).strip().lower() in {"1", "true", "yes"}
        classes.append(entry)
    return Legend.from_dict({"name": path.stem, "classes": classes})
