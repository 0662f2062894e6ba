"""``vectorgeo serve`` as a real process: uvicorn workers over real sockets, the three real stores.

The server runs the CLI (``python -m vectorgeo.serve``) on indexes built by flow 04's jobs
(``build_search_bucket``): FAISS, a Qdrant Edge shard hosted by one process for every worker, and the
embedded PostgreSQL started once by the supervisor. Raw sockets send what ``http.client`` would refuse to.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h3.api.basic_int as h3i
import numpy as np
import pytest
import rasterio
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from rasterio.transform import from_origin
from search_data import CENTRE, RES, build_search_bucket

from vectorgeo.api import MAX_BODY_BYTES, ApiRequest, SearchAPI
from vectorgeo.asgi import SITE_DIR
from vectorgeo.http_protocols import MAX_HEAD_BYTES
from vectorgeo.service_settings import ServiceSettings

REPO_ROOT = Path(__file__).resolve().parents[1]

KINDS = ("faiss", "qdrant")
ALL_KINDS = ("faiss", "qdrant", "pgvector")


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


def serve_command(data, landcover: Path, *extra: str, kinds: tuple[str, ...] = KINDS) -> list[str]:
    """``python -m vectorgeo.serve`` on the test bucket (the browser test runs it too)."""
    return [
        sys.executable, "-m", "vectorgeo.serve", "--port", "0", "--bucket", str(data.bucket.url), "--model", "m.keras",
        "--resolution", str(RES), "--stores", ",".join(kinds), "--data-dir", str(data.data_dir),
        "--landcover", str(landcover), "--legend", "worldcover", *extra,
    ]  # fmt: skip


def start_cli(command: list[str], cache_dir: Path) -> tuple[subprocess.Popen, str]:
    """Start the server process and return it with the URL it prints; its log goes to ``cache_dir/server.log``."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "VG_CACHE_DIR": str(cache_dir), "PYTHONUNBUFFERED": "1"}
    log = (cache_dir / "server.log").open("w")  # a pipe nobody reads would fill up and stall the server
    proc = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True
    )  # its own process group, as a service manager runs it
    log.close()  # the child holds its own copy
    proc.log_path = cache_dir / "server.log"
    timer = threading.Timer(180, lambda: os.killpg(proc.pid, signal.SIGKILL))  # a server that never prints a URL
    timer.start()
    try:
        for line in proc.stdout:
            match = re.search(r"open (http://\S+/)", line)
            if match:
                return proc, match.group(1)
        proc.wait(timeout=60)
    finally:
        timer.cancel()
    raise AssertionError(f"the server printed no URL; exit {proc.returncode}: {proc.log_path.read_text()[-3000:]}")


def stop_cli(proc: subprocess.Popen, signum: int = signal.SIGTERM) -> str:
    """Signal the server, wait for it to exit, and return its log; a server that will not stop is killed."""
    proc.send_signal(signum)
    try:
        proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return proc.log_path.read_text()


def address(base: str) -> tuple[str, int]:
    host, port = re.match(r"http://([^:/]+):(\d+)", base).groups()
    return host, int(port)


