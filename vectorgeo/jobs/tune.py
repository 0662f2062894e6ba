"""The tuning flow's units of work: plan the trials, run one worker's trials, write the best settings.

Every worker reaches the same Optuna study (:func:`vectorgeo.studies.resolve_storage`), asks it
for parameters, trains on pairs off held-out and validation ground, scores on
validation patches sampled once by the plan (``tuning/{study}/validation.npz``)
and tells the study the score. The plan counts the finished trials, so a
rerun of a killed study runs only the trials still missing; a retried worker
counts its own finished trials the same way.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vectorgeo.artifacts import is_plain_name, model_name, read_train_manifest, tuning_keys
from vectorgeo.errors import IncompleteOutputError, InvalidInputError
from vectorgeo.holdout import HOLDOUT, VALIDATION, latlng_to_cells
from vectorgeo.jobs.train import load_training_data
from vectorgeo.legends import Legend
from vectorgeo.raster import open_raster
from vectorgeo.sources import resolve_legend, resolve_rasters
from vectorgeo.studies import (
    StudyStorage,
    count_complete,
    fail_running_trials,
    open_study,
    resolve_storage,
    trial_specs,
)
from vectorgeo.training import OBJECTIVES
from vectorgeo.transfer import Bucket
from vectorgeo.tuning import (
    SEARCH_SPACE,
    TRIPLET_SPACE,
    ValidationCells,
    sample_validation_cells,
    suggest_settings,
    validation_score,
    write_tuning,
)

__all__ = ["finish_tuning", "plan_trials", "run_trials"]

logger = logging.getLogger(__name__)

_K = 10  # neighbours per retrieval query in the validation report
_SCORE = "retrieval_jsd / pca_retrieval_jsd + sum(1 - clip(r2, -1, 1)) over class fractions, edge density, Shannon"


@dataclass(frozen=True)
class _Settings:
    """The settings every step of the tuning flow gets, checked once."""

    model_filename: str
    train_set: str
    study_name: str = ""
    n_train_files: int = 0
    epochs: int = 3
    embed_dim: int = 16
    objectives: str = "infonce"
    max_validation_cells: int = 2000
    seed: int = 0
    landcover: str = ""
    legend: str = "lc100"
    synthetic_seed: int = 0
    storage: str = ""
    database_url: str | None = field(default=None, repr=False)
    data_dir: str = "data/stores"

    def __post_init__(self) -> None:
        study = self.study_name or model_name(self.model_filename)
        if not is_plain_name(study):  # it names bucket keys
            raise InvalidInputError(f"study_name {study!r} must be a plain name (letters, digits, '_', '-', '.')")
        object.__setattr__(self, "study_name", study)
        unknown = set(self.objective_list) - set(OBJECTIVES)
        if not self.objective_list or unknown:
            raise InvalidInputError(f"--objectives must list some of {OBJECTIVES}, got {self.objectives!r}")
        for name, low in (("epochs", 1), ("embed_dim", 1), ("max_validation_cells", 2 * _K + 2), ("n_train_files", 0)):
            if getattr(self, name) < low:
                raise InvalidInputError(f"{name} must be >= {low}, got {getattr(self, name)}")

    @property
    def objective_list(self) -> tuple[str, ...]:
        return tuple(o.strip() for o in str(self.objectives).split(",") if o.strip())

    def fingerprint(self, patch_px: int) -> dict:
        """What must not change while a study resumes, or its trials stop being comparable."""
        keys = ("train_set", "n_train_files", "epochs", "embed_dim", "max_validation_cells", "seed", "landcover")
        return {
            **{k: getattr(self, k) for k in keys},
            "objectives": list(self.objective_list),
            "legend": self.legend,
            "synthetic_seed": self.synthetic_seed,
            "patch_px": int(patch_px),
        }


def _storage(bucket: Bucket, s: _Settings) -> StudyStorage:
    return resolve_storage(bucket, s.study_name, s.storage, database_url=s.database_url, data_dir=s.data_dir)


def _quiet_optuna() -> None:
    """Optuna's own per-trial INFO lines would repeat ours."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _write_cells(bucket: Bucket, key: str, cells: ValidationCells) -> None:
    with tempfile.TemporaryDirectory(prefix="vg-tune-") as tmp:
        path = Path(tmp) / "validation.npz"
        np.savez_compressed(path, classes=cells.classes, lat=cells.lat, lng=cells.lng, half_width_m=cells.half_width_m)
        bucket.upload(path, key)


