"""Tests for vectorgeo.transfer: the same behaviour on a local directory and on a real S3 HTTP endpoint (moto)."""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ConnectionClosedError, EndpointConnectionError

from tests.conftest import S3_BUCKET
from vectorgeo import transfer
from vectorgeo.errors import BucketAccessError, BucketKeyNotFoundError, InvalidInputError
from vectorgeo.transfer import Bucket

# ---------------------------------------------------------------- fixtures


@pytest.fixture(params=["local", "s3"])
def make_bucket(request, tmp_path):
    """Factory for Buckets that all point at this test's fresh remote location; each may get its own cache."""
    if request.param == "local":
        url, options = str(tmp_path / "bucket"), {}
    else:
        endpoint = request.getfixturevalue("moto_endpoint")
        url = f"s3://{S3_BUCKET}/runs/{uuid.uuid4().hex}"
        options = {"endpoint_url": endpoint, "region": "us-east-1"}

    def make(cache: str = "cache", **extra) -> Bucket:
        return Bucket(url, tmp_path / cache, **{"sleep": lambda s: None, **options, **extra})

    make.backend = request.param
    return make


@pytest.fixture
def bucket(make_bucket) -> Bucket:
    return make_bucket()


@pytest.fixture
def s3_bucket(moto_endpoint, tmp_path):
    """An S3 bucket whose backoff sleeps are recorded instead of slept."""
    sleeps: list[float] = []
    b = Bucket(
        f"s3://{S3_BUCKET}/retry/{uuid.uuid4().hex}",
        tmp_path / "cache",
        endpoint_url=moto_endpoint,
        region="us-east-1",
        max_attempts=3,
        backoff_s=0.1,
        sleep=sleeps.append,
    )
    b.sleeps = sleeps
    return b


class _Raw:
    """Just enough of a urllib3 response for botocore to read a body from."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **kwargs):
        yield self._body

    def read(self, amt=None):
        out, self._body = (self._body, b"") if amt is None else (self._body[:amt], self._body[amt:])
        return out


def _hook(bucket: Bucket, handler) -> list:
    """Run ``handler(request)`` before every HTTP request the bucket's client sends; returns the request log."""
    seen: list = []

    def before_send(request, **kwargs):
        seen.append(request)
        return handler(request, len(seen))

    bucket._backend.client.meta.events.register("before-send.s3", before_send)
    return seen


def _response(request, status: int, body: bytes = b"", headers: dict | None = None) -> AWSResponse:
    return AWSResponse(request.url, status, headers or {}, _Raw(body))


def _count_fetches(monkeypatch, bucket: Bucket) -> list:
    calls: list = []
    real = bucket._backend.fetch

    def counting(key, dest, size):
        calls.append(key)
        real(key, dest, size)

    monkeypatch.setattr(bucket._backend, "fetch", counting)
    return calls


def _stray_temps(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".vgtmp")]


# ---------------------------------------------------------------- both backends


def test_bytes_and_json_round_trip(bucket):
    bucket.write_bytes("a/b.bin", b"\x00\x01payload")
    assert bucket.read_bytes("a/b.bin") == b"\x00\x01payload"
    bucket.write_json("meta/model.json", {"embed_dim": 16, "legend": "lc100"})
    assert bucket.read_json("meta/model.json") == {"embed_dim": 16, "legend": "lc100"}
    bucket.write_bytes("a/b.bin", b"replaced")
    assert bucket.read_bytes("a/b.bin") == b"replaced"


def test_upload_then_download_returns_cached_copy(bucket, tmp_path):
    src = tmp_path / "src.npz"
    src.write_bytes(os.urandom(50_000))
    bucket.upload(src, "train/run1/part-0.npz")
    local = bucket.download("train/run1/part-0.npz")
    assert local.read_bytes() == src.read_bytes()
    assert local.is_relative_to(tmp_path / "cache") and local.name == "part-0.npz"
    assert json.loads(local.with_name("part-0.npz.vgmeta.json").read_text())["size"] == 50_000


def test_upload_missing_local_file_is_file_not_found(bucket, tmp_path):
    with pytest.raises(FileNotFoundError):
        bucket.upload(tmp_path / "nope.parquet", "x.parquet")


def test_list_by_prefix_sorted_and_paginated(make_bucket):
    bucket = make_bucket(page_size=2)
    keys = ["a/2", "a/10", "a/sub/z", "ab/x", "b/1", "a/1"]
    for key in keys:
        bucket.write_bytes(key, b"x")
    pages = _hook(bucket, lambda request, n: None) if make_bucket.backend == "s3" else []
    assert bucket.list("a/") == ["a/1", "a/10", "a/2", "a/sub/z"]
    assert bucket.list("a") == ["a/1", "a/10", "a/2", "a/sub/z", "ab/x"]
    assert bucket.list("a/s") == ["a/sub/z"]
    assert bucket.list() == sorted(keys)
    assert bucket.list("zzz/") == []
    if make_bucket.backend == "s3":
        assert len(pages) >= 3  # four keys at two per page took several requests