def request(base: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """One request on its own connection (the path is sent exactly as given); returns status, headers, body."""
    conn = http.client.HTTPConnection(*address(base), timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def raw(base: str, data: bytes, *, head: bool = False, timeout_s: float = 10) -> tuple[int, dict, bytes, bytes]:
    """Send raw bytes; read one answer. Returns status, headers, body, and whatever else came before the close."""
    with socket.create_connection(address(base), timeout=timeout_s) as sock:
        sock.sendall(data)
        response = http.client.HTTPResponse(sock, method="HEAD" if head else "GET")
        response.begin()
        body = response.read()
        headers = {k.lower(): v for k, v in response.getheaders()}
        rest = b""
        if headers.get("connection") == "close":
            while chunk := sock.recv(65536):
                rest += chunk
        return response.status, headers, body, rest


def error_of(body: bytes) -> str:
    return json.loads(body)["error"]


# ------------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return build_search_bucket(tmp_path_factory.mktemp("serve"), ALL_KINDS)


@pytest.fixture(scope="module")
def landcover(data):
    return write_landcover(data.data_dir.parent / "landcover.tif")


@pytest.fixture(scope="module")
def server(data, landcover, tmp_path_factory):
    """The CLI with two workers serving FAISS, Qdrant Edge and pgvector; yields (process, base URL)."""
    proc, url = start_cli(
        serve_command(data, landcover, "--workers", "2", kinds=ALL_KINDS), tmp_path_factory.mktemp("cache")
    )
    yield proc, url.rstrip("/")
    stop_cli(proc)


@pytest.fixture(scope="module")
def base(server):
    return server[1]


@pytest.fixture(scope="module")
def h11_base(data, landcover, tmp_path_factory):
    """The same server with uvicorn's pure-Python parser (h11), one worker, FAISS only."""
    command = serve_command(data, landcover, "--workers", "1", "--http", "h11", kinds=("faiss",))
    proc, url = start_cli(command, tmp_path_factory.mktemp("cache-h11"))
    yield url.rstrip("/")
    stop_cli(proc)


@pytest.fixture(scope="module")
def api(data, tmp_path_factory):
    """The library API on the same bucket, FAISS only (the server's process owns the Qdrant shard)."""
    settings = ServiceSettings(bucket=data.bucket.url, cache_dir=str(tmp_path_factory.mktemp("api-cache")),
                               model="m", h3_resolution=RES, stores=("faiss",), data_dir=str(data.data_dir),
                               cache_max_age_s=0)  # fmt: skip
    api = SearchAPI(settings)
    yield api
    api.close()


# ---------------------------------------------------------------------------------------------------- the site


def test_static_files_have_their_content_types(base):
    status, headers, body = request(base, "GET", "/")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert headers["cache-control"] == "no-cache"
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
        assert headers["cache-control"] == "no-cache"
    status, headers, body = request(base, "HEAD", "/app.js")
    assert status == 200 and body == b"" and int(headers["content-length"]) == (SITE_DIR / "app.js").stat().st_size
    status, headers, body = request(base, "GET", "/no-such-file.js")
    assert (status, headers["content-type"]) == (404, "application/json")
    assert error_of(body) == "no file /no-such-file.js in the map's site"


def test_the_overview_describes_the_land_cover(base, landcover):
    status, _, body = request(base, "GET", "/overview/landcover.json")
    meta = json.loads(body)
    assert status == 200 and meta["legend"] == "worldcover" and meta["source"] == str(landcover)
    assert {c["name"] for c in meta["classes"]} == {"Tree cover", "Cropland", "Permanent water bodies", "Built-up"}


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"])
def test_other_methods_on_files_are_405_with_allow(base, method):
    status, headers, body = request(base, method, "/index.html", b"{}")
    assert (status, headers["allow"], headers["content-type"]) == (405, "GET, HEAD", "application/json")
    assert error_of(body) == "/index.html is a file of the map: only GET, HEAD are allowed"


@pytest.mark.parametrize("method", ["BREW", "get"])
def test_unknown_methods_are_refused_in_json(base, h11_base, method):
    status, headers, body = request(base, method, "/index.html")  # httptools knows HTTP's methods only
    assert (status, headers["content-type"]) == (400, "application/json")
    assert error_of(body).startswith("malformed HTTP request")
    status, headers, body = request(h11_base, method, "/index.html")  # h11 takes any token
    assert (status, headers["allow"], headers["content-type"]) == (405, "GET, HEAD", "application/json")
    status, headers, body = request(h11_base, "BREW", "/api/search")  # the API's own 405
    assert (status, headers["allow"]) == (405, "GET, POST") and error_of(body).startswith("method BREW")


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
        "/" + "a" * 5000,  # a file name too long for the file system
    ],
)
def test_paths_outside_the_site_are_refused(base, path):
    status, headers, body = request(base, "GET", path)
    assert (status, headers["content-type"]) == (404, "application/json")
    assert error_of(body).startswith("no file ")


