"""Flows 00 -> 01 -> 02 -> 03 -> 04 -> 05 end to end through the real Metaflow CLI.

Each step gets its own cache directory (VG_CACHE_DIR holds "{step}"), so a
step that secretly read another step's local files would fail here. USER and
USERNAME are unset, as in CI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import boto3
import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO_ROOT, S3_BUCKET
from vectorgeo.artifacts import synthetic_raster_keys
from vectorgeo.sampling import read_shard

pytestmark = pytest.mark.flows

FLOW_00 = str(REPO_ROOT / "flows" / "00_h3_stencil_flow.py")
FLOW_01 = str(REPO_ROOT / "flows" / "01_preprocess_flow.py")
FLOW_02 = str(REPO_ROOT / "flows" / "02_train_flow.py")
FLOW_03 = str(REPO_ROOT / "flows" / "03_inference_flow.py")
FLOW_04 = str(REPO_ROOT / "flows" / "04_upload_flow.py")
FLOW_05 = str(REPO_ROOT / "flows" / "05_evaluate_flow.py")
FLOW_06 = str(REPO_ROOT / "flows" / "06_classify_flow.py")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("flows")


def _run(workdir, flow, *args, bucket=None, env_extra=None):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("USER", "USERNAME", "METAFLOW_USER") and not k.startswith("VG_")
    }
    env.update(
        VG_BUCKET=str(bucket or workdir / "bucket"),
        VG_CACHE_DIR=str(workdir / "cache" / "{step}"),
        VG_DATA_DIR=str(workdir / "stores"),
        METAFLOW_DATASTORE_SYSROOT_LOCAL=str(workdir / "metaflow"),
        **(env_extra or {}),
    )
    return subprocess.run(
        [sys.executable, flow, "--no-pylint", "run", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_pipeline_00_to_05_on_the_synthetic_default(workdir):
    done = _run(workdir, FLOW_00, "--h3_resolution=6")
    assert done.returncode == 0, done.stderr[-3000:]
    bucket = workdir / "bucket"
    stencil = pq.read_table(bucket / "stencil" / "res6.parquet")
    assert stencil.schema.field("h3").type == "uint64"
    assert 200 < stencil.num_rows < 2000  # ~2 x 1.5 degrees of Oregon coast, land only
    assert json.loads(stencil.schema.metadata[b"vectorgeo"])["raster"].startswith("synthetic")
    assert (bucket / synthetic_raster_keys(0)[0]).is_file()

    done = _run(workdir, FLOW_01, "--n_files=3", "--n_jobs=2", "--samples_per_file=16", "--patch_size=16")
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((bucket / "train" / "default" / "manifest.json").read_text())
    assert manifest["n_pairs"] == 48 and manifest["n_files"] == 3
    shards = sorted((bucket / "train" / "default").glob("part-*.npz"))
    assert [p.name for p in shards] == ["part-00000.npz", "part-00001.npz", "part-00002.npz"]
    shard = read_shard(shards[1])
    assert shard.anchor.shape == (16, 16, 16) and shard.anchor.dtype == np.uint8
    caches = sorted(p.name for p in (workdir / "cache").iterdir())
    assert {"start", "sample"} <= set(caches)  # every step downloaded its own inputs

    tiny = ["--num_filters=4", "--n_conv_blocks=1", "--batch_size=16", "--embed_dim=8"]
    done = _run(workdir, FLOW_02, "--epochs=2", "--model_filename=tiny.keras", *tiny)
    assert done.returncode == 0, done.stderr[-3000:]
    for noise in ("cuInit", "Could not find cuda drivers", "absl::InitializeLog"):  # readable logs on CPU machines
        assert noise not in done.stdout + done.stderr
    sidecar = json.loads((bucket / "models" / "tiny.json").read_text())
    assert sidecar["patch_px"] == 16 and sidecar["embed_dim"] == 8 and sidecar["legend"]["name"] == "lc100"
    assert (bucket / "models" / "tiny.keras").is_file() and (bucket / "models" / "tiny.png").is_file()

    args = ["--model_filename=tiny.keras", "--h3_resolution=6", "--chunk_size=150", "--n_workers=2"]
    done = _run(workdir, FLOW_03, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((bucket / "embeddings" / "tiny" / "res6" / "manifest.json").read_text())
    assert manifest["n_embedded"] + manifest["n_invalid"] == stencil.num_rows
    table = pq.read_table([str(p) for p in sorted((bucket / "embeddings" / "tiny" / "res6").glob("part-*.parquet"))])
    assert table.num_rows == manifest["n_embedded"] == len(set(table.column("h3").to_pylist()))
    vectors = np.asarray(table.column("embedding").combine_chunks().flatten()).reshape(-1, 8)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)

    done = _run(workdir, FLOW_03, *args)  # a rerun reuses every part
    assert done.returncode == 0, done.stderr[-3000:]
    again = json.loads((bucket / "embeddings" / "tiny" / "res6" / "manifest.json").read_text())
    assert again["n_parts_skipped"] == again["n_parts"] == manifest["n_parts"]

    for attempt in ("load", "reuse"):  # a second run finds every part loaded and the FAISS index current
        done = _run(workdir, FLOW_04, "--model_filename=tiny.keras", "--h3_resolution=6")
        assert done.returncode == 0, done.stderr[-3000:]
        out = done.stdout + done.stderr
        for store in ("qdrant", "pgvector", "faiss"):
            assert f"{store}: {manifest['n_embedded']} rows" in out
        assert ("0 parts loaded" in out) == (attempt == "reuse")
    assert (bucket / "indexes" / "tiny" / "res6" / "metadata.json").is_file()

    done = _run(workdir, FLOW_05, "--model_filename=tiny.keras", "--h3_resolution=6", "--k=3")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((bucket / "reports" / "tiny" / "res6" / "evaluation.json").read_text())
    assert set(report["methods"]) == {"encoder", "random", "pca_onehot", "histogram"}
    assert "retrieval JSD" in done.stdout + done.stderr


def test_seed_style_commands(workdir, tmp_path):
    bucket = tmp_path / "seed-bucket"
    done = _run(workdir, FLOW_00, "--h3_resolution=3", bucket=bucket)
    assert done.returncode == 0, done.stderr[-3000:]
    done = _run(workdir, FLOW_01, "--n_files=2", "--n_jobs=3", "--samples_per_file=4", bucket=bucket)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((bucket / "train" / "default" / "manifest.json").read_text())["n_pairs"] == 8
    # a handful of pairs (one held-out pair) still trains, saves and draws its diagnostics
    done = _run(workdir, FLOW_02, "--epochs=1", "--n_train_files=2", "--model_filename=test.keras", bucket=bucket)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (bucket / "models" / "test.png").is_file()
    for flow, args in [
        (FLOW_00, []),  # the default-resolution stencil that flow 03 embeds
        (FLOW_03, ["--max_iters=10", "--model_filename=test.keras"]),
        (FLOW_05, ["--model_filename=test.keras"]),
    ]:
        done = _run(workdir, flow, *args, bucket=bucket)
        assert done.returncode == 0, done.stderr[-3000:]
    assert (bucket / "reports" / "test" / "res7" / "evaluation.json").is_file()


def _assert_clean_failure(done, bucket, message):
    assert done.returncode != 0
    assert message in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert not (bucket / "stencil").exists() or not any((bucket / "stencil").iterdir())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--h3_resolution=16"], "h3_resolution must be between 0 and 15, got 16"),
        (["--landcover=/nonexistent/lc.tif"], "'/nonexistent/lc.tif' is neither an existing local file"),
        (["--aoi=10,10,11,11"], "does not overlap the raster footprint"),
        (["--legend=corine"], "unknown legend 'corine'"),
    ],
)
def test_bad_input_stops_with_one_clear_message(workdir, tmp_path, args, message):
    bucket = tmp_path / "bucket"
    done = _run(workdir, FLOW_00, *args, bucket=bucket)
    _assert_clean_failure(done, bucket, message)


def test_raster_without_crs(workdir, tmp_path, write_raster):
    path = write_raster(np.full((50, 50), 40, dtype=np.uint8), crs=None)
    bucket = tmp_path / "bucket"
    done = _run(workdir, FLOW_00, f"--landcover={path}", bucket=bucket)
    _assert_clean_failure(done, bucket, "has no CRS")


def test_unwritable_bucket(workdir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    done = _run(workdir, FLOW_00, "--h3_resolution=3", bucket=blocker / "bucket")
    assert done.returncode != 0
    assert "Traceback" not in done.stdout + done.stderr
    assert "BucketAccessError" in done.stdout + done.stderr


def test_code_package_carries_the_library(workdir):
    env = {k: v for k, v in os.environ.items() if k not in ("USER", "USERNAME")}
    done = subprocess.run(
        [sys.executable, FLOW_00, "--no-pylint", "package", "list"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    listed = done.stdout + done.stderr
    for module in (
        "vectorgeo/stencil.py",
        "vectorgeo/transfer.py",
        "vectorgeo/raster.py",
        "constants.py",
        "flow_support.py",
    ):
        assert f"flows/{module}" in listed


def test_flows_on_an_s3_bucket(workdir, moto_endpoint):
    """The production path: every artifact moves through a real S3 HTTP endpoint."""
    prefix = f"e2e/{uuid.uuid4().hex}"
    s3 = {"VG_S3_ENDPOINT_URL": moto_endpoint}
    bucket = f"s3://{S3_BUCKET}/{prefix}"
    done = _run(workdir, FLOW_00, "--h3_resolution=5", bucket=bucket, env_extra=s3)
    assert done.returncode == 0, done.stderr[-3000:]
    done = _run(workdir, FLOW_01, "--n_files=2", "--n_jobs=2", "--samples_per_file=8", bucket=bucket, env_extra=s3)
    assert done.returncode == 0, done.stderr[-3000:]
    listing = boto3.client("s3", endpoint_url=moto_endpoint).list_objects_v2(Bucket=S3_BUCKET, Prefix=prefix)
    keys = sorted(o["Key"][len(prefix) + 1 :] for o in listing["Contents"])
    assert keys == [
        *sorted(synthetic_raster_keys(0)),
        "stencil/res5.parquet",
        "train/default/manifest.json",
        "train/default/part-00000.npz",
        "train/default/part-00001.npz",
    ]


def test_tasks_use_the_bucket_parameter_not_the_environment(workdir, tmp_path):
    """Remote tasks do not inherit VG_BUCKET; every task must follow --bucket."""
    real, decoy = tmp_path / "real", tmp_path / "decoy"
    done = _run(workdir, FLOW_00, "--h3_resolution=3", f"--bucket={real}", bucket=decoy)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (real / "stencil" / "res3.parquet").is_file()
    assert not (decoy / "stencil").exists()


def test_remote_task_refuses_a_local_bucket(workdir, tmp_path):
    done = _run(workdir, FLOW_00, "--h3_resolution=3", bucket=tmp_path / "b", env_extra={"AWS_BATCH_JOB_ID": "x"})
    assert done.returncode != 0
    assert "runs remotely but --bucket is the local directory" in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--train_set=../escape"], "invalid bucket key 'train/../escape/part-00000.npz'"),
        (["--pair_distance_meters=500"], "must exceed one patch width"),
        (["--samples_per_file=0"], "samples_per_file must be >= 1"),
    ],
)
def test_flow_01_bad_input_fails_once_in_start(workdir, args, message):
    done = _run(workdir, FLOW_01, "--n_files=2", *args)
    out = done.stdout + done.stderr
    assert done.returncode != 0 and message in out and "Traceback" not in out
    assert "/sample/" not in out  # stopped in start: no worker (and no retry) ran


@pytest.mark.parametrize(
    ("flow", "args", "message"),
    [
        (FLOW_03, ["--model_filename=nope.keras", "--h3_resolution=6"], "'models/nope.keras'"),
        (FLOW_03, ["--model_filename=tiny.keras", "--h3_resolution=6", "--legend=worldcover"], "trained on legend"),
        (FLOW_03, ["--model_filename=tiny.keras", "--h3_resolution=9"], "no stencil at resolution 9"),
        (FLOW_02, ["--train_set=nothing", "--model_filename=x.keras"], "no training set 'nothing'"),
        (FLOW_05, ["--model_filename=nope.keras"], "'models/nope.keras'"),
        (
            FLOW_04,
            ["--model_filename=tiny.keras", "--h3_resolution=9"],
            "no embeddings of model 'tiny' at resolution 9",
        ),
        (FLOW_04, ["--model_filename=tiny.keras", "--h3_resolution=6", "--stores=milvus"], "--stores must list"),
        (FLOW_04, ["--model_filename=tiny.keras", "--h3_resolution=6", "--wipe_existing=yes"], "confirm by naming it"),
    ],
)
def test_bad_input_to_later_flows(workdir, flow, args, message):
    """Runs after the pipeline test (same bucket): each stops with one line, and writes nothing new."""
    before = sorted(str(p) for p in (workdir / "bucket").rglob("*"))
    done = _run(workdir, flow, *args)
    out = done.stdout + done.stderr
    assert done.returncode != 0 and message in out and "Traceback" not in out
    assert sorted(str(p) for p in (workdir / "bucket").rglob("*")) == before


def _derived_labels(bucket, min_fraction=0.5):
    """Labels drawn from the tiny run's own patches: a GeoJSON of the cells that are mostly one class."""
    from vectorgeo.derived_labels import labels_from_fractions
    from vectorgeo.legends import get_legend

    table = pq.read_table([str(p) for p in sorted((bucket / "embeddings" / "tiny" / "res6").glob("part-*.parquet"))])
    fractions = np.asarray(table.column("class_fractions").combine_chunks().flatten()).reshape(table.num_rows, -1)
    names = list(get_legend("lc100").names)
    return labels_from_fractions(
        table.column("h3").to_numpy(), table.column("lat").to_numpy(), table.column("lng").to_numpy(), fractions,
        names, min_fraction=min_fraction, per_class=15, max_classes=3,
    )  # fmt: skip