def test_exists_and_delete(bucket):
    assert not bucket.exists("stencil/res7.parquet")
    bucket.write_bytes("stencil/res7.parquet", b"pq")
    assert bucket.exists("stencil/res7.parquet")
    assert not bucket.exists("stencil")  # a "directory" is not a key
    bucket.delete("stencil")  # and deleting it is a no-op
    bucket.delete("stencil/res7.parquet")
    assert not bucket.exists("stencil/res7.parquet")
    bucket.delete("stencil/res7.parquet")  # deleting a missing key is fine, as on S3
    assert bucket.list() == []


def test_download_uses_cache_until_forced_deleted_or_changed(make_bucket, monkeypatch):
    bucket = make_bucket()
    fetches = _count_fetches(monkeypatch, bucket)
    bucket.write_bytes("emb/part-0.parquet", b"version one")
    first = bucket.download("emb/part-0.parquet")
    assert bucket.download("emb/part-0.parquet") == first
    assert len(fetches) == 1
    bucket.download("emb/part-0.parquet", force=True)
    assert len(fetches) == 2
    first.unlink()
    assert bucket.download("emb/part-0.parquet").read_bytes() == b"version one"
    assert len(fetches) == 3
    make_bucket(cache="other-machine").write_bytes("emb/part-0.parquet", b"version two, longer")
    assert bucket.download("emb/part-0.parquet").read_bytes() == b"version two, longer"
    assert len(fetches) == 4


def test_missing_key_names_key_and_bucket(bucket):
    pattern = rf"'stencil/res7\.parquet'.*{re.escape(repr(bucket.url))}"
    for call in (bucket.download, bucket.read_bytes, bucket.read_json):
        with pytest.raises(BucketKeyNotFoundError, match=pattern) as info:
            call("stencil/res7.parquet")
        assert isinstance(info.value, FileNotFoundError)


def test_failed_download_leaves_no_partial_file(make_bucket, monkeypatch, tmp_path):
    bucket = make_bucket()
    bucket.write_bytes("big.tif", b"0123456789" * 1000)
    real = bucket._backend.fetch

    def crash_after_writing(key, dest, size):
        real(key, dest, size)  # the temp file is complete...
        raise RuntimeError("injected crash")  # ...but the process dies before it is moved into place

    monkeypatch.setattr(bucket._backend, "fetch", crash_after_writing)
    with pytest.raises(RuntimeError, match="injected"):
        bucket.download("big.tif")
    cached = bucket._cache_root / "big.tif"
    assert not cached.exists() and not _stray_temps(tmp_path / "cache")
    monkeypatch.undo()
    assert bucket.download("big.tif").read_bytes() == b"0123456789" * 1000


def test_failed_refresh_does_not_trust_old_sidecar(make_bucket, monkeypatch):
    bucket = make_bucket()
    bucket.write_bytes("m.json", b"{}")
    bucket.download("m.json")
    make_bucket(cache="elsewhere").write_bytes("m.json", b'{"v": 2}')
    monkeypatch.setattr(bucket._backend, "fetch", lambda *a: (_ for _ in ()).throw(OSError("injected")))
    with pytest.raises(OSError, match="injected"):
        bucket.download("m.json")
    monkeypatch.undo()
    assert bucket.download("m.json").read_bytes() == b'{"v": 2}'


def test_big_transfers_multipart_with_progress(make_bucket, monkeypatch, tmp_path):
    monkeypatch.setattr(transfer, "_MULTIPART_BYTES", 5 * 1024 * 1024)  # S3's minimum part size
    monkeypatch.setattr(transfer, "_PROGRESS_MIN_BYTES", 1)
    bucket = make_bucket()
    src = tmp_path / "dem.tif"
    src.write_bytes(os.urandom(11 * 1024 * 1024))
    bucket.upload(src, "dem/dem.tif")
    if make_bucket.backend == "s3":
        assert bucket._backend.head("dem/dem.tif").etag.endswith('-3"')  # three parts
    assert bucket.download("dem/dem.tif").read_bytes() == src.read_bytes()


def test_check_writable_leaves_nothing_behind(bucket):
    bucket.check_writable()
    assert bucket.list() == []