# ------------------------------------------------------------------------------------------------------ the API


def _cell(data, i: int) -> str:
    return h3i.int_to_str(int(data.h3[i]))


ROUTES = [
    ("GET", "/search", f"lat={CENTRE[0]}&lng={CENTRE[1]}&k=7"),
    ("GET", "/search", f"lat={CENTRE[0]}&lng={CENTRE[1]}&k=5&radius_km=8&min_separation_km=3"),
    ("POST", "/search", ""),  # body: positive cells, filled in below
    ("GET", "/cell", f"h3={h3i.int_to_str(h3i.latlng_to_cell(*CENTRE, RES))}"),
    ("GET", "/openapi.json", ""),
    ("GET", "/nowhere", ""),
    ("DELETE", "/search", ""),
    ("OPTIONS", "/search", ""),
    ("GET", "/search", "lat=44.6&lon=-123.9"),
]


@pytest.mark.parametrize(("method", "path", "query"), ROUTES)
def test_api_requests_get_the_apis_own_answer(base, api, data, method, path, query):
    body = b""
    if method == "POST":
        body = json.dumps({"positive": [_cell(data, i) for i in (5, 6, 7)], "k": 4}).encode()
    direct = api.handle(ApiRequest(method, path, query, body=body))
    status, headers, served = request(base, method, "/api" + path + (f"?{query}" if query else ""), body or None)
    assert (status, served) == (direct.status, direct.body)
    for name, value in direct.headers.items():
        assert headers[name.lower()] == value
    assert re.fullmatch(r"api;dur=[\d.]+, cpu;dur=[\d.]+", headers["server-timing"])
    if status >= 400:
        assert headers["content-type"] == "application/json" and error_of(served)


def test_head_on_the_api_is_get_without_a_body(base):
    query = f"/api/search?lat={CENTRE[0]}&lng={CENTRE[1]}&k=3"
    status, _, body = request(base, "GET", query)
    head_status, head_headers, head_body = request(base, "HEAD", query)
    assert (head_status, head_body, head_headers["content-length"]) == (status, b"", str(len(body)))


def test_a_chunked_body_is_read(base, data):
    payload = json.dumps({"positive": [_cell(data, 9)], "k": 3}).encode()
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (payload[:10], payload[10:])) + b"0\r\n\r\n"
    head = b"POST /api/search HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    status, _, body, _ = raw(base, head + chunks)
    assert status == 200 and len(json.loads(body)["features"]) == 3


