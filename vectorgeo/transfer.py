"""Bucket I/O with a local cache: a local directory or any S3-compatible store.

Every pipeline step reads its inputs from, and writes its outputs to, a bucket,
so a step runs the same on a laptop and on a batch machine. :class:`Bucket`
hides which backend is in use: keys are POSIX relative paths under the bucket's
prefix, downloads land in a local cache that is re-used while the remote
object's size and ETag are unchanged, every write is atomic (a killed process
never leaves a half-written file at the final path), and transient S3 failures
are retried here, in one place, with exponential backoff and jitter.

Credentials come only from boto3's standard chain; this module never reads the
environment itself. boto3 is imported lazily, so ``import vectorgeo`` stays light.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
from urllib.parse import unquote, urlparse

from vectorgeo.errors import BucketAccessError, BucketKeyNotFoundError, InvalidInputError, VectorGeoError

__all__ = ["Bucket"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_MB = 1024 * 1024
_PROGRESS_MIN_BYTES = 64 * _MB  # show a progress bar above this size
_MULTIPART_BYTES = 64 * _MB  # S3 multipart threshold and part size
_COPY_CHUNK_BYTES = 8 * _MB
_MAX_BACKOFF_S = 20.0
_TMP_SUFFIX = ".vgtmp"  # in-flight writes; never listed, never a valid key
_META_SUFFIX = ".vgmeta.json"  # cache sidecar holding the remote size and ETag
_PROBE_PREFIX = ".vectorgeo-write-probe-"
# Error codes S3 and S3-compatible stores use for "slow down" and "try again later".
# fmt: off
_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException",
                    "RequestTimeout", "RequestTimeoutException", "InternalError", "ServiceUnavailable"}
# fmt: on
_DENIED_CODES = {"403", "AccessDenied", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"}


@dataclass(frozen=True)
class _Remote:
    """What the cache compares: the remote object's size (bytes) and ETag."""

    size: int
    etag: str


@dataclass(frozen=True)
class _Retry:
    """How often, and how patiently, to retry transient S3 failures."""

    max_attempts: int
    backoff_s: float
    sleep: Callable[[float], None]

    def delay_s(self, attempt: int) -> float:
        """Exponential backoff with jitter: half to all of ``backoff_s * 2**attempt``, capped."""
        return min(_MAX_BACKOFF_S, self.backoff_s * 2**attempt) * random.uniform(0.5, 1.0)


def _check_key(key: str, *, what: str = "key") -> str:
    """Reject keys that would escape the bucket or mean different things per backend."""
    if not isinstance(key, str) or not key:
        raise InvalidInputError(f"bucket {what} must be a non-empty string such as 'stencil/res7.parquet', got {key!r}")
    parts = key.split("/")
    if key.startswith("/") or "\\" in key or "\x00" in key or any(p in ("", ".", "..") for p in parts):
        raise InvalidInputError(
            f"invalid bucket {what} {key!r}: use a relative POSIX path without '..', '.', empty parts or backslashes"
        )
    if parts[-1].endswith((_TMP_SUFFIX, _META_SUFFIX)):
        raise InvalidInputError(
            f"invalid bucket {what} {key!r}: the suffixes {_TMP_SUFFIX}, {_META_SUFFIX} are reserved"
        )
    return key


def _check_prefix(prefix: str) -> str:
    """A list prefix is a key, a key with a trailing '/', or '' (everything)."""
    if prefix != "":
        _check_key(prefix[:-1] if prefix.endswith("/") else prefix, what="prefix")
    return prefix


def _missing(url: str, key: str) -> BucketKeyNotFoundError:
    return BucketKeyNotFoundError(
        f"key {key!r} not found in bucket {url!r}; run the step that writes it first, or check the bucket URL"
    )