@pytest.mark.parametrize(
    "key", ["", "/abs/key", "a/../b", "..", "a//b", "a/", "./a", "a\\b", "x.vgtmp", "x.vgmeta.json"]
)
def test_invalid_keys_rejected(bucket, key):
    for call in (bucket.download, bucket.read_bytes, bucket.exists, bucket.delete, bucket.uri):
        with pytest.raises(InvalidInputError, match=re.escape(repr(key))):
            call(key)
    with pytest.raises(InvalidInputError, match=re.escape(repr(key))):
        bucket.write_bytes(key, b"x")


@pytest.mark.parametrize("prefix", ["/", "../x", "a/../b/"])
def test_invalid_prefix_rejected(bucket, prefix):
    with pytest.raises(InvalidInputError, match="prefix"):
        bucket.list(prefix)


# ---------------------------------------------------------------- local backend


@pytest.mark.parametrize("scheme", ["", "file://"])
def test_local_urls_and_uri(tmp_path, scheme):
    bucket = Bucket(f"{scheme}{tmp_path / 'b'}", tmp_path / "cache")
    bucket.write_bytes("k/v.txt", b"v")
    assert bucket.uri("k/v.txt") == str(tmp_path / "b" / "k" / "v.txt")
    assert (tmp_path / "b" / "k" / "v.txt").read_bytes() == b"v"


def test_local_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
    bucket = Bucket(str(tmp_path / "b"), tmp_path / "cache")
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 100)

    def half_then_crash(src_f, dst_f, callback):
        dst_f.write(src_f.read(50))
        raise KeyboardInterrupt

    monkeypatch.setattr(transfer, "_copy_stream", half_then_crash)
    with pytest.raises(KeyboardInterrupt):
        bucket.upload(src, "out/part-0.npz")
    assert not (tmp_path / "b" / "out" / "part-0.npz").exists()
    assert not _stray_temps(tmp_path / "b")
    assert bucket.list() == []


def test_local_list_ignores_in_flight_temp_files(tmp_path):
    bucket = Bucket(str(tmp_path / "b"), tmp_path / "cache")
    bucket.write_bytes("a/1", b"x")
    (tmp_path / "b" / "a" / ".2.deadbeef.vgtmp").write_bytes(b"half")
    assert bucket.list() == ["a/1"]


def test_unwritable_local_bucket_raises_access_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    bucket = Bucket(str(blocker / "bucket"), tmp_path / "cache")  # mkdir under a regular file fails, even as root
    pattern = re.escape(repr(bucket.url))
    with pytest.raises(BucketAccessError, match=pattern) as info:
        bucket.check_writable()
    assert isinstance(info.value, PermissionError)
    with pytest.raises(BucketAccessError, match=pattern):
        bucket.write_bytes("k", b"x")
    with pytest.raises(BucketAccessError, match=pattern):
        bucket.upload(blocker, "k")


def test_buckets_sharing_a_cache_dir_do_not_collide(tmp_path):
    one, two = Bucket(str(tmp_path / "one"), tmp_path / "cache"), Bucket(str(tmp_path / "two"), tmp_path / "cache")
    one.write_bytes("k", b"one")
    two.write_bytes("k", b"two")
    assert one.download("k").read_bytes() == b"one" and two.download("k").read_bytes() == b"two"


@pytest.mark.parametrize("url", ["ftp://host/x", "s3://", "s3:///prefix", "s3://b/../x"])
def test_bad_urls_rejected(tmp_path, url):
    with pytest.raises(InvalidInputError):
        Bucket(url, tmp_path)


# ---------------------------------------------------------------- S3 backend


def test_s3_uri_and_single_client(s3_bucket, monkeypatch):
    assert s3_bucket.uri("a/b.json").startswith(f"s3://{S3_BUCKET}/retry/") and s3_bucket.uri("a/b.json").endswith(
        "/a/b.json"
    )
    created = []
    real_client = boto3.session.Session.client
    monkeypatch.setattr(
        boto3.session.Session, "client", lambda self, *a, **k: created.append(1) or real_client(self, *a, **k)
    )
    fresh = Bucket(s3_bucket.url, "unused", endpoint_url=s3_bucket._backend._endpoint_url)
    assert created == []  # nothing happens at construction
    for i in range(3):
        fresh.write_json(f"k{i}.json", {"i": i})
        fresh.read_json(f"k{i}.json")
    assert fresh.list() == ["k0.json", "k1.json", "k2.json"]
    assert created == [1]


def test_s3_cached_download_sends_no_get(s3_bucket):
    s3_bucket.write_bytes("stencil/res5.parquet", b"cells")
    s3_bucket.download("stencil/res5.parquet")
    seen = _hook(s3_bucket, lambda request, n: None)
    s3_bucket.download("stencil/res5.parquet")
    assert [r.method for r in seen] == ["HEAD"]


