"""Tests for vectorgeo.encoder and vectorgeo.model_files: the encoder and its model files (one trained fixture)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from vectorgeo import encoder as enc
from vectorgeo import model_files as mf
from vectorgeo.errors import InvalidInputError, NotFoundError
from vectorgeo.legends import BUILTIN_LEGENDS, Legend
from vectorgeo.training import TrainingParams, dem_stats, train_encoder

# Keras's saver calls np.array() on TF variables, which lack numpy 2's copy= keyword; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

REPO_ROOT = Path(__file__).resolve().parents[1]
N_CLASSES = 5
TINY = {"n_classes": N_CLASSES, "patch_px": 16, "embed_dim": 8, "num_filters": 8, "n_conv_blocks": 2}
LEGEND = Legend("tiny", (10, 20, 30, 40, 50), ("Forest", "Grass", "Crop", "Urban", "Water"))


def synthetic_pairs(n: int, rng: np.random.Generator, *, patch_px: int = 16, noise: float = 0.1):
    """Blocky patches mixing 3 random classes; the neighbour is a noisy copy of the anchor."""
    subsets = rng.integers(0, N_CLASSES, (n, 3))
    coarse = np.take_along_axis(subsets, rng.integers(0, 3, (n, 16)), axis=1).reshape(n, 4, 4)
    anchor = np.repeat(np.repeat(coarse, patch_px // 4, axis=1), patch_px // 4, axis=2).astype(np.uint8)
    neighbor = anchor.copy()
    flip = rng.random(anchor.shape) < noise
    neighbor[flip] = rng.integers(0, N_CLASSES, flip.sum())
    return anchor, neighbor


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(42)
    anchor, neighbor = synthetic_pairs(640, rng)
    return {"anchor": anchor[:512], "neighbor": neighbor[:512]}, {"anchor": anchor[512:], "neighbor": neighbor[512:]}


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    train, val = data
    ckpt = tmp_path_factory.mktemp("ckpt") / "best.keras"
    config = enc.EncoderConfig(**TINY)
    params = TrainingParams(epochs=8, batch_size=32, patience=2, learning_rate=3e-3)
    encoder, history = train_encoder(train, val, config, params, checkpoint_path=ckpt)
    return encoder, history, ckpt


@pytest.fixture(scope="module")
def saved(trained, tmp_path_factory):
    encoder, history, _ = trained
    sidecar = {"legend": LEGEND.to_dict(), "pixel_size_m": 100.0, "training": history}
    return mf.save_model(encoder, tmp_path_factory.mktemp("models") / "tiny", sidecar)


def test_import_does_not_load_keras():
    code = (
        "import sys, vectorgeo.encoder, vectorgeo.model_files, vectorgeo.training, vectorgeo.losses, "
        "vectorgeo.keras_env; "
        "assert not {'keras', 'tensorflow', 'jax'} & set(sys.modules), sys.modules.keys()"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


def test_config_round_trip_and_validation():
    config = enc.EncoderConfig(**TINY, use_dem=True, dem_mean_m=120.0, dem_std_m=30.0)
    assert enc.EncoderConfig.from_dict({**config.to_dict(), "future_field": 1}) == config
    with pytest.raises(InvalidInputError, match="patch_px=8 is too small"):
        enc.EncoderConfig(n_classes=5, patch_px=8, n_conv_blocks=3)
    with pytest.raises(InvalidInputError, match="std > 0"):
        enc.EncoderConfig(n_classes=5, patch_px=16, dem_std_m=0.0)
    with pytest.raises(InvalidInputError, match="malformed"):
        enc.EncoderConfig.from_dict({"patch_px": 16})


def test_encoder_shapes_dtype_unit_norm_from_uint8():
    encoder = enc.build_encoder(enc.EncoderConfig(**TINY))
    classes = np.random.default_rng(0).integers(0, N_CLASSES, (70, 16, 16), dtype=np.uint8)
    classes[0, :4, :4] = 255  # nodata pixels one-hot to zeros instead of failing
    out = enc.embed(encoder, classes, batch_size=32)  # 3 batches, the last padded
    assert out.shape == (70, 8) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(out[:5], enc.embed(encoder, classes[:5]), atol=1e-5)
    with pytest.raises(InvalidInputError, match=r"\(N, 16, 16\)"):
        enc.embed(encoder, classes[:, :8, :8])


def test_best_weights_restored_and_checkpointed(trained):
    encoder, history, ckpt = trained
    assert history["best_epoch"] == int(np.argmin(history["val_loss"])) + 1
    assert history["best_val_loss"] == min(history["val_loss"])
    assert history["epochs_run"] <= 8 and history["train_pairs_per_s"] > 0
    enc.register_layers()
    import keras

    best = keras.saving.load_model(ckpt, compile=False)
    classes = synthetic_pairs(20, np.random.default_rng(9))[0]
    np.testing.assert_allclose(enc.embed(best, classes), enc.embed(encoder, classes), atol=1e-6)


def test_save_load_round_trip(trained, saved):
    encoder, history, _ = trained
    model_path, json_path = saved
    assert (model_path.name, json_path.name) == ("tiny.keras", "tiny.json")
    assert not [p for p in model_path.parent.iterdir() if p.name.startswith(".")]  # no temporaries left
    loaded, sidecar = mf.load_model(model_path)
    assert loaded.vg_config == encoder.vg_config
    assert sidecar["patch_px"] == 16 and sidecar["embed_dim"] == 8 and sidecar["channels"] == ["classes"]
    assert sidecar["keras_backend"] == "tensorflow" and sidecar["legend"]["name"] == "tiny"
    assert sidecar["training"]["best_epoch"] == history["best_epoch"]
    classes = synthetic_pairs(40, np.random.default_rng(8))[0]
    for saved_w, loaded_w in zip(encoder.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(saved_w, loaded_w)
    # same weights; a freshly traced graph may order float sums differently, hence 1e-6 not 0
    np.testing.assert_allclose(enc.embed(loaded, classes), enc.embed(encoder, classes), atol=1e-6)
    mf.save_model(loaded, model_path, sidecar)  # a loaded model can be re-saved (overwrites in place)


def test_files_saved_before_the_split_still_load(trained, saved, tmp_path):
    """Buckets hold models saved when the layers lived in ``vectorgeo.model``: they load by registered name."""
    import zipfile

    encoder = trained[0]
    model_path, json_path = saved
    old = tmp_path / "old.keras"
    with zipfile.ZipFile(model_path) as src, zipfile.ZipFile(old, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "config.json":
                assert b'"vectorgeo.encoder"' in data
                data = data.replace(b'"vectorgeo.encoder"', b'"vectorgeo.model"')
            dst.writestr(item, data)
    (tmp_path / "old.json").write_text(json_path.read_text())
    loaded, _ = mf.load_model(old)
    classes = synthetic_pairs(20, np.random.default_rng(7))[0]
    np.testing.assert_allclose(enc.embed(loaded, classes), enc.embed(encoder, classes), atol=1e-6)


def test_save_model_validates_sidecar(tmp_path):
    encoder = enc.build_encoder(enc.EncoderConfig(**TINY))
    with pytest.raises(InvalidInputError, match="pixel_size_m"):
        mf.save_model(encoder, tmp_path / "m.keras", {"legend": LEGEND.to_dict()})
    with pytest.raises(InvalidInputError, match="23 classes but the encoder one-hot encodes 5"):
        mf.save_model(encoder, tmp_path / "m.keras", {"legend": BUILTIN_LEGENDS["lc100"].to_dict(), "pixel_size_m": 1})
    assert not list(tmp_path.iterdir())


def test_load_errors(saved, tmp_path):
    with pytest.raises(NotFoundError, match=r"model file .*nope\.keras' does not exist; train one"):
        mf.load_model(tmp_path / "nope.keras")
    model_path, _ = saved
    lone = tmp_path / "lone.keras"
    lone.write_bytes(model_path.read_bytes())
    with pytest.raises(InvalidInputError, match=r"sidecar .*lone\.json' is missing"):
        mf.load_model(lone)
    (tmp_path / "lone.json").write_text('{"legend": ')
    with pytest.raises(InvalidInputError, match="malformed"):
        mf.load_model(lone)
    (tmp_path / "lone.json").write_text('{"legend": {"classes": []}}')
    with pytest.raises(InvalidInputError, match=r"malformed.*encoder_config"):
        mf.load_model(lone)
    (tmp_path / "lone.json").write_text(saved[1].read_text())
    lone.write_bytes(b"not a zip")
    with pytest.raises(InvalidInputError, match=r"not a readable \.keras archive"):
        mf.load_model(lone)


def test_check_compatible_messages():
    sidecar = {"legend": LEGEND.to_dict(), "patch_px": 16}
    mf.check_compatible(sidecar, LEGEND, 16)
    mf.check_compatible(sidecar, LEGEND.to_dict(), 16)
    with pytest.raises(
        InvalidInputError, match=r"legend 'tiny' \(codes \[10, 20.*legend 'worldcover' \(codes \[10, 20"
    ):
        mf.check_compatible(sidecar, BUILTIN_LEGENDS["worldcover"], 16)
    with pytest.raises(InvalidInputError, match="expects 16 px patches but inference would extract 32 px"):
        mf.check_compatible(sidecar, LEGEND, 32)


def test_dem_model_normalises_raw_metres_inside():
    import keras

    config = enc.EncoderConfig(**TINY, use_dem=True, dem_mean_m=1000.0, dem_std_m=200.0)
    encoder = enc.build_encoder(config)
    rng = np.random.default_rng(2)
    classes = synthetic_pairs(6, rng)[0]
    dem = rng.uniform(500, 1500, (6, 16, 16)).astype(np.float32)
    dem[0, 0, 0] = np.nan  # a hole becomes the mean (0 after normalisation)
    norm = keras.Model(encoder.inputs, encoder.get_layer("dem_norm").output)
    got = keras.ops.convert_to_numpy(norm({"classes": classes, "dem": dem}))[..., 0]
    np.testing.assert_allclose(got, np.nan_to_num((dem - 1000.0) / 200.0), atol=1e-6)
    out = enc.embed(encoder, classes, dem)
    assert out.shape == (6, 8) and np.isfinite(out).all()
    with pytest.raises(InvalidInputError, match="takes a DEM"):
        enc.embed(encoder, classes)
    assert dem_stats([np.array([1.0, np.nan, 3.0]), np.array([[2.0]])]) == pytest.approx((2.0, np.sqrt(2 / 3)))
    assert dem_stats(np.full(4, 7.0)) == (7.0, 1.0)
    with pytest.raises(InvalidInputError, match="no finite"):
        dem_stats(np.full(3, np.nan))


_OTHER_BACKEND = textwrap.dedent(
    """
    import sys, numpy as np, keras
    from vectorgeo import encoder as enc, model_files as mf
    assert keras.backend.backend() == sys.argv[1], keras.backend.backend()
    for name in sys.argv[2:]:
        encoder, sidecar = mf.load_model(name + ".keras")
        inputs = np.load(name + ".npz")
        dem = inputs["dem"] if sidecar["channels"] == ["classes", "dem"] else None
        out = enc.embed(encoder, inputs["classes"], dem)
        diff = np.abs(out - inputs["expected"]).max()
        assert diff < 1e-4, (name, diff)
    print("ok")
    """
)


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_model_saved_under_tensorflow_runs_under_other_backends(backend, saved, tmp_path):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed in this environment; pip install {backend} to run this check")
    trained_path, _ = saved
    rng = np.random.default_rng(4)
    classes = synthetic_pairs(40, rng)[0]
    classes[0, :3] = 255  # nodata
    dem = rng.uniform(0, 3000, classes.shape).astype(np.float32)
    dem[1, 0, :5] = np.nan
    dem_model = enc.build_encoder(enc.EncoderConfig(**TINY, use_dem=True, dem_mean_m=1500.0, dem_std_m=800.0))
    dem_path, _ = mf.save_model(dem_model, tmp_path / "dem", {"legend": LEGEND.to_dict(), "pixel_size_m": 100.0})
    names = []
    for path in (trained_path, dem_path):
        encoder, _ = mf.load_model(path)
        expected = enc.embed(encoder, classes, dem if encoder.vg_config.use_dem else None)
        name = str(path.with_suffix(""))
        np.savez(name + ".npz", classes=classes, dem=dem, expected=expected)
        names.append(name)
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", _OTHER_BACKEND, backend, *names], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]