def _read_cells(bucket: Bucket, key: str) -> ValidationCells:
    with np.load(bucket.download(key)) as data:
        return ValidationCells(data["classes"], data["lat"], data["lng"], float(data["half_width_m"]))


def plan_trials(bucket: Bucket, *, n_trials: int, n_jobs: int, run_id: str, **settings) -> list[dict]:
    """Check the settings once, create or resume the study, sample the validation patches, split the trials.

    Trials a killed run left RUNNING are marked failed; only the trials the study still
    lacks are planned. A resumed study must keep the settings it started with.

    Args:
        bucket: The pipeline bucket.
        n_trials: Complete trials the study should end with.
        n_jobs: Most workers (foreach width); each runs its trials in turn.
        run_id: The flow run's id.
        **settings: ``model_filename``, ``train_set``, ``study_name``, ``n_train_files``, ``epochs``,
            ``embed_dim``, ``objectives``, ``max_validation_cells``, ``seed``, ``landcover``, ``legend``,
            ``synthetic_seed``, ``storage``, ``database_url``, ``data_dir``.

    Returns:
        The worker specs (see :func:`trial_specs`).

    Raises:
        InvalidInputError: bad settings, no training set, another legend than the
            training set's, settings that differ from the resumed study's, too few validation patches.
    """
    s = _Settings(**settings)
    bucket.check_writable()
    manifest = read_train_manifest(bucket, s.train_set)
    legend = resolve_legend(bucket, s.legend)
    recorded = manifest["legend"]  # flow 01 records the --legend it was given
    trained_on = Legend.from_dict(recorded) if isinstance(recorded, dict) else resolve_legend(bucket, recorded)
    if tuple(trained_on.codes) != tuple(legend.codes):
        raise InvalidInputError(
            f"training set {s.train_set!r} was sampled with legend {trained_on.name!r} but --legend is "
            f"{legend.name!r}; pass the training set's legend"
        )
    patch_px = int(manifest["patch_px"])
    _quiet_optuna()
    storage = _storage(bucket, s)
    study = open_study(storage.spec, s.study_name, seed=s.seed)
    fingerprint, recorded = s.fingerprint(patch_px), study.user_attrs.get("settings")
    if recorded is None:
        study.set_user_attr("settings", fingerprint)
    elif recorded != fingerprint:
        changed = ", ".join(
            f"{k}: {recorded.get(k)!r} -> {v!r}" for k, v in fingerprint.items() if recorded.get(k) != v
        )
        raise InvalidInputError(
            f"study {s.study_name!r} was started with other settings ({changed}); "
            "rerun with its settings to resume it, or pass a new --study_name"
        )
    fail_running_trials(study)
    cells_key = tuning_keys(s.study_name)["cells"]
    if recorded is None or not bucket.exists(cells_key):  # a new study never inherits another's patches
        rasters = resolve_rasters(bucket, s.landcover, synthetic_seed=s.synthetic_seed)
        with open_raster(rasters.landcover) as dataset:
            cells = sample_validation_cells(
                dataset, legend, patch_px=patch_px, n_cells=s.max_validation_cells, seed=s.seed
            )
        if len(cells.lat) < 2 * _K + 2:
            raise InvalidInputError(
                f"only {len(cells.lat)} valid patches lie on validation ground; scoring needs {2 * _K + 2}: "
                "use a larger raster or a smaller --patch_size in flow 01"
            )
        _write_cells(bucket, cells_key, cells)
        logger.info("sampled %d validation patches into %s", len(cells.lat), bucket.uri(cells_key))
    if s.max_validation_cells < 500:
        logger.warning("scoring on at most %d validation patches: noisy scores", s.max_validation_cells)
    specs = trial_specs(study, n_trials, n_jobs, run_id=run_id, seed=s.seed)
    todo = sum(spec["n_trials"] for spec in specs)
    logger.info(
        "study %r (%s): %d trials complete, %d wanted; running %d more on %d worker(s)",
        s.study_name, storage.label, count_complete(study), n_trials, todo, sum(spec["n_trials"] > 0 for spec in specs),
    )  # fmt: skip
    return specs


