"""Flow 03's jobs: planning checks, and resumption after a simulated kill."""

import numpy as np
import pyarrow.parquet as pq
import pytest

import vectorgeo.jobs.infer as infer_job
from vectorgeo.artifacts import embeddings_part_key
from vectorgeo.encoder import EncoderConfig, build_encoder
from vectorgeo.errors import IncompleteOutputError, InvalidInputError, NotFoundError
from vectorgeo.jobs.infer import finish_inference, plan_inference, run_inference
from vectorgeo.jobs.stencil import make_stencil
from vectorgeo.legends import get_legend
from vectorgeo.model_files import save_model
from vectorgeo.stencil import build_stencil, parse_aoi, write_stencil
from vectorgeo.transfer import Bucket

LC = get_legend("lc100")


@pytest.fixture
def setup(tmp_path, write_raster):
    rng = np.random.default_rng(3)
    land = np.array([20, 30, 40, 111, 115], dtype=np.uint8)
    codes = np.kron(land[rng.integers(0, 5, (40, 40))], np.ones((8, 8), dtype=np.uint8))
    codes[:, 300:] = 255  # a nodata strip: cells near it have invalid patches
    raster = write_raster(codes, west=-123.5, north=44.8)
    bucket = Bucket(tmp_path / "bucket", tmp_path / "cache")
    make_stencil(bucket, h3_resolution=8, landcover=str(raster))
    import keras

    for name, seed in (("m", 0), ("other", 1)):
        keras.utils.set_random_seed(seed)  # two different (untrained) models
        encoder = build_encoder(EncoderConfig(n_classes=23, patch_px=8, embed_dim=4, num_filters=4, n_conv_blocks=1))
        model_path, sidecar_path = save_model(
            encoder, tmp_path / f"{name}.keras", {"legend": LC.to_dict(), "pixel_size_m": 98}
        )
        bucket.upload(model_path, f"models/{name}.keras")
        bucket.upload(sidecar_path, f"models/{name}.json")
    settings = {"h3_resolution": 8, "landcover": str(raster), "dem": "", "legend": "lc100", "synthetic_seed": 0}
    return bucket, settings


def _plan(bucket, settings, model="m.keras", **over):
    options = {"model_filename": model, "h3_resolution": 8, "chunk_size": 150, "n_workers": 1, "max_iters": 0}
    return plan_inference(bucket, legend="lc100", landcover=settings["landcover"], **{**options, **over})


def _run(bucket, settings, parts, model="m.keras", qdrant=None):
    return run_inference(bucket, parts, model_filename=model, batch_size=64, qdrant=qdrant, **settings)