@contextlib.contextmanager
def _atomic_path(dest: Path) -> Iterator[Path]:
    """Yield a temp path beside ``dest``; fsync and move it onto ``dest`` only if the block succeeds.

    The temp file lives in the same directory so ``os.replace`` is atomic; it is
    removed on any failure (including KeyboardInterrupt).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}{_TMP_SUFFIX}")
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _copy_stream(src: BinaryIO, dst: BinaryIO, callback: Callable[[int], object] | None) -> None:
    """Copy in chunks so multi-GB files never sit in memory and progress can be reported."""
    while chunk := src.read(_COPY_CHUNK_BYTES):
        dst.write(chunk)
        if callback is not None:
            callback(len(chunk))


@contextlib.contextmanager
def _progress(size: int, desc: str) -> Iterator[Callable[[int], object] | None]:
    """A byte-counting tqdm callback for big transfers (quiet when not a TTY), else None."""
    if size < _PROGRESS_MIN_BYTES:
        yield None
        return
    from tqdm import tqdm

    with tqdm(total=size, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=None, leave=False) as bar:
        yield bar.update


class _LocalBackend:
    """A directory tree as a bucket; the ETag is cheap: inode, mtime and size."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = str(root)

    def uri(self, key: str) -> str:
        return str(self.root / key)

    @contextlib.contextmanager
    def _errors(self, key: str, *, writing: bool) -> Iterator[None]:
        """Map OS errors on the bucket side to the errors callers are told to expect."""
        try:
            yield
        except VectorGeoError:
            raise
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            if not writing:
                raise _missing(self.url, key) from exc
            raise self._denied(exc, "write") from exc
        except OSError as exc:
            raise self._denied(exc, "write" if writing else "read") from exc

    def _denied(self, exc: OSError, verb: str) -> BucketAccessError:
        return BucketAccessError(
            f"cannot {verb} local bucket {self.url!r} ({exc}); make it a writable directory or choose another bucket"
        )

    def head(self, key: str) -> _Remote:
        with self._errors(key, writing=False):
            st = (self.root / key).stat()
        if not stat.S_ISREG(st.st_mode):
            raise _missing(self.url, key)
        return _Remote(st.st_size, f"{st.st_ino}-{st.st_mtime_ns}-{st.st_size}")

    def fetch(self, key: str, dest: Path, size: int) -> None:
        with self._errors(key, writing=False):
            src = open(self.root / key, "rb")  # noqa: SIM115 (closed just below)
        with src, open(dest, "wb") as out, _progress(size, key) as callback:
            _copy_stream(src, out, callback)

    def put_file(self, path: Path, size: int, key: str) -> None:
        with (
            open(path, "rb") as src,
            self._errors(key, writing=True),
            _atomic_path(self.root / key) as tmp,
            open(tmp, "wb") as out,
            _progress(size, key) as callback,
        ):
            _copy_stream(src, out, callback)

    def get_bytes(self, key: str) -> bytes:
        with self._errors(key, writing=False):
            return (self.root / key).read_bytes()

    def put_bytes(self, key: str, data: bytes) -> None:
        with self._errors(key, writing=True), _atomic_path(self.root / key) as tmp:
            tmp.write_bytes(data)

    def delete(self, key: str) -> None:
        with self._errors(key, writing=True):
            if not (self.root / key).is_dir():  # a "directory" is not a key; S3 ignores it too
                (self.root / key).unlink(missing_ok=True)

    def list(self, prefix: str) -> list[str]:
        head, _, tail = prefix.rpartition("/")
        base = self.root / head if head else self.root
        if not base.is_dir():
            return []
        keys = []

        def _raise(exc: OSError) -> None:
            raise exc

        with self._errors(prefix, writing=False):
            for dirpath, dirnames, filenames in os.walk(base, onerror=_raise):
                if dirpath == str(base):  # only the top level can fail to match the prefix
                    dirnames[:] = [d for d in dirnames if d.startswith(tail)]
                for name in filenames:
                    rel = Path(dirpath, name).relative_to(self.root).as_posix()
                    if rel.startswith(prefix) and not name.endswith(_TMP_SUFFIX):
                        keys.append(rel)
        return sorted(keys)