def test_flow_06_labels_to_a_map_and_the_registry(workdir):
    """Runs after the pipeline test (same bucket, same embedded PostgreSQL): labels in a bucket key -> a
    classifier, blocked CV beside the histogram, a GeoParquet and COGs, rows in the registry; a rerun adds none."""
    import geopandas
    import rasterio
    from rio_cogeo.cogeo import cog_validate

    from vectorgeo.registry import open_registry

    bucket = workdir / "bucket"
    doc = _derived_labels(bucket)
    first_class = doc["features"][0]["properties"]["class"]
    (bucket / "labels").mkdir(exist_ok=True)
    (bucket / "labels" / "derived.geojson").write_text(json.dumps(doc))
    args = ["--labels=labels/derived.geojson", "--model_filename=tiny.keras", "--h3_resolution=6", "--n_workers=2",
            f"--probability_class={first_class}"]  # fmt: skip
    done = _run(workdir, FLOW_06, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout + done.stderr
    assert "embeddings: blocked-CV accuracy" in out and " histogram: blocked-CV accuracy" in out
    (sidecar_path,) = (bucket / "classifiers" / "derived-logistic").glob("*.json")
    sidecar = json.loads(sidecar_path.read_text())
    assert set(sidecar["cv"]["features"]) == {"embeddings", "histogram"}
    assert sidecar["cv"]["features"]["histogram"]["macro_f1"] > 0.8  # it sees the composition that made the labels
    assert (bucket / sidecar["artifact_key"]).is_file() and sidecar_path.stem == sidecar["version"]
    maps = bucket / "predictions" / "derived-logistic" / sidecar["version"] / "res6"
    frame = geopandas.read_parquet(maps / "predictions.parquet")
    manifest = json.loads((bucket / "embeddings" / "tiny" / "res6" / "manifest.json").read_text())
    assert len(frame) == manifest["n_embedded"] and frame.crs.to_string() == "OGC:CRS84"
    assert set(frame["class"]) <= set(sidecar["classes"]) and frame["probability"].between(0, 1).all()
    for tif in ("classes.tif", next(p.name for p in maps.glob("probability-*.tif"))):
        assert cog_validate(str(maps / tif))[0], tif
    with rasterio.open(maps / "classes.tif") as ds:
        assert ds.overviews(1) and ds.colormap(1) and ds.nodata == 255
    summary = json.loads((maps / "summary.json").read_text())
    with open_registry(None, workdir / "stores") as registry:
        models = [m for m in registry.list_models() if m["name"] == "derived-logistic"]
        predictions = registry.list_predictions("derived-logistic")
    assert [m["id"] for m in models] == [summary["registry"]["model_id"]]
    assert [p["id"] for p in predictions] == [summary["registry"]["prediction_id"]]

    done = _run(workdir, FLOW_06, *args)  # a rerun reuses every part and adds no registry row
    assert done.returncode == 0, done.stderr[-3000:]
    again = json.loads((maps / "summary.json").read_text())
    assert again["n_parts_skipped"] == again["n_parts"] and again["registry"] == summary["registry"]
    with open_registry(None, workdir / "stores") as registry:
        assert len(registry.list_predictions("derived-logistic")) == 1
        assert len([m for m in registry.list_models() if m["name"] == "derived-logistic"]) == 1


@pytest.mark.parametrize(
    ("labels", "args", "message"),
    [
        (
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "geometry": {"type": "Point", "coordinates": [-123.9, 44.6]},
                        "properties": {"kind": "a"},
                    }
                ],
            },
            [],
            "has no property 'class'",
        ),
        (
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "geometry": {"type": "Point", "coordinates": [float(i), 0.0]},
                        "properties": {"class": c},
                    }
                    for i, c in enumerate("aabb")
                ],
            },
            [],
            "labelled cells have no embedding",
        ),
        (None, ["--classifier=svm"], "unknown classifier 'svm'"),
    ],
)
def test_flow_06_bad_labels_stop_with_one_message_and_write_nothing(workdir, tmp_path, labels, args, message):
    bucket = workdir / "bucket"
    path = tmp_path / "bad.geojson"
    path.write_text(json.dumps(labels or _derived_labels(bucket)))
    before = sorted(str(p) for p in bucket.rglob("*"))
    done = _run(workdir, FLOW_06, f"--labels={path}", "--model_filename=tiny.keras", "--h3_resolution=6", *args)
    out = done.stdout + done.stderr
    assert done.returncode != 0 and message in out and "Traceback" not in out
    assert sorted(str(p) for p in bucket.rglob("*")) == before
