"""Is a point on land? The 1 km global land mask, refined by the raster.

The stencil and the pair sampler must agree on what land is, so both ask
:func:`is_land`: a point is land when the global land mask says so and, if a
land-cover raster is given, the pixel under it is neither nodata, off the
raster, nor one of the legend's sea classes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from vectorgeo.legends import NODATA_INDEX, Legend
from vectorgeo.raster import sample_classes

if TYPE_CHECKING:
    from rasterio.io import DatasetReader

__all__ = ["is_land", "is_land_by_mask"]


def is_land_by_mask(lat: np.ndarray, lng: np.ndarray) -> np.ndarray:
    """Land test against the 1 km GLOBE land mask (``global-land-mask``).

    Args:
        lat: Latitudes in degrees, EPSG:4326.
        lng: Longitudes in degrees, EPSG:4326.

    Returns:
        bool array, True on land.
    """
    from global_land_mask import globe  # ~1 GB mask: load only when asked

    # globe.is_land clips its arguments in place; hand it copies.
    return np.asarray(globe.is_land(np.array(lat, dtype=np.float64), np.array(lng, dtype=np.float64)), dtype=bool)


def is_land(
    lat: np.ndarray,
    lng: np.ndarray,
    dataset: DatasetReader | None = None,
    legend: Legend | None = None,
    *,
    progress: bool = False,
) -> np.ndarray:
    """Land by the global mask and, when a raster is given, by the raster too.

    Args:
        lat: Latitudes in degrees, EPSG:4326.
        lng: Longitudes in degrees, EPSG:4326.
        dataset: Optional open land-cover raster (any CRS).
        legend: The raster's legend; required with ``dataset``.
        progress: Show a progress bar while reading the raster.

    Returns:
        bool array, True where the point is land.
    """
    land = is_land_by_mask(lat, lng)
    if dataset is None or not land.any():
        return land
    if legend is None:
        raise TypeError("is_land needs the legend of the raster it is given")
    idx = np.flatnonzero(land)
    classes = sample_classes(dataset, np.asarray(lat)[idx], np.asarray(lng)[idx], legend, progress=progress)
    on_raster_land = (classes != NODATA_INDEX) & ~np.isin(classes, legend.sea_indices)
    land[idx] = on_raster_land
    return land