def test_resume_after_a_kill_gives_one_row_per_valid_cell(setup, monkeypatch):
    bucket, settings = setup
    [parts] = _plan(bucket, settings)
    assert len(parts) >= 4
    real = infer_job.embed_cells
    calls = []

    def dies_on_the_third_part(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated kill")
        return real(*args, **kwargs)

    monkeypatch.setattr(infer_job, "embed_cells", dies_on_the_third_part)
    with pytest.raises(KeyboardInterrupt):
        _run(bucket, settings, parts)
    written = bucket.list("embeddings/m/res8/")
    # nothing half-written for part 2
    assert written == [embeddings_part_key("m", 8, 0), embeddings_part_key("m", 8, 1)]
    monkeypatch.setattr(infer_job, "embed_cells", real)

    result = _run(bucket, settings, parts)
    skipped = [k for k, info in result["parts"].items() if info["skipped"]]
    assert skipped == written
    manifest = finish_inference(bucket, [result], model_filename="m.keras", h3_resolution=8, n_parts=len(parts))
    tables = [pq.read_table(bucket.download(k)) for k in manifest["parts"]]
    h3 = np.concatenate([t.column("h3").to_numpy() for t in tables])
    assert h3.size == manifest["n_embedded"] == np.unique(h3).size  # exactly one row per valid cell
    assert manifest["n_invalid"] > 0 and manifest["n_embedded"] + manifest["n_invalid"] == manifest["n_cells"]

    # a fresh run from nothing writes the same rows
    for key in manifest["parts"]:
        bucket.delete(key)
    fresh = _run(bucket, settings, parts)
    assert not any(info["skipped"] for info in fresh["parts"].values())
    again = np.concatenate([pq.read_table(bucket.download(k)).column("h3").to_numpy() for k in manifest["parts"]])
    assert np.array_equal(np.sort(again), np.sort(h3))


def test_parts_of_another_model_are_not_reused(setup):
    bucket, settings = setup
    [parts] = _plan(bucket, settings, max_iters=1)
    _run(bucket, settings, parts)
    key = embeddings_part_key("m", 8, 0)
    other = bucket.read_bytes(embeddings_part_key("m", 8, 0))
    bucket.upload(bucket.download("models/other.keras"), "models/m.keras")  # retrained under the same name
    assert not _run(bucket, settings, parts)["parts"][key]["skipped"]
    assert bucket.read_bytes(key) != other


def test_workers_and_max_iters(setup):
    bucket, settings = setup
    workers = _plan(bucket, settings, n_workers=3)
    assert len(workers) == 3 and sorted(p["part"] for w in workers for p in w) == list(range(sum(map(len, workers))))
    assert sum(map(len, _plan(bucket, settings, n_workers=3, max_iters=2))) == 2


@pytest.mark.parametrize(
    ("over", "error", "match"),
    [
        ({"model": "missing.keras"}, NotFoundError, "models/missing.keras"),
        ({"h3_resolution": 6}, InvalidInputError, r"no stencil at resolution 6.*stencils present: \['res8'\]"),
        ({"n_workers": 101}, InvalidInputError, "n_workers must lie in 1..100"),
        ({"model": "bad/name.keras"}, InvalidInputError, "plain file name"),
    ],
)
def test_plan_errors(setup, over, error, match):
    bucket, settings = setup
    model = over.pop("model", "m.keras")
    with pytest.raises(error, match=match):
        _plan(bucket, settings, model=model, **over)


def test_plan_refuses_a_model_of_another_legend(setup):
    bucket, _ = setup
    with pytest.raises(InvalidInputError, match="trained on legend 'lc100'"):
        plan_inference(
            bucket,
            model_filename="m.keras",
            h3_resolution=8,
            chunk_size=100,
            n_workers=1,
            max_iters=0,
            legend="worldcover",
        )


def test_finish_notices_a_lost_part(setup):
    bucket, settings = setup
    [parts] = _plan(bucket, settings, max_iters=2)
    result = _run(bucket, settings, parts)
    bucket.delete(embeddings_part_key("m", 8, 1))
    with pytest.raises(IncompleteOutputError, match="1 of 2 embedding parts are missing"):
        finish_inference(bucket, [result], model_filename="m.keras", h3_resolution=8, n_parts=2)


def test_plan_refuses_a_raster_of_another_resolution(setup, write_raster):
    bucket, settings = setup
    fine = write_raster(np.full((400, 400), 40, dtype=np.uint8), pixel=1 / 12000)  # ~8 m pixels
    with pytest.raises(InvalidInputError, match=r"trained on 98\.0 m pixels .* this raster has [789]\.\d m pixels"):
        _plan(bucket, {**settings, "landcover": str(fine)})


def test_plan_refuses_an_empty_stencil(setup, tmp_path):
    bucket, settings = setup
    empty = build_stencil(5, aoi=parse_aoi("-140,0,-139,1"), progress=False)  # open Pacific
    bucket.upload(write_stencil(empty, tmp_path / "empty.parquet"), "stencil/res5.parquet")
    with pytest.raises(InvalidInputError, match="stencil at resolution 5 holds no cell"):
        _plan(bucket, settings, h3_resolution=5)


def test_inference_upserts_into_qdrant_as_it_goes(setup, tmp_path):
    bucket, settings = setup
    qdrant = {"collection": "m_res8", "data_dir": tmp_path / "stores", "wipe": True}
    [parts] = _plan(bucket, settings, max_iters=2, qdrant=qdrant)
    first = _run(bucket, settings, parts[:1], qdrant=qdrant)  # a worker dies after one part...
    result = _run(bucket, settings, parts, qdrant=qdrant)  # ...and the rerun reuses it, loading it again
    assert [info["skipped"] for info in result["parts"].values()] == [True, False]
    manifest = finish_inference(
        bucket, [first, result], model_filename="m.keras", h3_resolution=8, n_parts=2, qdrant=qdrant
    )
    assert manifest["qdrant"]["count"] == manifest["n_embedded"] > 0


def test_embedded_qdrant_needs_a_single_worker(setup, tmp_path):
    bucket, settings = setup
    qdrant = {"collection": "m_res8", "data_dir": tmp_path / "stores"}
    with pytest.raises(InvalidInputError, match="--n_workers=1"):
        _plan(bucket, settings, n_workers=2, qdrant=qdrant)


def test_parts_from_another_stencil_are_not_reused(setup, write_raster):
    bucket, settings = setup
    [parts] = _plan(bucket, settings, max_iters=1)
    _run(bucket, settings, parts)
    assert _run(bucket, settings, parts)["parts"][embeddings_part_key("m", 8, 0)]["skipped"]
    make_stencil(bucket, h3_resolution=8, landcover=settings["landcover"], aoi=parse_aoi("-123.5,44.6,-123.3,44.8"))
    # same rows, other cells
    assert not _run(bucket, settings, parts)["parts"][embeddings_part_key("m", 8, 0)]["skipped"]
