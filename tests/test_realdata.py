"""Stencil and pair sampling on real clips (see ../shared/realdata/README.md).

Skipped, with the reason, where that folder is absent.
"""

import numpy as np
import pytest

from tests.conftest import REPO_ROOT
from vectorgeo.legends import get_legend
from vectorgeo.raster import open_raster, pixel_size_m
from vectorgeo.sampling import dominant_class_fraction, sample_pairs
from vectorgeo.stencil import build_stencil

pytestmark = pytest.mark.realdata

CLIPS = {
    # file, legend, H3 resolution giving a few hundred cells, expected pixel size (m)
    "lc100": ("copernicus_lc100_2019_sierra_de_neiba_DO.tif", "lc100", 8, 105.0),
    "worldcover": ("esa_worldcover_2021_saotome_10m_clip.tif", "worldcover", 8, 9.3),
    "nlcd": ("nlcd2011_zion_UT.tif", str(REPO_ROOT / "examples" / "legends" / "nlcd.csv"), 8, 31.5),
}


@pytest.mark.parametrize("clip", sorted(CLIPS))
def test_stencil_and_pairs_on_real_clips(realdata, clip):
    name, legend_name, res, px_m = CLIPS[clip]
    legend = get_legend(legend_name)
    with open_raster(realdata / name) as ds:
        assert pixel_size_m(ds) == pytest.approx(px_m, rel=0.03)
        stencil = build_stencil(res, dataset=ds, legend=legend, progress=False)
        assert stencil.num_rows > 50
        shard = sample_pairs(ds, legend, 64, patch_px=32, pair_distance_m=4 * 32 * px_m, seed=1)
    assert len(shard) == 64
    assert shard.anchor.max() < legend.n_classes
    assert dominant_class_fraction(shard.anchor).max() <= 0.95
    # the patch footprint in metres follows the raster, not a constant
    assert shard.meta["min_distance_m"] == pytest.approx(32 * max(shard.meta["pixel_sides_m"]))
    assert max(shard.meta["pixel_sides_m"]) == pytest.approx(px_m, rel=0.1)


def test_worldcover_island_stencil_excludes_the_sea(realdata):
    """Sao Tome: the clip is mostly sea coded 80; only the land mask tells sea from lakes."""
    legend = get_legend("worldcover")
    with open_raster(realdata / CLIPS["worldcover"][0]) as ds:
        stencil = build_stencil(9, dataset=ds, legend=legend, progress=False)
    lat, lng = stencil.column("lat").to_numpy(), stencil.column("lng").to_numpy()
    # Sao Tome island spans about 0.0-0.42 N, 6.45-6.77 E; the clip extends over open sea.
    assert ((lat > -0.05) & (lat < 0.45) & (lng > 6.4) & (lng < 6.8)).all()
    area_km2 = stencil.num_rows * 0.105  # mean res-9 cell area
    assert 700 < area_km2 < 1100  # the island is about 850 km2


def test_lc100_epochs_give_the_same_stencil(realdata):
    legend = get_legend("lc100")
    tables = []
    for year in (2015, 2019):
        with open_raster(realdata / f"copernicus_lc100_{year}_sierra_de_neiba_DO.tif") as ds:
            tables.append(build_stencil(8, dataset=ds, legend=legend, progress=False))
    assert np.array_equal(tables[0].column("h3").to_numpy(), tables[1].column("h3").to_numpy())
