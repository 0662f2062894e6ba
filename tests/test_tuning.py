"""Hyper-parameter search (vectorgeo.tuning, vectorgeo.studies, vectorgeo.jobs.tune and flow 01b).

The end-to-end test drives flows 01 and 01b through the Metaflow CLI, then
reruns 01b with more trials and checks only the missing one ran.
"""

from __future__ import annotations

import json
import math

import numpy as np
import optuna
import pytest

from tests.conftest import REPO_ROOT
from tests.test_flows import FLOW_01, FLOW_02, _run
from vectorgeo.artifacts import tuning_keys
from vectorgeo.encoder import ENCODER_DEFAULTS
from vectorgeo.errors import InvalidInputError, NotFoundError
from vectorgeo.holdout import HOLDOUT, patch_held_out, patch_on_validation
from vectorgeo.jobs.tune import plan_trials, run_trials
from vectorgeo.legends import get_legend
from vectorgeo.raster import open_raster
from vectorgeo.studies import open_study, resolve_storage, trial_specs
from vectorgeo.training import TrainingParams
from vectorgeo.transfer import Bucket
from vectorgeo.tuning import (
    SCORE_R2_METRICS,
    SEARCH_SPACE,
    read_best,
    sample_validation_cells,
    suggest_settings,
    validation_score,
    write_tuning,
)

FLOW_01B = str(REPO_ROOT / "flows" / "01b_tune_flow.py")
CODES = np.array([20, 30, 40, 111, 126], dtype=np.uint8)  # lc100 land classes


@pytest.fixture
def bucket(tmp_path):
    return Bucket(tmp_path / "bucket", tmp_path / "cache")


@pytest.fixture
def inland_raster(write_raster):
    """3 x 3 degrees of inland Oregon at 1/200 degree: ~40 H3 res-5 parents, a few on validation ground."""
    rng = np.random.default_rng(0)
    blocks = CODES[rng.integers(0, CODES.size, (60, 60))]
    return write_raster(np.kron(blocks, np.ones((10, 10), dtype=np.uint8)), west=-123.5, north=44.8, pixel=1 / 200)


def _settings(raster, **extra) -> dict:
    return {
        "model_filename": "t.keras",
        "train_set": "default",
        "epochs": 1,
        "max_validation_cells": 40,
        "landcover": str(raster),
        "data_dir": "unused",
        **extra,
    }


def _finish(study, score: float, **attrs) -> None:
    trial = study.ask()
    for name, value in attrs.items():
        trial.set_user_attr(name, value)
    study.tell(trial, score)


# ------------------------------------------------------------------ search space and score


def test_trials_draw_inside_the_documented_space():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(40):
        encoder, params = suggest_settings(study.ask(), encoder={"embed_dim": 8}, epochs=2, seed=3)
        assert set(encoder) == set(ENCODER_DEFAULTS) and encoder["embed_dim"] == 8 and not encoder["use_dem"]
        assert encoder["num_filters"] in SEARCH_SPACE["num_filters"]
        assert encoder["composition_skip"] in (False, True)
        assert params.objective == "infonce" and params.epochs == 2 and params.seed == 3
        assert 3e-4 <= params.learning_rate <= 5e-3 and 0.05 <= params.temperature <= 0.5
        assert params.batch_size in (128, 256, 512)
        assert params.neighbor_weight in (0.0, 0.25, 0.5) and params.vicreg_weight in (0.0, 0.05, 0.2)
        assert params.composition_weight in SEARCH_SPACE["composition_weight"]


def test_triplet_trials_draw_a_margin_and_no_infonce_settings():
    fixed = {
        "objective": "triplet",
        "learning_rate": 1e-3,
        "batch_size": 128,
        "num_filters": 16,
        "composition_weight": 0.0,
    }
    trial = optuna.trial.FixedTrial({**fixed, "composition_skip": False, "margin": 0.3})
    encoder, params = suggest_settings(trial, objectives=("infonce", "triplet"))
    assert params.objective == "triplet" and params.margin == 0.3 and encoder["num_filters"] == 16
    assert set(trial.params) == {*fixed, "composition_skip", "margin"}
    with pytest.raises(InvalidInputError, match="objectives must be a non-empty subset"):
        suggest_settings(trial, objectives=("simclr",))
    with pytest.raises(InvalidInputError, match="unknown encoder settings"):
        suggest_settings(trial, encoder={"depth": 3})