def test_s3_transient_5xx_retried_then_succeeds(s3_bucket, caplog):
    slow_down = b"<Error><Code>SlowDown</Code><Message>reduce your request rate</Message></Error>"
    seen = _hook(s3_bucket, lambda request, n: _response(request, 503, slow_down) if n <= 2 else None)
    with caplog.at_level("WARNING", logger="vectorgeo.transfer"):
        s3_bucket.write_bytes("k.bin", b"data")
    assert len(seen) == 3  # two failures + one success: botocore did not retry on its own
    assert len(s3_bucket.sleeps) == 2
    assert [r.levelname for r in caplog.records] == ["WARNING", "WARNING"] and "SlowDown" in caplog.text
    assert 0.05 <= s3_bucket.sleeps[0] <= 0.1 and 0.1 <= s3_bucket.sleeps[1] <= 0.2  # exponential, jittered
    assert s3_bucket.read_bytes("k.bin") == b"data"


@pytest.mark.parametrize(
    "error",
    [ConnectionClosedError(endpoint_url="http://x"), EndpointConnectionError(endpoint_url="http://x")],
    ids=["closed", "unreachable"],
)
def test_s3_connection_errors_retried_during_download(s3_bucket, error):
    s3_bucket.write_bytes("k.bin", b"data")

    def flaky(request, n):
        if n <= 2:
            raise error

    _hook(s3_bucket, flaky)
    assert s3_bucket.download("k.bin").read_bytes() == b"data"
    assert len(s3_bucket.sleeps) == 2


def test_s3_incomplete_read_during_download_retried(s3_bucket):
    body = b"0123456789" * 100
    s3_bucket.write_bytes("k.bin", body)

    def short_get(request, n):
        if request.method == "GET" and n <= 3:
            headers = {"Content-Length": str(len(body)), "ETag": '"x"', "Content-Type": "binary/octet-stream"}
            return _response(request, 200, body[:10], headers)
        return None

    _hook(s3_bucket, short_get)
    assert s3_bucket.download("k.bin").read_bytes() == body
    assert len(s3_bucket.sleeps) >= 1


def test_s3_upload_retried_and_403_mapped(s3_bucket, tmp_path):
    src = tmp_path / "m.keras"
    src.write_bytes(b"model")
    seen = _hook(s3_bucket, lambda request, n: _response(request, 500) if n == 1 else None)
    s3_bucket.upload(src, "models/m.keras")
    assert len(seen) == 2 and s3_bucket.read_bytes("models/m.keras") == b"model"
    denied = b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
    _hook(s3_bucket, lambda request, n: _response(request, 403, denied))
    with pytest.raises(BucketAccessError, match=r"access denied.*models/m\.keras"):
        s3_bucket.upload(src, "models/m.keras")


def test_s3_gives_up_after_max_attempts(s3_bucket):
    seen = _hook(s3_bucket, lambda request, n: _response(request, 500))
    with pytest.raises(BucketAccessError, match=r"failed 3 times.*max_attempts"):
        s3_bucket.read_bytes("k.bin")
    assert len(seen) == 3 and len(s3_bucket.sleeps) == 2


def test_s3_404_not_retried(s3_bucket):
    seen = _hook(s3_bucket, lambda request, n: None)
    with pytest.raises(BucketKeyNotFoundError, match=r"'nope\.parquet'"):
        s3_bucket.download("nope.parquet")
    assert len(seen) == 1 and s3_bucket.sleeps == []


def test_s3_403_not_retried(s3_bucket):
    denied = b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
    seen = _hook(s3_bucket, lambda request, n: _response(request, 403, denied))
    with pytest.raises(BucketAccessError, match=rf"access denied.*{re.escape(repr(s3_bucket.url))}"):
        s3_bucket.write_bytes("k.bin", b"x")
    assert len(seen) == 1 and s3_bucket.sleeps == []


def test_s3_without_credentials_raises_access_error(s3_bucket, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    fresh = Bucket(s3_bucket.url, "unused", endpoint_url=s3_bucket._backend._endpoint_url, region="us-east-1")
    with pytest.raises(BucketAccessError, match="credential chain"):
        fresh.check_writable()


def test_s3_check_writable_on_missing_bucket(moto_endpoint, tmp_path):
    bucket = Bucket("s3://vg-no-such-bucket/p", tmp_path, endpoint_url=moto_endpoint, region="us-east-1")
    with pytest.raises(BucketAccessError, match=r"'s3://vg-no-such-bucket/p' does not exist"):
        bucket.check_writable()