def run_trials(bucket: Bucket, spec: dict, **settings) -> dict:
    """Run one worker's trials: ask, train, embed the validation patches, score, tell.

    A retried worker first fails the trials its previous attempt left running and
    skips the ones it finished. Each trial logs one line with its score, time and parameters.

    Args:
        bucket: The pipeline bucket.
        spec: One of :func:`plan_trials`'s specs.
        **settings: As :func:`plan_trials`.

    Returns:
        ``{"worker", "trials": [{"number", "state", "score", "seconds"}, ...]}``.
    """
    from vectorgeo.encoder import EncoderConfig, embed
    from vectorgeo.evaluate import evaluate_embeddings
    from vectorgeo.keras_env import import_keras
    from vectorgeo.training import train_encoder

    s = _Settings(**settings)
    worker, run_id = int(spec["worker"]), str(spec["run_id"])
    out = {"worker": worker, "trials": []}
    if spec["n_trials"] < 1:
        return out
    from optuna.trial import TrialState

    _quiet_optuna()
    study = open_study(_storage(bucket, s).spec, s.study_name, seed=int(spec["sampler_seed"]))
    fail_running_trials(study, run_id=run_id, worker=worker)
    mine = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if (t.user_attrs.get("run_id"), t.user_attrs.get("worker")) == (run_id, worker)
    ]
    todo = int(spec["n_trials"]) - len(mine)
    if todo < 1:
        return out
    data = load_training_data(
        bucket,
        train_set=s.train_set,
        n_train_files=s.n_train_files,
        use_dem=False,
        exclude_validation_ground=True,
        seed=s.seed,
    )
    cells = _read_cells(bucket, tuning_keys(s.study_name)["cells"])
    groups = latlng_to_cells(cells.lat, cells.lng, HOLDOUT["parent_res"])
    legend = Legend.from_dict(data.meta["legend"])
    keras = import_keras()
    for _ in range(todo):
        started = time.perf_counter()
        trial = study.ask()
        trial.set_user_attr("run_id", run_id)
        trial.set_user_attr("worker", worker)
        encoder, params = suggest_settings(
            trial, objectives=s.objective_list, encoder={"embed_dim": s.embed_dim}, epochs=s.epochs, seed=s.seed
        )
        config = EncoderConfig(n_classes=legend.n_classes, patch_px=int(data.meta["patch_px"]), **encoder)
        model, history = train_encoder(data.train, data.val, config, params)
        vectors = embed(model, cells.classes)
        keras.backend.clear_session()
        if not np.isfinite(vectors).all():
            study.tell(trial, state=TrialState.FAIL)
            logger.warning("trial %d diverged (non-finite embeddings); params %s", trial.number, trial.params)
            out["trials"].append({"number": trial.number, "state": "FAIL", "score": None, "seconds": None})
            continue
        report = evaluate_embeddings(
            vectors,
            cells.classes,
            legend.n_classes,
            k=_K,
            seed=s.seed,
            groups=groups,
            lat=cells.lat,
            lng=cells.lng,
            half_width_m=cells.half_width_m,
            min_cells=min(500, s.max_validation_cells),
        )
        score, seconds = validation_score(report), time.perf_counter() - started
        attrs = {
            "encoder": encoder,
            "training": params.to_dict(),
            "metrics": report["methods"],
            "seconds": round(seconds, 1),
            "epochs_run": history["epochs_run"],
            "best_val_loss": round(history["best_val_loss"], 5),
        }
        for name, value in attrs.items():
            trial.set_user_attr(name, value)
        study.tell(trial, score)
        n_complete = count_complete(study)
        logger.info(
            "trial %d: score %.4f in %.1f s (%d complete in study %r); %s",
            trial.number, score, seconds, n_complete, s.study_name,
            ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items()),
        )  # fmt: skip
        out["trials"].append({"number": trial.number, "state": "COMPLETE", "score": score, "seconds": seconds})
    return out


