"""What a search service is built from: one explicit, picklable value instead of the environment.

The entry points (the Lambda adapter, ``vectorgeo serve``, ``vectorgeo search``) read their settings
once, from ``constants`` and their own options, into a :class:`ServiceSettings`; the library and the
server's worker processes take it as an argument. Nothing here reads or writes ``os.environ``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from vectorgeo.errors import InvalidInputError
from vectorgeo.search import SearchService, open_search_service
from vectorgeo.stores import STORE_KINDS
from vectorgeo.stores.base import VectorStore
from vectorgeo.transfer import Bucket

__all__ = ["ServiceSettings"]


@dataclass(frozen=True)
class ServiceSettings:
    """Where the index lives and how answers are sent.

    Attributes:
        bucket: The pipeline bucket: a directory or ``s3://bucket/prefix``.
        cache_dir: Machine-local cache of bucket downloads (``{step}`` is filled with ``search``).
        model: Model name whose embeddings are searched, without ``.keras``.
        h3_resolution: H3 resolution of the index.
        stores: Stores offered, in order; the first is the default unless ``default_store`` names another.
        default_store: Store a request without ``store`` uses.
        collection: Qdrant collection / pgvector table; None = flow 04's ``{model}_res{R}``.
        data_dir: Where the embedded Qdrant Edge shard and PostgreSQL cluster live.
        qdrant_url: A Qdrant server instead of the embedded shard.
        qdrant_api_key: Its API key (from the environment only; never shown in ``repr``).
        database_url: A PostgreSQL (Aurora) URL instead of the embedded cluster (never shown in ``repr``).
        s3_endpoint_url: An S3-compatible endpoint; None = AWS S3.
        aws_region: Region of the S3 bucket; None = boto3's default chain.
        cors_allow_origin: ``Access-Control-Allow-Origin`` of every answer.
        cache_max_age_s: ``Cache-Control`` max-age of GET answers, seconds; 0 = ``no-store``.
    """

    bucket: str
    cache_dir: str
    model: str
    h3_resolution: int
    stores: tuple[str, ...] = STORE_KINDS
    default_store: str | None = None
    collection: str | None = None
    data_dir: str = "data/stores"
    qdrant_url: str | None = None
    qdrant_api_key: str | None = field(default=None, repr=False)
    database_url: str | None = field(default=None, repr=False)
    s3_endpoint_url: str | None = None
    aws_region: str | None = None
    cors_allow_origin: str = "*"
    cache_max_age_s: int = 300

    def __post_init__(self) -> None:
        stores = tuple(s.strip() for s in self.stores if s.strip())
        unknown = [s for s in stores if s not in STORE_KINDS]
        if unknown or not stores:
            raise InvalidInputError(f"search stores must be some of {', '.join(STORE_KINDS)}, got {list(self.stores)}")
        object.__setattr__(self, "stores", tuple(dict.fromkeys(stores)))
        object.__setattr__(self, "model", self.model.removesuffix(".keras"))
        if self.default_store is not None and self.default_store not in self.stores:
            raise InvalidInputError(f"default store {self.default_store!r} is not among the stores {self.stores}")
        if self.cache_max_age_s < 0:
            raise InvalidInputError(f"cache_max_age_s must be >= 0, got {self.cache_max_age_s}")

    @classmethod
    def from_constants(cls, constants: Any, **overrides: Any) -> ServiceSettings:
        """The settings a ``constants`` module (the environment, read at its import) names, with overrides.

        Overrides that are None are ignored, so CLI options left out keep the environment's value.
        """
        values = {
            "bucket": constants.BUCKET,
            "cache_dir": constants.CACHE_DIR,
            "model": constants.MODEL_FILENAME,
            "h3_resolution": constants.H3_RESOLUTION,
            "stores": tuple(constants.SEARCH_STORES.split(",")),
            "default_store": constants.SEARCH_DEFAULT_STORE,
            "collection": constants.SEARCH_COLLECTION,
            "data_dir": constants.DATA_DIR,
            "qdrant_url": constants.QDRANT_URL,
            "qdrant_api_key": constants.QDRANT_API_KEY,
            "database_url": constants.DATABASE_URL,
            "s3_endpoint_url": constants.S3_ENDPOINT_URL,
            "aws_region": constants.AWS_REGION,
            "cors_allow_origin": constants.CORS_ALLOW_ORIGIN,
            "cache_max_age_s": constants.SEARCH_CACHE_MAX_AGE_S,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def replace(self, **changes: Any) -> ServiceSettings:
        """A copy with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)

    def open_bucket(self) -> Bucket:
        """The bucket, with this service's own cache folder."""
        return Bucket(
            self.bucket,
            self.cache_dir.replace("{step}", "search"),
            endpoint_url=self.s3_endpoint_url,
            region=self.aws_region,
        )

    def open_service(self, openers: Mapping[str, Callable[[], VectorStore]] | None = None) -> SearchService:
        """A search service over flow 04's output (stores open on first use; sidecars are read now).

        Args:
            openers: Store kinds opened another way than the settings say (see :func:`open_search_service`).

        Raises:
            BucketAccessError: the bucket cannot be read.
        """
        return open_search_service(
            self.open_bucket(),
            model=self.model,
            h3_resolution=self.h3_resolution,
            stores=self.stores,
            default_store=self.default_store,
            collection=self.collection,
            data_dir=self.data_dir,
            qdrant_url=self.qdrant_url,
            qdrant_api_key=self.qdrant_api_key,
            database_url=self.database_url,
            openers=openers,
        )