def _report(jsd, jsd_pca, r2s):
    encoder = {"retrieval_jsd": jsd, **dict(zip(SCORE_R2_METRICS, r2s, strict=True))}
    return {"methods": {"encoder": encoder, "pca_onehot": {"retrieval_jsd": jsd_pca}}}


def test_validation_score_known_answers():
    # 0.1 / 0.2 + (1 - 0.9) + (1 - 0.5) + (1 - clip(-3)) = 0.5 + 0.1 + 0.5 + 2
    assert validation_score(_report(0.1, 0.2, (0.9, 0.5, -3.0))) == pytest.approx(3.1)
    assert validation_score(_report(0.2, 0.2, (1.0, 1.0, 1.0))) == pytest.approx(1.0)
    assert validation_score(_report(0.2, 0.2, (1.0, None, 1.0))) == pytest.approx(3.0)  # undefined R² is the worst
    with pytest.raises(InvalidInputError, match="no retrieval JSD"):
        validation_score(_report(None, 0.2, (1.0, 1.0, 1.0)))


# ------------------------------------------------------------------ storage and resume


def test_journal_study_resumes_with_only_the_missing_trials(tmp_path):
    journal = tmp_path / "tuning" / "s" / "journal.log"
    study = open_study(journal, "s", seed=0)
    for score in (2.0, 1.5):
        _finish(study, score)
    study.ask()  # a worker killed mid-trial leaves it RUNNING
    again = open_study(journal, "s", seed=1)  # another process
    assert [t.state.name for t in again.trials] == ["COMPLETE", "COMPLETE", "RUNNING"]
    specs = trial_specs(again, 3, 2, run_id="r2")
    assert [s["n_trials"] for s in specs] == [1] and specs[0]["run_id"] == "r2"
    assert [s["n_trials"] for s in trial_specs(again, 7, 2, run_id="r2")] == [3, 2]
    assert [s["n_trials"] for s in trial_specs(again, 2, 4, run_id="r2")] == [0]  # one idle split: foreach needs one
    assert again.best_value == 1.5


def test_plan_samples_validation_once_resumes_and_refuses_changed_settings(bucket, inland_raster):
    bucket.write_json("train/default/manifest.json", {"legend": "lc100", "patch_px": 8})
    specs = plan_trials(bucket, n_trials=3, n_jobs=2, run_id="r1", **_settings(inland_raster))
    assert [s["n_trials"] for s in specs] == [2, 1] and len({s["sampler_seed"] for s in specs}) == 2
    assert bucket.exists(tuning_keys("t")["cells"]) and bucket.exists(tuning_keys("t")["journal"])
    study = open_study(bucket.uri(tuning_keys("t")["journal"]), "t")
    for score in (2.0, 1.0):
        _finish(study, score)
    study.ask()  # left running by a killed run: the next plan fails it
    specs = plan_trials(bucket, n_trials=3, n_jobs=2, run_id="r2", **_settings(inland_raster))
    assert [s["n_trials"] for s in specs] == [1]
    assert [t.state.name for t in open_study(bucket.uri(tuning_keys("t")["journal"]), "t").trials][-1] == "FAIL"
    with pytest.raises(InvalidInputError, match=r"started with other settings \(epochs: 1 -> 2\)"):
        plan_trials(bucket, n_trials=3, n_jobs=2, run_id="r3", **_settings(inland_raster, epochs=2))
    with pytest.raises(InvalidInputError, match="sampled with legend 'lc100' but --legend is 'worldcover'"):
        plan_trials(bucket, n_trials=3, n_jobs=2, run_id="r3", **_settings(inland_raster, legend="worldcover"))
    with pytest.raises(InvalidInputError, match="no training set 'other'"):
        plan_trials(bucket, n_trials=3, n_jobs=2, run_id="r3", **_settings(inland_raster, train_set="other"))


def test_a_retried_worker_skips_what_it_finished_and_fails_what_it_left_running(bucket):
    study = open_study(bucket.uri(tuning_keys("t")["journal"]), "t")
    _finish(study, 1.0, run_id="r", worker=0)
    _finish(study, 2.0, run_id="r", worker=1)
    stale = study.ask()
    stale.set_user_attr("run_id", "r")
    stale.set_user_attr("worker", 0)
    spec = {"worker": 0, "n_trials": 1, "run_id": "r", "sampler_seed": 5}
    done = run_trials(bucket, spec, model_filename="t.keras", train_set="default", data_dir="unused")
    assert done == {"worker": 0, "trials": []}  # no training: its one trial is done
    assert [t.state.name for t in open_study(bucket.uri(tuning_keys("t")["journal"]), "t").trials][-1] == "FAIL"


