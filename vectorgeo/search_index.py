"""Search sidecars: what the search service needs beside the vectors, built once per index.

Flow 04 writes them to the bucket under :func:`vectorgeo.artifacts.search_prefix`
(``indexes/{name}/res{R}/search/``):

* ``h3.npy`` (uint64, sorted ascending), ``class_fractions.npy`` (float16, ``(N, C)``) and
  ``mean_elevation_m.npy`` (float32, NaN where there was no DEM): what each cell's patch holds,
  so every match can be explained.
* ``classes.json``: the legend's class names and ``#rrggbb`` colours, in class-index order.
* ``calibration.json``: model, resolution, count, dim, and quantiles of the cosine similarity
  between random pairs of distinct cells, so a score reads as "more similar than 99.9 % of random
  pairs"; also the source parts with their checksums and the sizes of the files above. Written
  last: its presence marks a complete set.

Reading needs only numpy (the Lambda has no pyarrow); the arrays are memory-mapped, so a large
index costs disk, not RAM. Building reads the embedding parts (downloaded to the bucket cache
first) one at a time into memory-mapped files, keeping in RAM only the vectors of the sampled
pairs; when the parts are not already in id order, the final sort by H3 id reads the attribute
arrays whole (about 50 bytes a cell).
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vectorgeo.errors import InvalidInputError

__all__ = [
    "SIDECAR_FILES",
    "SearchSidecars",
    "build_search_sidecars",
]

logger = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.json"
_ARRAYS = ("h3.npy", "class_fractions.npy", "mean_elevation_m.npy")
_CLASSES = "classes.json"
SIDECAR_FILES = (*_ARRAYS, _CLASSES, CALIBRATION_FILE)
"""Every sidecar file, in upload order (``calibration.json`` last)."""

_PAIR_CHUNK = 65_536  # pairs whose similarity is computed at once


def build_search_sidecars(
    part_paths: list[Path],
    directory: str | Path,
    *,
    model: str,
    h3_resolution: int,
    sources: dict[str, str],
    classes: list[dict] | None = None,
    n_pairs: int = 200_000,
    n_quantiles: int = 1001,
    seed: int = 0,
) -> dict:
    """Write the sidecar files of :data:`SIDECAR_FILES` into ``directory`` from embedding parts.

    Pairs are distinct cells drawn uniformly with ``seed``; when there are no more distinct
    pairs than ``n_pairs``, every pair is used, so the quantiles are exact.

    Args:
        part_paths: Local embedding parts (Parquet, as written by flow 03), read one at a time.
        directory: Where to write the files (created if missing).
        model: Model name, recorded.
        h3_resolution: Resolution of the cells, recorded.
        sources: Source part key -> checksum, recorded so an unchanged index is not rebuilt.
        classes: ``[{"name", "color"}]`` per class index (the legend); None names them ``class 0``, ...
        n_pairs: Random pairs sampled for the calibration.
        n_quantiles: Quantiles stored, evenly spaced from 0 to 1 (1001 = steps of 0.1 %).
        seed: Seed of the pair sample.

    Returns:
        The content of ``calibration.json``.

    Raises:
        InvalidInputError: No part, a part without class fractions, or bad sizes.
    """
    import pyarrow.parquet as pq

    if not part_paths:
        raise InvalidInputError("no embedding parts to index; run flow 03 first")
    if n_pairs < 1 or n_quantiles < 2:
        raise InvalidInputError(f"need n_pairs >= 1 and n_quantiles >= 2, got {n_pairs}, {n_quantiles}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    schema = pq.read_schema(part_paths[0])
    if "class_fractions" not in schema.names:
        raise InvalidInputError(f"embedding part {part_paths[0]} has no class_fractions; rerun flow 03")
    dim = schema.field("embedding").type.list_size
    n_classes = schema.field("class_fractions").type.list_size
    rows = [pq.read_metadata(p).num_rows for p in part_paths]
    n = int(sum(rows))
    if n == 0:
        raise InvalidInputError("the embedding parts hold no cell: nothing to index")
    first, second = _pairs(n, n_pairs, np.random.default_rng(seed))
    wanted = np.unique(np.concatenate([first, second]))
    sample = np.zeros((len(wanted), dim), np.float32)
    h3 = np.lib.format.open_memmap(directory / _ARRAYS[0], "w+", np.uint64, (n,))
    fractions = np.lib.format.open_memmap(directory / _ARRAYS[1], "w+", np.float16, (n, n_classes))
    elevation = np.lib.format.open_memmap(directory / _ARRAYS[2], "w+", np.float32, (n,))
    start = 0
    for path, count in zip(part_paths, rows, strict=True):
        table = pq.read_table(path, columns=["h3", "embedding", "class_fractions", "mean_elevation_m"])
        stop = start + count
        h3[start:stop] = table.column("h3").to_numpy()
        fractions[start:stop] = _fixed_size(table.column("class_fractions"), n_classes)
        elevation[start:stop] = table.column("mean_elevation_m").to_numpy(zero_copy_only=False)
        lo, hi = np.searchsorted(wanted, [start, stop])
        if hi > lo:
            sample[lo:hi] = _fixed_size(table.column("embedding"), dim)[wanted[lo:hi] - start]
        start = stop
    for array in (h3, fractions, elevation):
        array.flush()
    del h3, fractions, elevation
    count = _sort_by_h3(directory)
    sims = _pair_similarities(sample, np.searchsorted(wanted, first), np.searchsorted(wanted, second))
    quantiles = np.quantile(sims, np.linspace(0.0, 1.0, n_quantiles)) if len(sims) else None
    classes = classes or [{"name": f"class {i}", "color": None} for i in range(n_classes)]
    if len(classes) != n_classes:
        raise InvalidInputError(f"the legend lists {len(classes)} classes but the parts hold {n_classes} fractions")
    (directory / _CLASSES).write_text(json.dumps({"classes": classes}, indent=1))
    meta = {
        "format": 1,
        "model": model,
        "h3_resolution": h3_resolution,
        "count": count,
        "dim": int(dim),
        "n_pairs": len(sims),
        "exact": len(sims) == n * (n - 1) // 2,
        "params": {"n_pairs": n_pairs, "n_quantiles": n_quantiles, "seed": seed},
        "quantiles": None if quantiles is None else [round(float(q), 6) for q in quantiles],
        "sources": {str(k): str(v) for k, v in sources.items()},
        "files": {name: (directory / name).stat().st_size for name in (*_ARRAYS, _CLASSES)},
    }
    (directory / CALIBRATION_FILE).write_text(json.dumps(meta, indent=1))
    logger.info("search sidecars for %s res %d: %d cells, %d pairs", model, h3_resolution, count, len(sims))
    return meta


def _pairs(n: int, n_pairs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of distinct pairs: all of them when they fit in ``n_pairs``, else a uniform sample."""
    if n * (n - 1) // 2 <= n_pairs:
        return np.triu_indices(n, 1)
    first = rng.integers(0, n, n_pairs)
    second = rng.integers(0, n - 1, n_pairs)
    return first, second + (second >= first)  # skips first itself, so the pair is distinct


