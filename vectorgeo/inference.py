"""Chunked, batched embedding of stencil cells into Parquet parts.

The stencil is sorted by H3 id, and H3 ids sort hierarchically, so a run of
consecutive rows is a compact patch of ground: a part is such a run. Its
land-cover (and DEM) patches come from few, block-ordered raster reads; the
encoder sees uint8 class indices; invalid patches (raster edge, nodata) are
counted and skipped. Each part records, beside every embedding, the patch's
class fractions and mean elevation, so a match can be explained later.
"""

from __future__ import annotations

import json
import logging
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vectorgeo.errors import InvalidInputError
from vectorgeo.legends import Legend
from vectorgeo.patch_stats import class_fractions
from vectorgeo.raster import dem_patches, extract_patches

if TYPE_CHECKING:
    import keras
    from rasterio.io import DatasetReader

__all__ = [
    "CellEmbeddings",
    "plan_parts",
    "assign_parts",
    "embed_cells",
    "embeddings_table",
    "write_part",
    "read_part_metadata",
    "read_embeddings",
    "read_part_arrays",
]

logger = logging.getLogger(__name__)


@dataclass
class CellEmbeddings:
    """Embeddings of the valid cells among those asked for.

    Attributes:
        valid: bool ``(N,)`` over the cells asked for.
        embeddings: float32 ``(V, D)`` unit vectors of the valid cells.
        fractions: float32 ``(V, C)`` class shares of each valid patch.
        mean_elevation_m: float32 ``(V,)`` mean DEM over the patch, from an 8 x 8
            grid of points for 32-px patches (NaN without a DEM).
    """

    valid: np.ndarray
    embeddings: np.ndarray
    fractions: np.ndarray
    mean_elevation_m: np.ndarray


def plan_parts(n_cells: int, chunk_size: int) -> list[tuple[int, int]]:
    """Row ranges ``[start, stop)`` of at most ``chunk_size`` stencil rows."""
    if chunk_size < 1:
        raise InvalidInputError(f"chunk_size must be >= 1, got {chunk_size}")
    return [(start, min(start + chunk_size, n_cells)) for start in range(0, n_cells, chunk_size)]


def assign_parts(n_parts: int, n_workers: int) -> list[list[int]]:
    """Spread part numbers round-robin over at most ``n_workers`` workers."""
    if n_workers < 1:
        raise InvalidInputError(f"n_workers must be >= 1, got {n_workers}")
    return [list(range(w, n_parts, n_workers)) for w in range(min(n_workers, n_parts))]


def embed_cells(
    encoder: keras.Model,
    landcover: DatasetReader,
    legend: Legend,
    lat: np.ndarray,
    lng: np.ndarray,
    *,
    patch_px: int,
    use_dem: bool = False,
    dem: DatasetReader | None = None,
    batch_size: int = 512,
    prefetch_cells: int = 4096,
) -> CellEmbeddings:
    """Embed the cells centred at ``lat, lng``.

    Cells go through in slices of ``prefetch_cells``: while the encoder runs
    on one slice, a second thread reads and prepares the next (GDAL and numpy
    release the GIL), so reading does not stall the model, least of all a GPU.

    Args:
        encoder: Keras encoder from :func:`vectorgeo.model_files.load_model`.
        landcover: Open land-cover raster.
        legend: Its legend (must match the model's).
        lat: Cell-centre latitudes, degrees.
        lng: Cell-centre longitudes, degrees.
        patch_px: The model's patch size in pixels.
        use_dem: The model takes a DEM channel; patches without a full DEM are invalid.
        dem: Optional open DEM (required when ``use_dem``); gives each cell's mean elevation.
        batch_size: Cells per forward pass.
        prefetch_cells: Cells prepared ahead of the model.

    Returns:
        :class:`CellEmbeddings`.
    """
    from vectorgeo.encoder import embed

    if use_dem and dem is None:
        raise InvalidInputError("this model reads a DEM channel, but no DEM was given; set --dem / VG_DEM")
    lat, lng = np.asarray(lat), np.asarray(lng)
    slices = [slice(s, s + prefetch_cells) for s in range(0, lat.size, prefetch_cells)] or [slice(0, 0)]

    def prepare(sl: slice) -> _Prepared:
        return _prepare(landcover, legend, lat[sl], lng[sl], patch_px=patch_px, use_dem=use_dem, dem=dem)

    prepared: list[_Prepared] = []
    vectors: list[np.ndarray] = []
    carry = np.empty((0, patch_px, patch_px), np.uint8)  # valid cells waiting to fill a whole batch
    carry_dem = np.empty((0, patch_px, patch_px), np.float32) if use_dem else None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vg-prefetch") as pool:
        pending = pool.submit(prepare, slices[0])
        for k in range(len(slices)):
            ready = pending.result()
            last = k + 1 == len(slices)
            if not last:
                pending = pool.submit(prepare, slices[k + 1])
            prepared.append(ready)
            classes = np.concatenate([carry, ready.classes])
            dems = np.concatenate([carry_dem, ready.dem]) if use_dem else None
            take = classes.shape[0] if last else classes.shape[0] - classes.shape[0] % batch_size
            if take:
                vectors.append(
                    embed(encoder, classes[:take], None if dems is None else dems[:take], batch_size=batch_size)
                )
            carry, carry_dem = classes[take:], None if dems is None else dems[take:]
    embeddings = np.concatenate(vectors) if vectors else np.empty((0, encoder.output_shape[-1]), dtype=np.float32)
    if not np.isfinite(embeddings).all():
        bad = int((~np.isfinite(embeddings).all(axis=1)).sum())
        raise InvalidInputError(
            f"the model gave non-finite embeddings for {bad} of {embeddings.shape[0]} cells; it is broken "
            "(see its training diagnostics) and nothing was written"
        )
    return CellEmbeddings(
        valid=np.concatenate([r.valid for r in prepared]),
        embeddings=embeddings,
        fractions=np.concatenate([r.fractions for r in prepared]),
        mean_elevation_m=np.concatenate([r.mean_elevation_m for r in prepared]),
    )