class _S3Backend:
    """An S3 (or S3-compatible) bucket and key prefix, with one lazily built client and one retry layer."""

    def __init__(
        self, bucket: str, prefix: str, endpoint_url: str | None, region: str | None, retry: _Retry, page_size: int
    ) -> None:
        self.bucket, self.prefix = bucket, prefix
        self.url = f"s3://{bucket}/{prefix}".rstrip("/")
        self._endpoint_url, self._region, self._retry, self._page_size = endpoint_url, region, retry, page_size
        self._client: Any = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        """The boto3 S3 client, built once on first use (boto3 clients are thread-safe)."""
        with self._lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                config = Config(
                    retries={"total_max_attempts": 1, "mode": "standard"},  # all retrying happens in _call
                    connect_timeout=10,
                    read_timeout=60,
                    max_pool_connections=16,
                    # Custom endpoints (MinIO, Ceph, R2, moto) reliably support path-style addressing.
                    s3={"addressing_style": "path" if self._endpoint_url else "auto"},
                )
                session = boto3.session.Session()  # the standard credential chain
                self._client = session.client(
                    "s3", endpoint_url=self._endpoint_url, region_name=self._region, config=config
                )
            return self._client

    def _transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        # num_download_attempts=1: s3transfer must not retry on its own; _call does.
        return TransferConfig(
            multipart_threshold=_MULTIPART_BYTES,
            multipart_chunksize=_MULTIPART_BYTES,
            max_concurrency=8,
            num_download_attempts=1,
        )

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"

    def _call(self, what: str, key: str, fn: Callable[[], _T]) -> _T:
        """Run ``fn``, retrying transient failures with capped exponential backoff and jitter."""
        n = self._retry.max_attempts
        for attempt in range(n):
            try:
                return fn()
            except Exception as exc:  # classified below; anything unknown is re-raised unchanged
                exc = _unwrap(exc)
                if not _is_transient(exc):
                    mapped = self._translate(exc, key)
                    if mapped is None:
                        raise
                    raise mapped from exc
                if attempt + 1 >= n:
                    raise BucketAccessError(
                        f"{what} {key!r} in bucket {self.url!r} failed {n} times, the last with "
                        f"{exc!r}; the store is unreachable or throttling: retry later or raise max_attempts"
                    ) from exc
                delay = self._retry.delay_s(attempt)
                logger.warning(
                    "%s %r in %s failed: %r; retry %d/%d in %.2f s", what, key, self.url, exc, attempt + 1, n - 1, delay
                )
                self._retry.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _translate(self, exc: BaseException, key: str) -> VectorGeoError | None:
        """Map a non-transient botocore error to a VectorGeo error, or None to re-raise it as is."""
        from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return BucketAccessError(
                f"no usable AWS credentials for bucket {self.url!r} ({exc}); configure the standard AWS "
                "credential chain (environment variables, ~/.aws profile or an instance role)"
            )
        if not isinstance(exc, ClientError):
            return None
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code == "NoSuchBucket":
            return BucketAccessError(f"bucket {self.url!r} does not exist; create it or fix the bucket URL")
        if code in ("404", "NoSuchKey", "NotFound"):
            return _missing(self.url, key)
        if code in _DENIED_CODES:
            return BucketAccessError(
                f"access denied to {self.uri(key)!r} in bucket {self.url!r} ({code}); check the AWS "
                "credentials in use and the bucket policy"
            )
        return None

    def head(self, key: str) -> _Remote:
        r = self._call("head", key, lambda: self.client.head_object(Bucket=self.bucket, Key=self.prefix + key))
        return _Remote(int(r["ContentLength"]), str(r["ETag"]))

    def fetch(self, key: str, dest: Path, size: int) -> None:
        config = self._transfer_config()
        with open(dest, "wb") as out:

            def attempt() -> None:
                out.seek(0)
                out.truncate()
                with _progress(size, key) as callback:
                    self.client.download_fileobj(self.bucket, self.prefix + key, out, Config=config, Callback=callback)

            self._call("download", key, attempt)

    def put_file(self, path: Path, size: int, key: str) -> None:
        config = self._transfer_config()

        def attempt() -> None:
            with _progress(size, key) as callback:
                self.client.upload_file(str(path), self.bucket, self.prefix + key, Config=config, Callback=callback)

        self._call("upload", key, attempt)

    def get_bytes(self, key: str) -> bytes:
        return self._call(
            "read", key, lambda: self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"].read()
        )

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call("write", key, lambda: self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data))

    def delete(self, key: str) -> None:
        self._call("delete", key, lambda: self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key))

    def list(self, prefix: str) -> list[str]:
        def attempt() -> list[str]:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix, PaginationConfig={"PageSize": self._page_size}
            )
            n = len(self.prefix)
            return [o["Key"][n:] for page in pages for o in page.get("Contents", []) if not o["Key"].endswith("/")]

        return sorted(self._call("list", prefix, attempt))


def _unwrap(exc: BaseException) -> BaseException:
    """boto3's upload_file hides the ClientError inside S3UploadFailedError; get it back."""
    from boto3.exceptions import S3UploadFailedError

    if isinstance(exc, S3UploadFailedError) and exc.__context__ is not None:
        return exc.__context__
    return exc