def _pair_similarities(sample: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Cosine similarity (float64) of each pair of rows of unit vectors."""
    out = np.empty(len(first), np.float64)
    for s in range(0, len(first), _PAIR_CHUNK):
        a, b = sample[first[s : s + _PAIR_CHUNK]], sample[second[s : s + _PAIR_CHUNK]]
        out[s : s + _PAIR_CHUNK] = np.einsum("ij,ij->i", a.astype(np.float64), b.astype(np.float64))
    return out


def _fixed_size(column, width: int) -> np.ndarray:
    """A fixed-size-list Arrow column as a 2-D numpy array."""
    flat = column.combine_chunks().flatten() if len(column) else []
    return np.asarray(flat, dtype=np.float32).reshape(len(column), width)


def _sort_by_h3(directory: Path) -> int:
    """Sort the attribute files by H3 id (parts usually arrive sorted), keeping the last row of an id."""
    h3 = np.load(directory / _ARRAYS[0], mmap_mode="r")
    if len(h3) < 2 or bool(np.all(h3[1:] > h3[:-1])):
        return len(h3)
    logger.info("attributes arrive unsorted or with repeated ids: sorting %d rows in memory", len(h3))
    arrays = [np.load(directory / name) for name in _ARRAYS]
    reverse = arrays[0][::-1]
    _, first = np.unique(reverse, return_index=True)
    keep = len(reverse) - 1 - first  # last occurrence of each id, in ascending id order
    for name, array in zip(_ARRAYS, arrays, strict=True):
        np.save(directory / name, array[keep])
    return len(keep)


@dataclass(frozen=True)
class SearchSidecars:
    """The loaded sidecars: score calibration and per-cell attributes.

    Attributes:
        model: Model name.
        h3_resolution: Resolution of the cells.
        dim: Embedding length.
        quantiles: float64 ``(Q,)`` quantiles of random-pair similarity at evenly spaced
            probabilities 0..1, or None when the index holds fewer than two cells.
        h3: uint64 ``(N,)`` sorted cell ids (memory-mapped).
        fractions: float16 ``(N, C)`` class shares of each cell's patch (memory-mapped).
        mean_elevation_m: float32 ``(N,)`` mean DEM over the patch, metres; NaN without a DEM.
        class_names: ``C`` class names.
        class_colors: ``C`` ``#rrggbb`` colours (None where unknown).
    """

    model: str
    h3_resolution: int
    dim: int
    quantiles: np.ndarray | None
    h3: np.ndarray
    fractions: np.ndarray
    mean_elevation_m: np.ndarray
    class_names: tuple[str, ...]
    class_colors: tuple[str | None, ...]

    @classmethod
    def load(cls, directory: str | Path) -> SearchSidecars:
        """Read a complete set from ``directory``.

        Raises:
            InvalidInputError: ``calibration.json`` is missing, or a file does not have its recorded size.
        """
        directory = Path(directory)
        try:
            meta = json.loads((directory / CALIBRATION_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise InvalidInputError(f"no readable {CALIBRATION_FILE} in {directory}: {exc}") from exc
        try:
            for name, size in meta["files"].items():
                if not (directory / name).is_file() or (directory / name).stat().st_size != size:
                    raise InvalidInputError(f"search sidecar {name} in {directory} is missing or incomplete")
            classes = json.loads((directory / _CLASSES).read_text())["classes"]
            # memory-mapped, as plain ndarray views: indexed per answer, several times faster than np.memmap objects
            h3, fractions, elevation = (np.asarray(np.load(directory / name, mmap_mode="r")) for name in _ARRAYS)
            quantiles = meta.get("quantiles")
            return cls(
                model=str(meta["model"]),
                h3_resolution=int(meta["h3_resolution"]),
                dim=int(meta["dim"]),
                quantiles=None if quantiles is None else np.asarray(quantiles, np.float64),
                h3=h3,
                fractions=fractions,
                mean_elevation_m=elevation,
                class_names=tuple(str(c["name"]) for c in classes),
                class_colors=tuple(c.get("color") for c in classes),
            )
        except (KeyError, TypeError, AttributeError, ValueError, OSError) as exc:  # damaged, not merely absent
            raise InvalidInputError(f"the search sidecars in {directory} are damaged ({exc!r}); rerun flow 04") from exc

    def percentile(self, scores: np.ndarray) -> np.ndarray | None:
        """Percentage (0..100) of random pairs of cells less similar than each score; None without calibration.

        Interpolated linearly between the stored quantiles; 0 below the least similar pair, 100 above the most.
        """
        if self.quantiles is None:
            return None
        return np.interp(np.asarray(scores, np.float64), self.quantiles, self._percents, left=0.0, right=100.0)

    @functools.cached_property
    def _percents(self) -> np.ndarray:
        """The percentage each stored quantile stands for (computed once, not per answer)."""
        return np.linspace(0.0, 100.0, len(self.quantiles))

    def positions(self, h3: np.ndarray) -> np.ndarray:
        """Row of each cell in the attribute arrays, -1 where the cell has no attributes."""
        h3 = np.asarray(h3, dtype=np.uint64)
        pos = np.searchsorted(self.h3, h3)
        ok = pos < len(self.h3)
        ok[ok] = self.h3[pos[ok]] == h3[ok]
        return np.where(ok, pos, -1)
