"""The local server: static files of vg_site/, nothing outside it, and every API request through the Lambda handler.

The handler answers from a real search service over FAISS and Qdrant Edge, built by flow 04's jobs
(``build_search_bucket`` from ``search_data``); the CLI runs as a real process.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import h3.api.basic_int as h3i
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from search_data import CENTRE, RES, build_search_bucket, open_test_service

from vectorgeo.legends import BUILTIN_LEGENDS
from vectorgeo.overview import render_overview
from vectorgeo.serve import API_PREFIX, SITE_DIR, http_to_lambda_event, load_lambda_handler, make_server

REPO_ROOT = Path(__file__).resolve().parents[1]

KINDS = ("faiss", "qdrant")


def write_landcover(path: Path) -> Path:
    """A 350 x 250 px WorldCover raster over the test cells: bands of tree cover, cropland and water, a town."""
    rows, cols = np.mgrid[0:250, 0:350]
    codes = np.where((rows // 25 + cols // 35) % 3 == 0, 10, np.where((rows // 25 + cols // 35) % 3 == 1, 40, 80))
    codes[100:130, 150:200] = 50
    codes[:, :20] = 255  # nodata along the west edge
    profile = {"driver": "GTiff", "height": 250, "width": 350, "count": 1, "dtype": "uint8", "nodata": 255,
               "crs": "EPSG:4326", "transform": from_origin(-124.25, 44.85, 0.002, 0.002)}  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(codes.astype(np.uint8), 1)
    return path


def serve_command(data, landcover: Path, *extra: str) -> list[str]:
    """``python -m vectorgeo.serve`` on the test bucket (the browser test runs it too)."""
    return [
        sys.executable, "-m", "vectorgeo.serve", "--port", "0", "--bucket", str(data.bucket.url), "--model", "m.keras",
        "--resolution", str(RES), "--stores", ",".join(KINDS), "--data-dir", str(data.data_dir),
        "--landcover", str(landcover), "--legend", "worldcover", *extra,
    ]  # fmt: skip


def start_cli(command: list[str], cache_dir: Path) -> tuple[subprocess.Popen, str]:
    """Start the server process and return it with the URL it prints."""
    env = {**os.environ, "VG_CACHE_DIR": str(cache_dir), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        match = re.search(r"open (http://\S+/)", line)
        if match:
            return proc, match.group(1)
    proc.wait(timeout=30)
    raise AssertionError(f"the server printed no URL; exit {proc.returncode}: {proc.stderr.read()[-2000:]}")


def request(base: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """One raw HTTP request (the path is sent exactly as given); returns status, headers, body."""
    host, port = re.match(r"http://([^:/]+):(\d+)", base).groups()
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def event(method: str, path: str, query: str = "", body: str | None = None) -> dict:
    """A function-URL event as AWS sends it, written out by hand (not by the server's own converter)."""
    params = dict(pair.split("=", 1) for pair in query.split("&")) if query else None
    return {
        "version": "2.0", "rawPath": path, "rawQueryString": query, "queryStringParameters": params,
        "headers": {"content-type": "application/json"},
        "requestContext": {"http": {"method": method, "path": path, "sourceIp": "127.0.0.1"}},
        "body": body, "isBase64Encoded": False,
    }  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return build_search_bucket(tmp_path_factory.mktemp("serve"), KINDS)


@pytest.fixture(scope="module")
def landcover(data):
    return write_landcover(data.data_dir.parent / "landcover.tif")


@pytest.fixture(scope="module")
def handler_module(data):
    module = load_lambda_handler()
    module.configure(open_test_service(data, KINDS), cache_max_age_s=0)
    yield module
    module.reset_service()


@pytest.fixture(scope="module")
def base(handler_module, landcover):
    overview = render_overview(landcover, BUILTIN_LEGENDS["worldcover"], max_px=256)
    files = {f"overview/{name}": file for name, file in overview.files().items()}
    server = make_server(handler_module.handler, port=0, extra_files=files)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    yield f"http://{host}:{port}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def test_static_files_have_their_content_types(base):
    status, headers, body = request(base, "GET", "/")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert body == (SITE_DIR / "index.html").read_bytes() and b"vendor/leaflet/leaflet.js" in body
    for path, content_type in [
        ("/app.js", "text/javascript; charset=utf-8"),
        ("/style.css", "text/css; charset=utf-8"),
        ("/vendor/leaflet/leaflet.js", "text/javascript; charset=utf-8"),
        ("/vendor/leaflet/images/layers.png", "image/png"),
        ("/overview/landcover.png", "image/png"),
        ("/overview/landcover.json", "application/json"),
    ]:
        status, headers, body = request(base, "GET", path)
        assert (status, headers["content-type"]) == (200, content_type), path
        assert int(headers["content-length"]) == len(body) > 0
    status, headers, body = request(base, "HEAD", "/app.js")
    assert status == 200 and body == b"" and int(headers["content-length"]) == (SITE_DIR / "app.js").stat().st_size
    assert request(base, "GET", "/no-such-file.js")[0] == 404
    assert request(base, "POST", "/index.html", b"{}")[0] == 405


@pytest.mark.parametrize(
    "path",
    [
        "/../README.md",
        "/%2e%2e/constants.py",
        "/vendor/../../constants.py",
        "/vendor/..%2f..%2fconstants.py",
        "/%2e%2e%2f%2e%2e%2fetc/passwd",
        "//etc/passwd",
        "/index.html%00.png",
        "/vendor/",
    ],
)
def test_paths_outside_the_site_are_refused(base, path):
    status, _, body = request(base, "GET", path)
    assert status == 404 and body == b"not found\n"


ROUTES = [
    ("GET", "/search", f"lat={CENTRE[0]}&lng={CENTRE[1]}&k=7", None),
    ("GET", "/search", f"lat={CENTRE[0]}&lng={CENTRE[1]}&k=5&radius_km=8&store=qdrant&min_separation_km=3", None),
    ("POST", "/search", "", None),  # body: the positive cells, filled in below
    ("GET", "/cell", f"h3={h3i.int_to_str(h3i.latlng_to_cell(*CENTRE, RES))}", None),
    ("GET", "/health", "store=qdrant", None),
    ("GET", "/openapi.json", "", None),
]


@pytest.mark.parametrize(("method", "path", "query", "body"), ROUTES)
def test_api_requests_get_the_handlers_own_answer(base, handler_module, data, method, path, query, body):
    if method == "POST":
        body = json.dumps({"positive": [h3i.int_to_str(int(c)) for c in data.h3[5:8]], "k": 4})
    direct = handler_module.handler(event(method, path, query, body), None)
    url = API_PREFIX + path + (f"?{query}" if query else "")
    status, headers, served = request(base, method, url, body.encode() if body else None)
    assert status == direct["statusCode"] == 200
    assert served == direct["body"].encode()
    for name, value in direct["headers"].items():
        assert headers[name.lower()] == value
    if path == "/search":
        answer = json.loads(served)
        assert answer["type"] == "FeatureCollection" and len(answer["features"]) == answer["k"]


@pytest.mark.parametrize(
    ("method", "url", "status", "message"),
    [
        ("GET", f"/search?lat={CENTRE[0]}&lng={CENTRE[1]}&k=5000", 400, "k must be an integer between 1 and 1000"),
        ("GET", "/search?lat=44.6&lon=-123.9", 400, "unknown parameter 'lon' (longitude is 'lng')"),
        ("GET", "/search?lat=0&lng=0", 404, "is not in the index"),
        ("GET", "/search?h3=zz", 400, "h3 must be an H3 cell id string"),
        ("GET", "/health?store=milvus", 400, "unknown store 'milvus'"),
        ("POST", "/health", 405, "method POST is not allowed on /health"),
        ("GET", "/nowhere", 404, "no route '/nowhere'"),
    ],
)
def test_errors_pass_through_as_json(base, method, url, status, message):
    got, headers, body = request(base, method, API_PREFIX + url, b"" if method == "POST" else None)
    assert got == status and headers["content-type"] == "application/json"
    assert message in json.loads(body)["error"]


@pytest.mark.parametrize(
    ("length", "status", "message"),
    [(str(6 * 1024 * 1024 + 1), 413, "the limit is 6291456"), ("-5", 400, "Content-Length must be a byte count")],
)
def test_bad_body_lengths_are_refused_unread(base, length, status, message):
    host, port = re.match(r"http://([^:/]+):(\d+)", base).groups()
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.putrequest("POST", API_PREFIX + "/search")
    conn.putheader("Content-Length", length)  # announced, never sent: the server must not wait for it
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == status and message in json.loads(response.read())["error"]
    conn.close()


def test_requests_become_payload_v2_events():
    got = http_to_lambda_event(
        "POST", "/search", "k=3&h3=a&h3=b&x=", {"Content-Type": "application/json"}, b"\xff\x00", "10.0.0.1"
    )
    assert got["rawPath"] == got["requestContext"]["http"]["path"] == "/search"
    assert got["queryStringParameters"] == {"k": "3", "h3": "a,b", "x": ""}  # repeated keys join as on AWS
    assert got["headers"] == {"content-type": "application/json"} and got["requestContext"]["http"]["method"] == "POST"
    assert (got["body"], got["isBase64Encoded"]) == ("/wA=", True)
    assert http_to_lambda_event("GET", "/health", "", {}, b"", "::1")["body"] is None


def test_the_cli_serves_until_terminated_and_refuses_a_taken_port(data, landcover, tmp_path):
    proc, url = start_cli(serve_command(data, landcover), tmp_path / "cache")
    try:
        status, _, body = request(url, "GET", API_PREFIX + "/health")
        health = json.loads(body)
        assert status == 200 and (health["model"], health["stores"]) == ("m", list(KINDS))
        assert health["count"] == len(data.h3)
        status, _, body = request(url, "GET", "/overview/landcover.json")
        meta = json.loads(body)
        assert status == 200 and meta["legend"] == "worldcover" and meta["source"] == str(landcover)
        assert {c["name"] for c in meta["classes"]} == {"Tree cover", "Cropland", "Permanent water bodies", "Built-up"}
        port = re.search(r":(\d+)/", url).group(1)
        taken = subprocess.run(
            [*serve_command(data, landcover)[:3], "--port", port], cwd=REPO_ROOT, capture_output=True, text=True
        )
        assert taken.returncode == 1 and f"port {port} on 127.0.0.1 is already in use" in taken.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "VectorGeo: stopping" in err


def test_the_cli_writes_the_overview_for_a_static_site(data, landcover, tmp_path):
    out = tmp_path / "site" / "overview"
    done = subprocess.run(
        [*serve_command(data, landcover), "--write-overview", str(out), "--overview-px", "128"],
        cwd=REPO_ROOT, env={**os.environ, "VG_CACHE_DIR": str(tmp_path / "cache")}, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    meta = json.loads((out / "landcover.json").read_text())
    assert max(meta["width"], meta["height"]) == 128
    assert (out / "landcover.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.parametrize(
    ("head", "status"),
    [
        ("POST /index.html HTTP/1.1\r\nHost: x\r\nContent-Length: {n}\r\n\r\n", 405),
        ("POST /api/search HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{n:x}\r\n", 411),
    ],
    ids=["unread-body", "chunked"],
)
def test_a_body_left_unread_is_never_taken_for_a_request(base, head, status):
    host, port = re.match(r"http://([^:/]+):(\d+)", base).groups()
    inner = b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.format(n=len(inner)).encode() + inner)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(f"HTTP/1.1 {status}".encode()), answer[:200]
    assert answer.count(b"HTTP/1.1 ") == 1, answer  # the server closed the connection: no second answer


def test_a_file_name_too_long_is_a_404(base):
    assert request(base, "GET", "/" + "a" * 5000)[0] == 404