def _is_transient(exc: BaseException) -> bool:
    """True for failures worth retrying: 5xx, throttling, timeouts, dropped connections, short reads."""
    from boto3.exceptions import RetriesExceededError as Boto3RetriesExceeded
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError, IncompleteReadError
    from s3transfer.exceptions import RetriesExceededError, S3DownloadFailedError

    if isinstance(exc, ClientError):
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        code = str(exc.response.get("Error", {}).get("Code", ""))
        return status >= 500 or status == 429 or code in _TRANSIENT_CODES
    # S3DownloadFailedError: the object changed between the parts of a ranged download; a new attempt re-reads it.
    transient = (ConnectionError, HTTPClientError, IncompleteReadError, RetriesExceededError, S3DownloadFailedError)
    return isinstance(exc, (*transient, Boto3RetriesExceeded))


class Bucket:
    """A bucket of pipeline artifacts: a local directory or ``s3://bucket/prefix``, with a local cache.

    Args:
        url: A directory path (plain or ``file://...``) or ``s3://bucket-name/optional/prefix``.
        cache_dir: Where downloads are cached; each bucket gets its own subdirectory.
        endpoint_url: S3-compatible endpoint (MinIO, Ceph, R2, ...); None for AWS.
        region: AWS region; None lets boto3's configuration decide.
        max_attempts: Attempts per S3 call, including the first, for transient failures.
        backoff_s: Base backoff in seconds; attempt ``n`` waits about ``backoff_s * 2**n`` (capped, jittered).
        sleep: Called with each backoff delay in seconds; tests pass a no-op.
        page_size: Keys per S3 list request (S3 returns at most 1000).

    Raises:
        InvalidInputError: The URL, prefix or retry settings cannot be used.
    """

    def __init__(
        self,
        url: str | os.PathLike[str],
        cache_dir: str | os.PathLike[str],
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        max_attempts: int = 5,
        backoff_s: float = 0.2,
        sleep: Callable[[float], None] = time.sleep,
        page_size: int = 1000,
    ) -> None:
        if max_attempts < 1 or backoff_s < 0 or page_size < 1:
            raise InvalidInputError(
                f"need max_attempts >= 1, backoff_s >= 0, page_size >= 1; got {max_attempts}, {backoff_s}, {page_size}"
            )
        parsed = urlparse(str(url))
        self._backend: _LocalBackend | _S3Backend
        if parsed.scheme == "s3":
            prefix = parsed.path.strip("/")
            if not parsed.netloc:
                raise InvalidInputError(f"bucket URL {url!r} names no bucket; use s3://bucket-name/optional/prefix")
            if prefix:
                _check_key(prefix, what="prefix")
            retry = _Retry(max_attempts, backoff_s, sleep)
            prefix = prefix + "/" if prefix else ""
            self._backend = _S3Backend(parsed.netloc, prefix, endpoint_url, region, retry, page_size)
            label = parsed.netloc
        elif parsed.scheme == "file" or len(parsed.scheme) <= 1:  # "" or a Windows drive letter
            if parsed.scheme == "file" and parsed.netloc not in ("", "localhost"):
                raise InvalidInputError(f"bucket URL {url!r} names a remote host; use file:///absolute/path")
            path = unquote(parsed.path) if parsed.scheme == "file" else os.fspath(url)
            self._backend = _LocalBackend(Path(path).absolute())
            label = self._backend.root.name or "root"
        else:
            raise InvalidInputError(
                f"unsupported bucket URL {url!r}; use a directory, file:///path or s3://bucket/prefix"
            )
        identity = f"{self._backend.url}|{endpoint_url or ''}"
        self._cache_root = Path(cache_dir) / f"{label}-{hashlib.sha256(identity.encode()).hexdigest()[:10]}"

    @classmethod
    def from_settings(cls, settings: Any, step: str) -> Bucket:
        """The bucket a settings module (``constants``) names, with ``{step}`` in its cache dir filled in.

        The one place the entry points (the handler, the local server, scripts) turn settings into a bucket;
        the library still takes the settings as an explicit argument.
        """
        return cls(
            settings.BUCKET,
            settings.CACHE_DIR.replace("{step}", step),
            endpoint_url=settings.S3_ENDPOINT_URL,
            region=settings.AWS_REGION,
        )

    def __repr__(self) -> str:
        return f"Bucket({self.url!r})"

    @property
    def url(self) -> str:
        """The bucket's normalised URL, for messages: ``s3://bucket/prefix`` or an absolute directory."""
        return self._backend.url

    def uri(self, key: str) -> str:
        """Full ``s3://...`` URI or local path of ``key``, for messages and external tools."""
        return self._backend.uri(_check_key(key))

    def upload(self, local_path: str | os.PathLike[str], key: str) -> None:
        """Copy a local file to ``key`` (multipart on S3 above 64 MB; atomic on both backends).

        Raises:
            FileNotFoundError: ``local_path`` does not exist.
            BucketAccessError: The bucket cannot be written.
        """
        _check_key(key)
        size = Path(local_path).stat().st_size
        self._backend.put_file(Path(local_path), size, key)
        logger.debug("uploaded %s to %s (%d bytes)", local_path, self.uri(key), size)

    def download(self, key: str, *, force: bool = False) -> Path:
        """Return a local copy of ``key``, fetching it only when the cache is missing or stale.

        The cached copy is re-used while the remote size and ETag match the ones
        recorded in its ``.vgmeta.json`` sidecar; a deleted cache file, a changed
        remote object or ``force=True`` fetches it again.

        Returns:
            The cached file's path, under ``cache_dir``; treat it as read-only.

        Raises:
            BucketKeyNotFoundError: ``key`` is not in the bucket.
            BucketAccessError: The bucket cannot be read.
        """
        _check_key(key)
        remote = self._backend.head(key)
        dest = self._cache_root / key
        meta_path = dest.with_name(dest.name + _META_SUFFIX)
        if not force and _cache_is_fresh(dest, meta_path, remote):
            logger.debug("cache hit for %s at %s", self.uri(key), dest)
            return dest
        meta_path.unlink(missing_ok=True)  # never let an old sidecar vouch for a new file
        with _atomic_path(dest) as tmp:
            self._backend.fetch(key, tmp, remote.size)
        with _atomic_path(meta_path) as tmp:
            tmp.write_text(json.dumps({"uri": self.uri(key), "size": remote.size, "etag": remote.etag}))
        logger.debug("downloaded %s to %s (%d bytes)", self.uri(key), dest, remote.size)
        return dest

    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys (relative to the bucket's prefix) starting with ``prefix``, a plain string prefix."""
        return self._backend.list(_check_prefix(prefix))

    def exists(self, key: str) -> bool:
        """Whether ``key`` is in the bucket."""
        try:
            self._backend.head(_check_key(key))
        except BucketKeyNotFoundError:
            return False
        return True

    def read_bytes(self, key: str) -> bytes:
        """The whole object in memory, uncached; for small artifacts (JSON sidecars, manifests)."""
        return self._backend.get_bytes(_check_key(key))

    def write_bytes(self, key: str, data: bytes) -> None:
        """Write ``data`` to ``key`` atomically, replacing any existing object."""
        self._backend.put_bytes(_check_key(key), bytes(data))

    def read_json(self, key: str) -> Any:
        """Parse ``key`` as UTF-8 JSON."""
        return json.loads(self.read_bytes(key).decode("utf-8"))

    def write_json(self, key: str, obj: Any) -> None:
        """Write ``obj`` as indented, key-sorted UTF-8 JSON, so reruns give identical bytes."""
        self.write_bytes(key, json.dumps(obj, indent=2, sort_keys=True).encode("utf-8") + b"\n")

    def delete(self, key: str) -> None:
        """Remove ``key``; deleting a missing key is not an error (S3 semantics)."""
        self._backend.delete(_check_key(key))

    def check_writable(self) -> None:
        """Write and delete a small probe object, so a run fails in seconds rather than after hours of work.

        Raises:
            BucketAccessError: The bucket is missing or cannot be written; the message says how to fix it.
        """
        probe = f"{_PROBE_PREFIX}{secrets.token_hex(8)}"
        try:
            self.write_bytes(probe, b"vectorgeo write probe\n")
            self.delete(probe)
        except BucketAccessError:
            raise
        except Exception as exc:  # any other failure is still "cannot write here"; keep it as the cause
            raise BucketAccessError(
                f"bucket {self.url!r} is not writable ({exc!r}); check that it exists and that the AWS "
                "credentials in use (or the local user) may write to it"
            ) from exc


def _cache_is_fresh(dest: Path, meta_path: Path, remote: _Remote) -> bool:
    """True when the cached file and its sidecar match the remote size and ETag."""
    try:
        meta = json.loads(meta_path.read_text())
        return dest.stat().st_size == remote.size and meta["size"] == remote.size and meta["etag"] == remote.etag
    except (OSError, ValueError, KeyError, TypeError):
        return False
