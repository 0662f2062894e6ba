"""What every VectorGeo flow needs before and around its steps.

Reads deployment settings (this is flow code, so it may), makes the bucket a
Parameter of every flow (so remote tasks, which do not inherit the shell's
environment, write where the run was started to write), gives each step its
bucket with a step-local cache, and turns VectorGeo's own errors into one
clean Metaflow message instead of a traceback.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from metaflow import FlowSpec, Parameter
from metaflow.exception import MetaflowException

import constants
from vectorgeo.errors import VectorGeoError
from vectorgeo.transfer import Bucket

# Metaflow needs a user name; CI and containers often have neither variable.
if not any(os.environ.get(name) for name in ("METAFLOW_USER", "USERNAME", "USER")):
    os.environ["USERNAME"] = "vectorgeo"
# TensorFlow's start-up chatter (CUDA probing, oneDNN notes) drowns the flow's own log.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


class VectorGeoFlowError(MetaflowException):
    """Shown by Metaflow as a headline and a message, without a traceback."""

    headline = "VectorGeo stopped"


class VectorGeoFlow(FlowSpec):
    """Base of every VectorGeo flow: the bucket settings, as Parameters."""

    bucket = Parameter(
        "bucket",
        help="Artifact bucket: a directory or s3://bucket/prefix (default $VG_BUCKET)",
        default=constants.BUCKET,
    )
    s3_endpoint_url = Parameter(
        "s3_endpoint_url",
        help="S3-compatible endpoint URL; empty = AWS S3 (default $VG_S3_ENDPOINT_URL)",
        default=constants.S3_ENDPOINT_URL or "",
    )

    def step_bucket(self, step_name: str) -> Bucket:
        """The run's bucket, with this machine's cache for this step."""
        if _runs_remotely() and not str(self.bucket).startswith("s3://"):
            raise VectorGeoFlowError(
                f"this task runs remotely but --bucket is the local directory {self.bucket!r}; "
                "pass --bucket=s3://bucket/prefix (or set VG_BUCKET) when using --with batch/kubernetes"
            )
        cache_dir = constants.CACHE_DIR.replace("{step}", step_name)
        return Bucket(self.bucket, cache_dir, endpoint_url=self.s3_endpoint_url or None, region=constants.AWS_REGION)


def _runs_remotely() -> bool:
    return any(os.environ.get(v) for v in ("AWS_BATCH_JOB_ID", "METAFLOW_KUBERNETES_POD_NAME"))


def store_servers(kinds: list[str]) -> dict:
    """Server settings for the stores a step writes, read here, in the task, never kept as artifacts.

    A remote task does not inherit the launching shell's environment: provide
    QDRANT_URL / QDRANT_API_KEY / DATABASE_URL to it (Metaflow ``@secrets``,
    ``@environment`` or the image). It refuses to fall back to an embedded
    store inside a throwaway container.
    """
    missing = [name for kind, name in (("qdrant", "QDRANT_URL"), ("pgvector", "DATABASE_URL")) if kind in kinds]
    missing = [name for name in missing if not getattr(constants, name)]
    if _runs_remotely() and missing:
        raise VectorGeoFlowError(
            f"this task runs remotely but {', '.join(missing)} is not set in its environment, so it would load an "
            "embedded store inside a throwaway container; give the task the server settings (e.g. @secrets)"
        )
    return {
        "data_dir": constants.DATA_DIR,
        "qdrant_url": constants.QDRANT_URL,
        "qdrant_api_key": constants.QDRANT_API_KEY,
        "database_url": constants.DATABASE_URL,
        "pg_maintenance_work_mem": constants.PG_MAINTENANCE_WORK_MEM,
    }


def study_servers(storage: str) -> dict:
    """Where the tuning flow's Optuna study may live, read here, in the task, never kept as artifacts.

    A remote task refuses to start the embedded PostgreSQL (a server inside one
    throwaway container is no study the other workers can reach): give every
    task DATABASE_URL (e.g. ``@secrets``) or pass ``--storage=postgresql://...``.
    """
    if _runs_remotely() and storage.strip() in ("", "postgres") and not constants.DATABASE_URL:
        raise VectorGeoFlowError(
            "this task runs remotely but DATABASE_URL is not set in its environment, so the Optuna study would "
            "live in an embedded PostgreSQL inside a throwaway container; give the tasks DATABASE_URL (e.g. "
            "@secrets) or pass --storage=postgresql://host/db"
        )
    return {"database_url": constants.DATABASE_URL, "data_dir": constants.DATA_DIR}


class RasterFlow(VectorGeoFlow):
    """Base of the flows that read the land-cover raster: its settings, as Parameters."""

    landcover = Parameter(
        "landcover", help="Land-cover raster: local path or bucket key; empty = synthetic", default=constants.LANDCOVER
    )
    legend = Parameter(
        "legend", help="Legend: lc100, worldcover, or a .csv/.json file (path or bucket key)", default=constants.LEGEND
    )
    synthetic_seed = Parameter(
        "synthetic_seed", help="Seed of the synthetic raster", type=int, default=constants.SYNTHETIC_SEED
    )


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Report bad input (any VectorGeoError) as one clear line and fail the step."""
    try:
        yield
    except VectorGeoError as exc:
        raise VectorGeoFlowError(f"{type(exc).__name__}: {exc}") from exc
