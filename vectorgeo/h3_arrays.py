"""Arrays of H3 cells, vectorised through h3ronpy: checked ids and their centres.

One home for what the stencil, the GeoParquet writer and the COG rasteriser all need, so each
checks ids and finds centres the same way (h3-py's own functions work one cell at a time).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from vectorgeo.errors import InvalidInputError

__all__ = ["cells_to_latlng", "check_cells"]


def check_cells(h3: np.ndarray, *, one_resolution: bool = False) -> tuple[np.ndarray, int | None]:
    """Validated ids as a contiguous 1-D uint64 array, and their resolution when asked for one.

    Args:
        h3: uint64 H3 cell ids (any shape; flattened).
        one_resolution: Require every cell at one resolution (and at least one cell), and return it.

    Returns:
        ``(ids, resolution)``; ``resolution`` is None unless ``one_resolution``.

    Raises:
        InvalidInputError: not uint64, an invalid id, or (``one_resolution``) no cell or mixed resolutions.
    """
    from h3ronpy import cells_resolution, cells_valid

    h3 = np.asarray(h3)
    if h3.dtype != np.uint64:
        raise InvalidInputError(f"h3 ids must be uint64, got {h3.dtype}; convert with h3.api.numpy_int or h3ronpy")
    h3 = np.ascontiguousarray(h3.ravel())
    if not h3.size:
        if one_resolution:
            raise InvalidInputError("no cells given; a grid needs at least one cell")
        return h3, None
    arrow_cells = pa.array(h3, type=pa.uint64())
    valid = pa.array(cells_valid(arrow_cells)).is_valid().to_numpy(zero_copy_only=False)  # invalid ids come back null
    if not valid.all():
        raise InvalidInputError(
            f"{int((~valid).sum())} invalid H3 cell ids, first {int(h3[~valid][0]):#x}; drop or fix them"
        )
    if not one_resolution:
        return h3, None
    resolutions = np.unique(np.asarray(pa.array(cells_resolution(arrow_cells))))
    if resolutions.size != 1:
        raise InvalidInputError(f"cells mix resolutions {resolutions.tolist()}; use one resolution at a time")
    return h3, int(resolutions[0])


def cells_to_latlng(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centres of many H3 cells at once.

    Args:
        cells: uint64 H3 cell ids.

    Returns:
        ``(lat, lng)`` float64 arrays in degrees.
    """
    from h3ronpy.vector import cells_to_coordinates

    cells = np.ascontiguousarray(cells, dtype=np.uint64)
    if cells.size == 0:
        return np.empty(0), np.empty(0)
    coords = cells_to_coordinates(pa.array(cells, type=pa.uint64()))
    return np.asarray(coords.column("lat")), np.asarray(coords.column("lng"))