@dataclass
class _Prepared:
    valid: np.ndarray
    classes: np.ndarray
    dem: np.ndarray | None
    fractions: np.ndarray
    mean_elevation_m: np.ndarray


_ELEVATION_STRIDE = 4  # mean elevation from an 8 x 8 grid of a 32-px patch: plenty for a mean


def _prepare(
    landcover: DatasetReader,
    legend: Legend,
    lat: np.ndarray,
    lng: np.ndarray,
    *,
    patch_px: int,
    use_dem: bool,
    dem: DatasetReader | None,
) -> _Prepared:
    """Patches, validity, class fractions and mean elevation of some cells (no model)."""
    patches = extract_patches(landcover, lat, lng, legend, patch_px=patch_px)
    valid = patches.valid.copy()
    dem_in = None
    if use_dem:
        elevation = dem_patches(dem, landcover, lat, lng, patch_px=patch_px)
        valid &= np.isfinite(elevation).all(axis=(1, 2))
        dem_in = elevation[valid]
        samples = dem_in.reshape(dem_in.shape[0], -1)
    elif dem is not None:
        samples = dem_patches(dem, landcover, lat, lng, patch_px=patch_px, stride=_ELEVATION_STRIDE)[valid]
        samples = samples.reshape(samples.shape[0], -1)
    classes = patches.classes[valid]
    mean_elev = np.full(classes.shape[0], np.nan, dtype=np.float32)
    if dem is not None and classes.shape[0]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN patch has a NaN mean, as it should
            mean_elev = np.nanmean(samples, axis=1).astype(np.float32)
    return _Prepared(valid, classes, dem_in, class_fractions(classes, legend.n_classes), mean_elev)


def embeddings_table(
    h3: np.ndarray,
    lat: np.ndarray,
    lng: np.ndarray,
    cells: CellEmbeddings,
    model_name: str,
) -> pa.Table:
    """Arrow table of the valid cells: ids, centres, unit vectors, explanations.

    Columns: ``h3`` uint64, ``lat``/``lng`` float64, ``embedding`` fixed-size
    list of float32, ``class_fractions`` fixed-size list of float32,
    ``mean_elevation_m`` float32, ``model`` (dictionary-encoded string).
    """
    v = cells.valid
    n = int(v.sum())
    dim, n_classes = cells.embeddings.shape[1], cells.fractions.shape[1]
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(cells.embeddings.reshape(-1), pa.float32()), dim)
    fractions = pa.FixedSizeListArray.from_arrays(pa.array(cells.fractions.reshape(-1), pa.float32()), n_classes)
    model = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), pa.array([model_name]))
    return pa.table(
        {
            "h3": pa.array(np.asarray(h3)[v], pa.uint64()),
            "lat": pa.array(np.asarray(lat)[v], pa.float64()),
            "lng": pa.array(np.asarray(lng)[v], pa.float64()),
            "embedding": embedding,
            "class_fractions": fractions,
            "mean_elevation_m": pa.array(cells.mean_elevation_m, pa.float32()),
            "model": model,
        }
    )


def write_part(table: pa.Table, path: str | Path, metadata: dict) -> Path:
    """Write one part as Parquet with ``metadata`` (JSON) in the schema."""
    schema = table.schema.with_metadata({b"vectorgeo": json.dumps(metadata).encode()})
    pq.write_table(table.cast(schema), path, compression="zstd")
    return Path(path)


def read_part_metadata(path: str | Path) -> dict:
    """The ``vectorgeo`` metadata of a part (reads only the footer)."""
    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta.get(b"vectorgeo", b"{}"))


def read_part_arrays(path: str | Path, limit: int = 1 << 62) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(h3 uint64, lat, lng, float32 (N, D) vectors)`` of a part's first ``limit`` rows, for loading stores."""
    table = pq.read_table(path, columns=["h3", "lat", "lng", "embedding"])
    table = table.slice(0, min(limit, table.num_rows))
    dim = table.schema.field("embedding").type.list_size  # known even for a part with no valid cell
    flat = table.column("embedding").combine_chunks().flatten() if table.num_rows else []
    vectors = np.asarray(flat, dtype=np.float32).reshape(table.num_rows, dim)
    return table.column("h3").to_numpy(), table.column("lat").to_numpy(), table.column("lng").to_numpy(), vectors


def read_embeddings(paths: list[str | Path]) -> pa.Table:
    """Concatenate parts into one table (embedding columns as fixed-size lists)."""
    if not paths:
        raise InvalidInputError("no embedding parts to read; run flow 03 first")
    return pa.concat_tables([pq.read_table(p) for p in paths]).combine_chunks()
