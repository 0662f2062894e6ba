"""Optuna studies for the tuning flow: where a study lives, opening it, counting and splitting its trials.

A study must be reachable by every worker: a journal file (Optuna's
``JournalFileBackend``) on a filesystem they share, such as a local bucket's
directory, or a database behind an SQLAlchemy URL (PostgreSQL: ``DATABASE_URL``
or the embedded server) when the workers are distributed. Resuming is
counting: the COMPLETE trials count towards the target, trials a dead worker
left RUNNING are failed, and only the missing trials are planned.

Optuna is imported inside the functions, so ``import vectorgeo`` stays light.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import numpy as np

from vectorgeo.artifacts import tuning_keys
from vectorgeo.errors import InvalidInputError, StoreUnavailableError
from vectorgeo.transfer import Bucket

if TYPE_CHECKING:
    import optuna

__all__ = [
    "StudyStorage",
    "count_complete",
    "fail_running_trials",
    "open_study",
    "resolve_storage",
    "trial_specs",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyStorage:
    """Where a study lives.

    Attributes:
        spec: What :func:`open_study` takes: a journal path or an SQLAlchemy URL.
        label: The same without credentials, for logs and the result document.
        embedded_dir: Cluster directory when the study lives in the embedded PostgreSQL, else None.
    """

    spec: str
    label: str
    embedded_dir: Path | None = None


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def resolve_storage(
    bucket: Bucket, study_name: str, storage: str = "", *, database_url: str | None = None, data_dir: str | Path
) -> StudyStorage:
    """Choose the study's storage; start the embedded PostgreSQL when it is the one.

    Args:
        bucket: The pipeline bucket.
        study_name: The study (names the journal's folder).
        storage: ``""`` (automatic: a journal for a local bucket, PostgreSQL for an S3
            bucket), ``"journal"`` (``tuning/{study}/journal.log`` in a local bucket, whose
            directory every local worker shares), ``"postgres"`` (``database_url``, else the
            embedded PostgreSQL in ``data_dir/postgres``) or an SQLAlchemy URL
            (``postgresql://user@host/db``).
        database_url: A PostgreSQL server (``DATABASE_URL``), or None.
        data_dir: Machine-local directory of the embedded servers.

    Raises:
        InvalidInputError: a journal asked for in an S3 bucket, or an unknown storage.
        ServerStartError: the embedded PostgreSQL did not start.
    """
    storage = (storage or "").strip()
    is_s3 = bucket.url.startswith("s3://")
    if storage == "journal" or (not storage and not is_s3):
        if is_s3:
            raise InvalidInputError(
                f"an Optuna journal file needs a filesystem every worker shares, and bucket {bucket.url!r} is S3 "
                "(no appends, no locks); use --storage=postgres with DATABASE_URL set, or a postgresql:// URL"
            )
        key = tuning_keys(study_name)["journal"]
        return StudyStorage(bucket.uri(key), f"journal {bucket.uri(key)}")
    if storage == "postgres" or not storage:
        if database_url:
            return StudyStorage(database_url, _without_credentials(database_url))
        from vectorgeo.stores.postgres_server import EmbeddedPostgres

        cluster = Path(data_dir) / "postgres"
        url = EmbeddedPostgres(cluster).start()  # reuses a running server: plan starts it, workers share it
        return StudyStorage(url, f"embedded PostgreSQL in {cluster}", cluster)
    if "://" in storage:
        return StudyStorage(storage, _without_credentials(storage))
    raise InvalidInputError(
        f"unknown --storage {storage!r}; use '' (automatic), 'journal', 'postgres' or an SQLAlchemy URL "
        "such as postgresql://user@host/db (keep passwords in DATABASE_URL)"
    )


def open_study(storage: str | Path, study_name: str, *, seed: int = 0) -> optuna.Study:
    """Create or load a study that minimises :func:`vectorgeo.tuning.validation_score`.

    Args:
        storage: A journal file path (Optuna's ``JournalFileBackend``: every worker
            must see the same filesystem, so a local bucket's directory serves
            local workers but S3 cannot), or an SQLAlchemy URL such as
            ``postgresql://user@host/db`` (Optuna's RDB storage, for distributed workers).
        study_name: The study's name within the storage.
        seed: Seed of this process's TPE sampler; give each worker its own.

    Returns:
        The study, with a TPE sampler (``constant_liar``, so parallel workers spread out).

    Raises:
        InvalidInputError: an empty storage or name, or a study that maximises.
        StoreUnavailableError: the database cannot be reached (the message never quotes the URL).
    """
    import optuna

    storage = str(storage)
    if not storage or not study_name:
        raise InvalidInputError(f"need a storage and a study name, got study={study_name!r}")
    sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    if "://" not in storage:
        from optuna.storages.journal import JournalFileBackend

        Path(storage).parent.mkdir(parents=True, exist_ok=True)
        backend = optuna.storages.JournalStorage(JournalFileBackend(storage))
        return _create_study(backend, study_name, sampler)
    import sqlalchemy.exc

    try:
        backend = optuna.storages.RDBStorage(storage, engine_kwargs={"pool_pre_ping": True})
        return _create_study(backend, study_name, sampler)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as exc:  # the URL may hold a password: never quote it
        raise StoreUnavailableError(
            f"cannot open study {study_name!r} in its database ({type(exc).__name__}); check that the server "
            "is reachable, its driver installed, and DATABASE_URL / --storage right"
        ) from exc


def _create_study(backend, study_name: str, sampler) -> optuna.Study:
    import optuna

    try:
        return optuna.create_study(
            storage=backend, study_name=study_name, sampler=sampler, direction="minimize", load_if_exists=True
        )
    except ValueError as exc:  # an existing study of the same name with another direction
        raise InvalidInputError(f"study {study_name!r} cannot be used here ({exc}); pick another study name") from exc


def count_complete(study: optuna.Study) -> int:
    """Trials of the study that finished with a score."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def fail_running_trials(study: optuna.Study, *, run_id: str | None = None, worker: int | None = None) -> int:
    """Mark trials left RUNNING by a stopped worker as failed; returns how many.

    Args:
        study: The study.
        run_id: With ``worker``, only the trials that carry both as user attributes (one
            task's earlier attempt); None fails every running trial, which only a plan
            that runs before any worker may do.
        worker: The worker index.
    """
    from optuna.trial import TrialState

    stale = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if run_id is None or (t.user_attrs.get("run_id"), t.user_attrs.get("worker")) == (run_id, worker)
    ]
    for t in stale:
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        logger.warning("trial %d was left running by a stopped worker; marked failed", t.number)
    return len(stale)


def trial_specs(study: optuna.Study, n_trials: int, n_jobs: int, *, run_id: str, seed: int = 0) -> list[dict]:
    """Split the trials a study still lacks over at most ``n_jobs`` workers.

    Args:
        study: The study; its COMPLETE trials count towards ``n_trials``.
        n_trials: Complete trials the study should end with.
        n_jobs: Most workers.
        run_id: This flow run (a worker counts its own finished trials by it).
        seed: Base of each worker's sampler seed.

    Returns:
        One ``{"worker", "n_trials", "run_id", "sampler_seed"}`` per worker with work; a single
        worker with ``n_trials`` 0 when nothing is missing (a foreach needs one split).
    """

    if n_trials < 1 or n_jobs < 1:
        raise InvalidInputError(f"n_trials and n_jobs must be >= 1, got n_trials={n_trials}, n_jobs={n_jobs}")
    missing = max(0, n_trials - count_complete(study))
    asked = len(study.get_trials(deepcopy=False))
    specs = []
    for worker in range(n_jobs):
        count = missing // n_jobs + (worker < missing % n_jobs)
        if count or (worker == 0 and not missing):
            sampler_seed = int(np.random.SeedSequence([seed, asked, worker]).generate_state(1)[0])
            specs.append({"worker": worker, "n_trials": count, "run_id": str(run_id), "sampler_seed": sampler_seed})
    return specs
