"""Exception classes for VectorGeo.

One root, :class:`VectorGeoError`, and a few specific subclasses that also
subclass a builtin, so callers can catch either the VectorGeo class or the
builtin they already expect (``FileNotFoundError``, ``ValueError``, ...).
Every message names the bad value and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "BucketAccessError",
    "BucketKeyNotFoundError",
    "InvalidInputError",
    "NotFoundError",
    "RasterAccessError",
    "UnknownClassCodeError",
    "VectorGeoError",
]


class VectorGeoError(Exception):
    """Root of every error VectorGeo raises on purpose."""


class InvalidInputError(VectorGeoError, ValueError):
    """A parameter, AOI, legend or query that cannot be used as given."""


class UnknownClassCodeError(InvalidInputError):
    """The raster holds class codes that the legend does not list."""


class NotFoundError(VectorGeoError, LookupError):
    """A cell, model or record that was asked for does not exist."""


class BucketKeyNotFoundError(VectorGeoError, FileNotFoundError):
    """A key is missing from the bucket (local directory or S3)."""


class BucketAccessError(VectorGeoError, PermissionError):
    """The bucket cannot be read or written (permissions, missing bucket)."""


class RasterAccessError(VectorGeoError, OSError):
    """A raster is missing, unreadable, or lacks what VectorGeo needs (a CRS)."""


class IncompleteOutputError(VectorGeoError, RuntimeError):
    """A step's outputs are missing from the bucket (a worker lost its work); rerun the flow."""


class ServerStartError(VectorGeoError, RuntimeError):
    """An embedded server (PostgreSQL) could not be initialised or started; the message quotes its log."""


class NotConfirmedError(VectorGeoError, PermissionError):
    """A destructive action (wiping a table) was not confirmed."""


class StoreUnavailableError(VectorGeoError, ConnectionError):
    """A vector-store server cannot be reached; the message names it (never its credentials)."""


class StoreBusyError(StoreUnavailableError):
    """An embedded store is held by another process; the message says which kind and what to do (no paths)."""
