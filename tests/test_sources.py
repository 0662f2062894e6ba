import numpy as np
import pytest
import rasterio

from vectorgeo.artifacts import synthetic_raster_keys
from vectorgeo.errors import RasterAccessError
from vectorgeo.sources import resolve_rasters
from vectorgeo.transfer import Bucket


@pytest.fixture
def bucket(tmp_path):
    return Bucket(tmp_path / "bucket", tmp_path / "cache")


def test_synthetic_default_is_generated_once_into_the_bucket(bucket, monkeypatch):
    first = resolve_rasters(bucket, synthetic_seed=0)
    lc_key, dem_key = synthetic_raster_keys(0)
    assert bucket.exists(lc_key) and bucket.exists(dem_key)
    assert first.source == "synthetic (seed 0)" and first.dem is None
    with rasterio.open(first.landcover) as ds:
        assert ds.crs.to_epsg() == 4326 and ds.res[0] == pytest.approx(1 / 1008)

    import vectorgeo.synthetic

    def fail(*args, **kwargs):
        raise AssertionError("regenerated although the bucket holds it")

    monkeypatch.setattr(vectorgeo.synthetic, "write_synthetic_rasters", fail)
    again = resolve_rasters(bucket, with_dem=True, synthetic_seed=0)
    assert again.landcover == first.landcover and again.dem is not None


def test_local_path_and_bucket_key(bucket, write_raster):
    path = write_raster(np.full((20, 20), 40, dtype=np.uint8))
    assert resolve_rasters(bucket, str(path)).landcover == path
    bucket.upload(path, "rasters/mine.tif")
    got = resolve_rasters(bucket, "rasters/mine.tif")
    assert got.landcover.read_bytes() == path.read_bytes()
    assert got.source == "rasters/mine.tif"


def test_missing_raster_names_the_spec_and_bucket(bucket):
    with pytest.raises(
        RasterAccessError, match=r"'nope/lc\.tif' is neither an existing local file nor a key in bucket"
    ):
        resolve_rasters(bucket, "nope/lc.tif")
    with pytest.raises(RasterAccessError, match=r"DEM raster '/no/dem\.tif'"):
        resolve_rasters(bucket, "", "/no/dem.tif", with_dem=True)