def _trial_summary(t) -> dict:
    return {
        "number": t.number,
        "state": t.state.name,
        "score": None if t.value is None else round(float(t.value), 5),
        "params": t.params,
        "seconds": t.user_attrs.get("seconds"),
        "epochs_run": t.user_attrs.get("epochs_run"),
        "run_id": t.user_attrs.get("run_id"),
        "worker": t.user_attrs.get("worker"),
    }


def finish_tuning(bucket: Bucket, results: list[dict], *, n_trials: int, **settings) -> dict:
    """Check the study is complete and write ``models/{name}.tuning.json`` atomically.

    Stops the embedded PostgreSQL when the study lived there.

    Args:
        bucket: The pipeline bucket.
        results: The workers' :func:`run_trials` results.
        n_trials: Complete trials the study should have.
        **settings: As :func:`plan_trials`.

    Returns:
        A small summary: ``key``, ``study``, ``n_trials``, ``n_run`` (trials run by these workers),
        ``best_trial``, ``best_score``, ``best_metrics``, ``params``, ``trials``.

    Raises:
        IncompleteOutputError: fewer than ``n_trials`` trials completed (rerun the flow: it resumes).
    """
    from optuna.trial import TrialState

    s = _Settings(**settings)
    _quiet_optuna()
    storage = _storage(bucket, s)
    try:
        study = open_study(storage.spec, s.study_name, seed=s.seed)
        trials = study.get_trials(deepcopy=False)
    finally:
        if storage.embedded_dir is not None:
            from vectorgeo.stores.postgres_server import EmbeddedPostgres

            EmbeddedPostgres(storage.embedded_dir).stop(force=True)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if len(complete) < n_trials:
        failed = [t.number for t in trials if t.state == TrialState.FAIL]
        raise IncompleteOutputError(
            f"study {s.study_name!r} has {len(complete)} of {n_trials} complete trials (failed: {failed[-10:]}); "
            "rerun the flow with the same settings: it resumes and runs only the missing trials"
        )
    best = min(complete, key=lambda t: t.value)
    attrs = best.user_attrs
    cells_key = tuning_keys(s.study_name)["cells"]
    cells = _read_cells(bucket, cells_key)
    starts = [t.datetime_start for t in complete if t.datetime_start]
    ends = [t.datetime_complete for t in complete if t.datetime_complete]
    document = {
        "study": s.study_name,
        "storage": storage.label,
        "model": model_name(s.model_filename),
        "n_trials": len(complete),
        "n_failed": sum(t.state == TrialState.FAIL for t in trials),
        "best_trial": best.number,
        "best_score": round(float(best.value), 5),
        "best_metrics": attrs["metrics"]["encoder"],
        "baselines": {k: v for k, v in attrs["metrics"].items() if k != "encoder"},
        "encoder": attrs["encoder"],
        "training": attrs["training"],
        "params": best.params,
        "score": _SCORE,
        "trials": [_trial_summary(t) for t in trials],
        "wall_seconds": round((max(ends) - min(starts)).total_seconds(), 1) if starts and ends else None,
        "trial_seconds": round(sum(t.user_attrs.get("seconds") or 0.0 for t in complete), 1),
        "validation": {
            "key": cells_key,
            "n_cells": len(cells.lat),
            "half_width_m": cells.half_width_m,
            "ground": VALIDATION,
            "holdout": HOLDOUT,
        },
        "search_space": {**SEARCH_SPACE, **(TRIPLET_SPACE if "triplet" in s.objective_list else {})},
        "settings": {k: v for k, v in asdict(s).items() if k not in ("database_url", "data_dir", "storage")},
    }
    key = write_tuning(bucket, s.model_filename, document)
    n_run = sum(1 for r in results for t in r["trials"] if t["state"] == "COMPLETE")
    logger.info(
        "study %r: best trial %d of %d, score %.4f; wrote %s", s.study_name, best.number, len(complete),
        best.value, bucket.uri(key),
    )  # fmt: skip
    return {
        "key": key,
        "study": s.study_name,
        "n_trials": len(complete),
        "n_run": n_run,
        "best_trial": best.number,
        "best_score": document["best_score"],
        "best_metrics": document["best_metrics"],
        "params": best.params,
        "trials": [{k: d[k] for k in ("number", "state", "score", "seconds")} for d in document["trials"]],
    }