def test_storage_choice(bucket, tmp_path):
    journal = resolve_storage(bucket, "demo", data_dir=tmp_path)
    assert journal.spec == bucket.uri("tuning/demo/journal.log") and journal.embedded_dir is None
    s3 = Bucket("s3://vg-test/prefix", tmp_path / "cache")
    with pytest.raises(InvalidInputError, match="journal file needs a filesystem every worker shares"):
        resolve_storage(s3, "demo", "journal", data_dir=tmp_path)
    url = "postgresql://tuner:s3cret@db.example:5432/optuna"
    for chosen in (
        resolve_storage(s3, "demo", database_url=url, data_dir=tmp_path),
        resolve_storage(s3, "d", url, data_dir=tmp_path),
    ):
        assert chosen.spec == url and chosen.label == "postgresql://db.example:5432/optuna"
    with pytest.raises(InvalidInputError, match="unknown --storage 'redis'"):
        resolve_storage(bucket, "demo", "redis", data_dir=tmp_path)


def test_study_in_the_embedded_postgresql(bucket, tmp_path):
    """The distributed path: an RDB study that a second process (here, a second study object) resumes."""
    from vectorgeo.stores.postgres_server import EmbeddedPostgres

    storage = resolve_storage(bucket, "pg", "postgres", data_dir=tmp_path / "stores")
    try:
        assert storage.spec.startswith("postgresql://") and storage.embedded_dir == tmp_path / "stores" / "postgres"
        _finish(open_study(storage.spec, "pg", seed=0), 0.5)
        again = open_study(storage.spec, "pg", seed=1)
        assert [s["n_trials"] for s in trial_specs(again, 3, 2, run_id="r")] == [1, 1]
    finally:
        EmbeddedPostgres(storage.embedded_dir).stop(force=True)
    assert not EmbeddedPostgres(storage.embedded_dir).is_running


# ------------------------------------------------------------------ validation ground


def test_validation_cells_lie_wholly_on_validation_ground_never_on_held_out(inland_raster):
    legend = get_legend("lc100")
    with open_raster(inland_raster) as dataset:
        cells = sample_validation_cells(dataset, legend, patch_px=8, n_cells=150, seed=1)
        again = sample_validation_cells(dataset, legend, patch_px=8, n_cells=150, seed=1)
    assert 50 <= len(cells.lat) <= 150 and cells.classes.shape == (len(cells.lat), 8, 8)
    assert patch_on_validation(cells.lat, cells.lng, cells.half_width_m)[0].all()
    assert not patch_held_out(cells.lat, cells.lng, cells.half_width_m, **HOLDOUT)[1].any()
    assert np.isin(cells.classes, legend.codes_to_indices(CODES)).all()
    np.testing.assert_array_equal(cells.lat, again.lat)


def test_a_raster_without_validation_ground_says_so(write_raster):
    """An 8 km clip inside one H3 res-5 parent that is not validation ground has no patch to score."""
    for west in np.arange(-123.5, -120.0, 0.25):
        corners = np.array([44.8, 44.75, 44.75, 44.8]), np.array([west, west, west + 0.08, west + 0.08])
        if not patch_on_validation(*corners, 10.0)[1].any():
            break
    path = write_raster(np.full((50, 80), 40, dtype=np.uint8), west=west, north=44.8)
    with open_raster(path) as dataset, pytest.raises(InvalidInputError, match="lies wholly on validation ground"):
        sample_validation_cells(dataset, get_legend("lc100"), patch_px=8, n_cells=20, max_rounds=2)


# ------------------------------------------------------------------ the result document


def _document(**changes) -> dict:
    training = TrainingParams(epochs=1, learning_rate=1e-3, temperature=0.2).to_dict()
    return {
        "study": "t",
        "n_trials": 2,
        "best_trial": 1,
        "best_score": 2.5,
        "encoder": {**ENCODER_DEFAULTS, "num_filters": 48},
        "training": training,
        "trials": [],
        **changes,
    }


