"""Deployment settings: a default for each, overridable by an environment variable.

Only flows, ``lambda/`` and scripts import this module; the ``vectorgeo``
library takes every setting as an explicit argument. Nothing here does I/O:
values are read from the environment once, at import. Secrets never live
here: AWS credentials come from the standard AWS credential chain.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent

# Where artifacts move between steps: a local directory or s3://bucket/prefix.
BUCKET = os.environ.get("VG_BUCKET", str(REPO_ROOT / "data" / "bucket"))
# Machine-local cache of bucket downloads. "{step}" in it is replaced by the
# step's name (tests use that to prove steps share nothing on local disk).
CACHE_DIR = os.environ.get("VG_CACHE_DIR", str(REPO_ROOT / "tmp"))
# Land-cover raster and DEM: local paths or bucket keys; empty = synthetic default.
LANDCOVER = os.environ.get("VG_LANDCOVER", "")
DEM = os.environ.get("VG_DEM", "")
# Built-in legend name (lc100, worldcover) or a .csv/.json legend file.
LEGEND = os.environ.get("VG_LEGEND", "lc100")
# Seed of the synthetic default raster.
SYNTHETIC_SEED = int(os.environ.get("VG_SYNTHETIC_SEED", "0"))
# S3-compatible endpoint (MinIO, Ceph, R2, ...); empty = AWS S3.
S3_ENDPOINT_URL = os.environ.get("VG_S3_ENDPOINT_URL", "") or None
# Region of the S3 bucket; unset lets boto3 take it from the AWS profile / environment.
AWS_REGION = os.environ.get("AWS_REGION") or None

# Pipeline defaults (each is also a flow parameter).
H3_RESOLUTION = int(os.environ.get("VG_H3_RESOLUTION", "7"))
PATCH_PX = int(os.environ.get("VG_PATCH_PX", "32"))
TRAIN_SET = os.environ.get("VG_TRAIN_SET", "default")
MODEL_FILENAME = os.environ.get("VG_MODEL", "demo.keras")
# Parallel inference workers (foreach width, at most 100); each embeds several parts in turn.
INFERENCE_WORKERS = int(os.environ.get("VG_INFERENCE_WORKERS", "2"))
# Where the embedded stores keep their data (Qdrant Edge shards, the embedded
# PostgreSQL cluster, FAISS files before upload). Machine-local, like the cache.
DATA_DIR = os.environ.get("VG_DATA_DIR", str(REPO_ROOT / "data" / "stores"))
# Production stores; unset = the embedded defaults. Secrets come from the environment only.
QDRANT_URL = os.environ.get("QDRANT_URL") or None
QDRANT_API_KEY = os.environ.get("QDRANT_API_KEY") or None
DATABASE_URL = os.environ.get("DATABASE_URL") or None
# maintenance_work_mem for pgvector's HNSW build (e.g. "4GB"); empty = sized to hold the graph, at most 2GB.
PG_MAINTENANCE_WORK_MEM = os.environ.get("VG_PG_MAINTENANCE_WORK_MEM", "") or None

# Search service (lambda/handler.py and the local server). Stores it may query, in order; the first
# is the default unless VG_SEARCH_DEFAULT_STORE names another.
SEARCH_STORES = os.environ.get("VG_SEARCH_STORES", "faiss,qdrant,pgvector")
SEARCH_DEFAULT_STORE = os.environ.get("VG_SEARCH_DEFAULT_STORE", "") or None
# Qdrant collection / pgvector table searched; empty = flow 04's default, {model}_res{R}.
SEARCH_COLLECTION = os.environ.get("VG_SEARCH_COLLECTION", "") or None
# Access-Control-Allow-Origin of every answer (a web map on another origin needs it).
CORS_ALLOW_ORIGIN = os.environ.get("VG_CORS_ALLOW_ORIGIN", "*")
# Cache-Control max-age (seconds) of GET searches, cells and the OpenAPI description; 0 = no-store.
SEARCH_CACHE_MAX_AGE_S = int(os.environ.get("VG_SEARCH_CACHE_MAX_AGE_S", "300"))