def test_bodies_over_the_limit_are_413_unread(base):
    conn = http.client.HTTPConnection(*address(base), timeout=30)
    conn.putrequest("POST", "/api/search")
    conn.putheader("Content-Length", str(MAX_BODY_BYTES + 1))  # announced, never sent: the server must not wait
    conn.endheaders()
    response = conn.getresponse()
    assert (response.status, response.getheader("connection")) == (413, "close")
    assert error_of(response.read()) == f"the body is {MAX_BODY_BYTES + 1} bytes; at most {MAX_BODY_BYTES}"
    conn.close()
    chunk = b"x" * 65536
    chunks = [*[chunk] * (MAX_BODY_BYTES // len(chunk)), b"x"]  # one byte over, and no last chunk: all of it is read
    head = b"POST /api/search HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    status, headers, body, _ = raw(base, head + b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks))
    assert (status, headers["connection"]) == (413, "close")
    assert error_of(body) == f"the body is over {MAX_BODY_BYTES} bytes; at most {MAX_BODY_BYTES}"


def test_a_large_valid_body_in_one_read_is_answered(base, h11_base, data):
    """A body over the head's limit is not a head: a 4,096-number vector is answered by the API itself."""
    payload = b'{"vector":[' + b",".join([b"0.12345678901234"] * 4096) + b'],"k":3}'  # ~70 KB
    assert MAX_HEAD_BYTES < len(payload) < MAX_BODY_BYTES
    head = b"POST /api/search HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(payload)
    for server in (base, h11_base):
        status, _, body, _ = raw(server, head + payload)  # one sendall: head and body in the same reads
        assert status != 400 or not error_of(body).startswith("malformed HTTP request"), error_of(body)
        assert status in (200, 400), body[:200]


def test_a_whole_head_over_the_limit_in_one_read_is_a_400(base):
    message = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (MAX_HEAD_BYTES + 1) + b"\r\n\r\n"
    status, headers, body, _ = raw(base, message)
    assert (status, headers["connection"]) == (400, "close")
    assert error_of(body).startswith("malformed HTTP request")


def test_a_body_left_unread_is_never_taken_for_a_request(base):
    inner = b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n"
    head = f"POST /index.html HTTP/1.1\r\nHost: x\r\nContent-Length: {len(inner)}\r\n\r\n".encode()
    status, headers, _, rest = raw(base, head + inner)
    assert (status, headers["connection"]) == (405, "close")
    assert rest == b""  # the server closed the connection: no second answer


# --------------------------------------------------------------------------------------------- malformed HTTP

MALFORMED = [
    b"garbage\r\n\r\n",
    b"GET\r\n\r\n",
    b"GET / HTTQ/1.1\r\nHost: x\r\n\r\n",
    b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n: no name\r\n\r\n",
    b"GET / HTTP/1.1\r\nX-\x01: y\r\n\r\n",
    b"POST /api/search HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    b"POST /api/search HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n",
    b"POST /api/search HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    b"POST /api/search HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (MAX_HEAD_BYTES + 1),  # no end: refused once past the limit
]


@pytest.mark.parametrize("message", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_http_is_a_400_in_json(base, h11_base, message):
    for server in (base, h11_base):  # uvicorn's parsers: httptools (the default) and h11
        status, headers, body, _ = raw(server, message)
        assert (status, headers["content-type"], headers["connection"]) == (400, "application/json", "close")
        assert error_of(body).startswith("malformed HTTP request")


_TOKEN = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=10)
_METHODS = st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE"]) | _TOKEN
_PATH_CHARS = st.characters(min_codepoint=0, max_codepoint=255, blacklist_characters="\r\n")
_PREFIXES = st.sampled_from(["/", "/api/", "/vendor/", "*", "http://x/", ""])
_PATHS = st.one_of(
    st.sampled_from(["/", "/api", "/api/", "/api/search", "/api/health", "/api/cell", "/index.html", "/overview/"]),
    st.builds(lambda prefix, rest: prefix + rest, _PREFIXES, st.text(_PATH_CHARS, max_size=40)),
)
_VERSIONS = st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1", "http/1.1", ""])


@settings(max_examples=150, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(method=_METHODS, path=_PATHS, version=_VERSIONS, body=st.binary(max_size=64))
@example(method="GET", path="/api/search?lat=1e999&lng=nan&k=-1", version="HTTP/1.1", body=b"")
@example(method="POST", path="/api/search", version="HTTP/1.1", body=b"\xff\xfe{")
def test_fuzzed_requests_always_get_a_json_answer_or_a_file(base, method, path, version, body):
    line = " ".join(part for part in (method, path, version) if part).encode("latin-1")
    data = line + b"\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    status, headers, answer, _ = raw(base, data, head=method == "HEAD")
    assert 200 <= status < 500, (data, status, answer[:300])
    if status >= 300:
        assert headers["content-type"] == "application/json", data
        assert method == "HEAD" or json.loads(answer)["error"]


# ------------------------------------------------------------------------------------------ workers and stores


def _search(base: str, store: str, cell: str) -> tuple[int, list[str]]:
    status, _, body = request(base, "GET", f"/api/search?h3={cell}&k=5&store={store}")
    return status, [f["properties"]["h3"] for f in json.loads(body).get("features", [])]


def test_workers_answer_at_once_from_every_store(server, data):
    proc, base = server
    cells = [_cell(data, i) for i in range(0, 240, 12)]
    with ThreadPoolExecutor(12) as pool:  # a fresh connection per request: both workers take some
        answers = list(pool.map(lambda job: (job, _search(base, *job)), [(s, c) for c in cells for s in ALL_KINDS]))
    assert all(status == 200 for _, (status, _) in answers)
    by_cell = {}
    for (store, cell), (_, found) in answers:
        by_cell.setdefault(cell, {})[store] = found
    for cell, found in by_cell.items():  # exact search on a small index: every store agrees
        assert found["qdrant"] == found["pgvector"] == found["faiss"], cell
    log = proc.log_path.read_text()
    assert log.count("uvicorn.error: Started server process") == 2
    assert log.count("opened Qdrant Edge shard") == 1  # by the host only; each worker opened its client at start
    assert "not reachable" not in log and "cannot open store" not in log


def test_a_worker_that_dies_is_replaced(server, data):
    proc, base = server
    pids = [int(p) for p in re.findall(r"Started server process \[(\d+)\]", proc.log_path.read_text())]
    os.kill(pids[0], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(re.findall(r"Started server process", proc.log_path.read_text())) < 3:
        time.sleep(0.2)
    log = proc.log_path.read_text()
    assert f"worker {pids[0]} exited (code -9); starting another" in log
    assert all(_search(base, store, _cell(data, 3))[0] == 200 for store in ALL_KINDS for _ in range(4))


def test_a_taken_port_is_a_clear_error(data, landcover, base):
    port = str(address(base)[1])
    command = serve_command(data, landcover)
    command[command.index("--port") + 1] = port
    taken = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert taken.returncode == 1
    assert f"vectorgeo serve: port {port} on 127.0.0.1 is already in use; pass --port N (or --port 0)" in taken.stderr


def _postmaster_pid(cluster: Path) -> int | None:
    try:
        return int((cluster / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    """True while the process runs (a zombie left for an init that does not reap it has stopped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.parametrize("group", [False, True], ids=["SIGTERM to the server", "Ctrl-C to its process group"])
def test_a_stop_lets_requests_in_flight_finish_then_stops_postgres_and_the_shard(tmp_path, group):
    lone = build_search_bucket(tmp_path / "lone", ("qdrant", "pgvector"))  # its own PostgreSQL cluster
    landcover = write_landcover(tmp_path / "landcover.tif")
    proc, base = start_cli(serve_command(lone, landcover, "--workers", "2", kinds=("qdrant", "pgvector")),
                           tmp_path / "cache")  # fmt: skip
    postmaster = _postmaster_pid(lone.data_dir / "postgres")
    assert postmaster is not None and _alive(postmaster)
    in_flight = []
    for store in ("qdrant", "pgvector", "qdrant", "pgvector"):
        body = json.dumps({"positive": [h3i.int_to_str(int(lone.h3[0]))], "k": 3, "store": store}).encode()
        conn = http.client.HTTPConnection(*address(base), timeout=60)
        conn.putrequest("POST", "/api/search")
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body[:5])  # the rest comes after the stop: a worker is waiting for it meanwhile
        in_flight.append((conn, body))
    time.sleep(0.5)
    if group:
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C: the shard's host ignores it
    else:
        proc.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    assert proc.poll() is None and _alive(postmaster)  # still waiting for the requests in flight
    for conn, body in in_flight:
        conn.send(body[5:])
        response = conn.getresponse()
        assert response.status == 200 and len(json.loads(response.read())["features"]) == 3
        conn.close()
    proc.communicate(timeout=90)
    log = proc.log_path.read_text()
    assert proc.returncode == 0 and "VectorGeo: stopping" in log
    assert "stopped PostgreSQL" in log and not _alive(postmaster)
    from vectorgeo.stores.qdrant import QdrantEdgeStore

    shard = QdrantEdgeStore(lone.data_dir / "qdrant" / "m_res7")  # the host closed it: it opens here
    assert shard.count() == len(lone.h3)
    shard.close()


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