def test_read_best_gives_flow_02_the_tuned_settings_not_the_trial_budget(bucket):
    assert write_tuning(bucket, "t.keras", _document()) == "models/t.tuning.json"
    best = read_best(bucket, "t.keras")
    assert best["source"] == "models/t.tuning.json" and best["best_trial"] == 1 and best["study"] == "t"
    assert best["encoder"]["num_filters"] == 48 and set(best["encoder"]) == set(ENCODER_DEFAULTS)
    assert not {"epochs", "patience", "seed"} & set(best["training"])
    params = TrainingParams(**best["training"], epochs=10)
    assert params.learning_rate == 1e-3 and params.temperature == 0.2 and params.epochs == 10


def test_read_best_errors(bucket):
    with pytest.raises(NotFoundError, match=r"no tuning result 'models/none.tuning.json'.*01b_tune_flow.py"):
        read_best(bucket, "none.keras")
    write_tuning(bucket, "odd.keras", _document(encoder={"depth": 3}))
    with pytest.raises(InvalidInputError, match=r"unknown encoder settings \['depth'\]"):
        read_best(bucket, "odd.keras")
    write_tuning(bucket, "bad.keras", _document(training={"temperature": 99.0}))
    with pytest.raises(InvalidInputError, match="temperature must lie in"):
        read_best(bucket, "bad.keras")
    with pytest.raises(InvalidInputError, match="lacks"):
        write_tuning(bucket, "x.keras", {"study": "t"})


# ------------------------------------------------------------------ the flow, end to end


@pytest.mark.flows
def test_tune_flow_runs_trials_in_parallel_and_resumes(tmp_path):
    """Flow 01 then 01b (2 trials, 2 workers), then 01b for 3 trials: only the missing one runs."""
    bucket = tmp_path / "bucket"
    done = _run(tmp_path, FLOW_01, "--n_files=2", "--n_jobs=1", "--samples_per_file=32", "--patch_size=16")
    assert done.returncode == 0, done.stderr[-3000:]
    tiny = ["--epochs=1", "--max_validation_cells=40", "--embed_dim=8", "--model_filename=tiny.keras"]
    # one worker at a time: each trial is a TensorFlow process, and CI machines are small
    done = _run(tmp_path, FLOW_01B, "--max-workers=1", "--n_trials=2", "--n_jobs=2", *tiny)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "Foreach yields 2 child steps" in out and "trial 0: score" in out and "trial 1: score" in out
    first = json.loads((bucket / "models" / "tiny.tuning.json").read_text())
    assert first["n_trials"] == 2 and [t["state"] for t in first["trials"]] == ["COMPLETE", "COMPLETE"]
    assert {t["worker"] for t in first["trials"]} == {0, 1}
    assert first["best_score"] == min(t["score"] for t in first["trials"]) and math.isfinite(first["best_score"])
    assert first["encoder"]["embed_dim"] == 8 and first["training"]["objective"] == "infonce"
    assert first["validation"]["n_cells"] == 40 and (bucket / "tuning" / "tiny" / "journal.log").is_file()

    done = _run(tmp_path, FLOW_01B, "--max-workers=1", "--n_trials=3", "--n_jobs=2", *tiny)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "2 trials complete, 3 wanted; running 1 more on 1 worker(s)" in out and "trial 2: score" in out
    second = json.loads((bucket / "models" / "tiny.tuning.json").read_text())
    assert second["n_trials"] == 3 and second["trials"][:2] == first["trials"]
    assert second["trials"][2]["run_id"] != first["trials"][0]["run_id"]
    best = read_best(Bucket(bucket, tmp_path / "cache-check"), "tiny.keras")
    assert best["best_trial"] == second["best_trial"] and best["encoder"] == second["encoder"]

    # flow 02 trains from the tuned settings; the budget (epochs, seed) stays this run's
    done = _run(tmp_path, FLOW_02, "--from_tuning=true", "--epochs=1", "--model_filename=tiny.keras")
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    sidecar = json.loads((bucket / "models" / "tiny.json").read_text())
    assert sidecar["tuning"]["best_trial"] == best["best_trial"]
    assert sidecar["encoder_config"]["num_filters"] == best["encoder"]["num_filters"]
    assert sidecar["encoder_config"]["composition_skip"] == best["encoder"]["composition_skip"]
    trained = sidecar["training"]["params"]
    assert trained["epochs"] == 1 and all(trained[k] == v for k, v in best["training"].items())
