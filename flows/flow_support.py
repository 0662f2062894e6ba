"""What every VectorGeo flow needs before and around its steps.

Reads deployment settings (this is flow code, so it may), gives each step
its bucket with a step-local cache, and turns VectorGeo's own errors into
one clean Metaflow message instead of a traceback.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from metaflow.exception import MetaflowException

import constants
from vectorgeo.errors import VectorGeoError
from vectorgeo.transfer import Bucket

# Metaflow needs a user name; CI and containers often have neither variable.
if not any(os.environ.get(name) for name in ("METAFLOW_USER", "USERNAME", "USER")):
    os.environ["USERNAME"] = "vectorgeo"

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


class VectorGeoFlowError(MetaflowException):
    """Shown by Metaflow as a headline and a message, without a traceback."""

    headline = "VectorGeo stopped"


def bucket_for_step(step_name: str) -> Bucket:
    """The pipeline bucket, with this machine's cache for this step."""
    cache_dir = constants.CACHE_DIR.replace("{step}", step_name)
    return Bucket(constants.BUCKET, cache_dir, endpoint_url=constants.S3_ENDPOINT_URL, region=constants.AWS_REGION)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Report bad input (any VectorGeoError) as one clear line and fail the step."""
    try:
        yield
    except VectorGeoError as exc:
        raise VectorGeoFlowError(f"{type(exc).__name__}: {exc}") from exc
