"""The synthetic second epoch: four seeded edits where they say they are, every other pixel untouched."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from vectorgeo.errors import InvalidInputError
from vectorgeo.synthetic import bounds_to_grid, synthesize_landscape, write_landcover_cog
from vectorgeo.synthetic_change import EDIT_KINDS, edit_landscape, write_synthetic_epoch

BOUNDS = (-124.2, 44.2, -123.6, 44.8)  # a corner of the synthetic default: coast, towns, forest, farmland


@pytest.fixture(scope="module")
def epoch_a():
    height, width, transform = bounds_to_grid(BOUNDS)
    codes, _ = synthesize_landscape(height, width, transform=transform, seed=0)
    return codes, transform


def test_four_edits_change_only_their_pixels(epoch_a):
    codes, transform = epoch_a
    edited, edits = edit_landscape(codes, transform, seed=1)
    assert [e["kind"] for e in edits] == list(EDIT_KINDS)
    changed = edited != codes
    assert changed.sum() <= sum(e["n_pixels"] for e in edits)  # a later edit may overwrite an earlier one
    assert all(e["n_pixels"] > 50 for e in edits)
    inside = np.zeros(codes.shape, bool)
    for e in edits:
        west, south, east, north = e["bounds"]
        (c0, r0), (c1, r1) = ~transform * (west, north), ~transform * (east, south)
        inside[round(r0) : round(r1), round(c0) : round(c1)] = True
        assert e["to"] not in e["from"]
    assert not (changed & ~inside).any()  # nothing outside the edited boxes moved
    assert set(np.unique(edited[changed]).tolist()) <= {50, 40, 80}
    assert not np.isin(edited[changed & (codes == 200)], [50, 40, 80]).any()  # the sea stays sea
    by_kind = {e["kind"]: e for e in edits}
    assert by_kind["wetland_drained"]["from"] == [90] and not (edited == 90).sum() > (codes == 90).sum()


def test_same_seed_same_edits_other_seed_other_places(epoch_a):
    codes, transform = epoch_a
    a, edits_a = edit_landscape(codes, transform, seed=1)
    b, _ = edit_landscape(codes, transform, seed=1)
    c, edits_c = edit_landscape(codes, transform, seed=2)
    assert (a == b).all()
    assert edits_a[2]["bounds"] != edits_c[2]["bounds"]  # the reservoir moved
    assert not (a == c).all()


def test_bad_epochs_get_one_clear_error(epoch_a):
    codes, transform = epoch_a
    with pytest.raises(InvalidInputError, match="2-D uint8"):
        edit_landscape(codes.astype(np.int16), transform)
    no_town = np.where(codes == 50, 40, codes).astype(np.uint8)
    with pytest.raises(InvalidInputError, match="no town"):
        edit_landscape(no_town, transform)
    sea = np.full((100, 100), 200, np.uint8)
    sea[40:60, 40:60] = 50
    with pytest.raises(InvalidInputError, match="mostly forest"):
        edit_landscape(sea, from_origin(0, 1, 0.01, 0.01))


def test_written_epoch_is_a_cog_on_the_same_grid_with_its_edits(epoch_a, tmp_path):
    from rio_cogeo.cogeo import cog_validate

    codes, transform = epoch_a
    a_path = write_landcover_cog(tmp_path / "a.tif", codes, transform)
    edits = write_synthetic_epoch(a_path, tmp_path / "b.tif", tmp_path / "edits.geojson", seed=1)
    assert cog_validate(str(tmp_path / "b.tif"))[0]
    with rasterio.open(a_path) as a, rasterio.open(tmp_path / "b.tif") as b:
        assert a.transform == b.transform and a.shape == b.shape and b.colormap(1) == a.colormap(1)
        assert int((a.read(1) != b.read(1)).sum()) > 0
    doc = json.loads((tmp_path / "edits.geojson").read_text())
    assert [f["properties"]["kind"] for f in doc["features"]] == [e["kind"] for e in edits]
    assert doc["features"][0]["geometry"]["type"] == "Polygon"
