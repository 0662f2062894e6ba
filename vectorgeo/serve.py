"""Local HTTP server: the Lambda handler behind plain HTTP, plus the web map in ``vg_site/``.

Every API request under ``/api/`` becomes a Lambda function-URL (payload
v2) event and goes through the very ``handler`` that runs on AWS, so what
works here works deployed: there is no second implementation of search.
Everything else is a static file of ``vg_site/`` or the land-cover overview.

    python -m vectorgeo.serve [--host 127.0.0.1] [--port 8000] [--bucket DIR|s3://…] [--store faiss]
"""

from __future__ import annotations

import argparse
import base64
import errno
import hashlib
import importlib.util
import json
import logging
import mimetypes
import os
import signal
import sys
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from urllib.parse import parse_qsl, unquote, urlsplit

from vectorgeo.errors import ServerStartError, VectorGeoError
from vectorgeo.overview import Overview, write_overview

__all__ = ["API_PREFIX", "SITE_DIR", "MapServer", "http_to_lambda_event", "load_lambda_handler", "main", "make_server"]

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
SITE_DIR = REPO_ROOT / "vg_site"
HANDLER_PATH = REPO_ROOT / "lambda" / "handler.py"
API_PREFIX = "/api"
"""API paths are ``/api/search`` here and ``/search`` on the function URL; the page's default endpoint is ``api``."""

MAX_BODY_BYTES = 6 * 1024 * 1024  # a Lambda function URL refuses larger request bodies too
_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css", ".json": "application/json"}

LambdaHandler = Callable[[dict, object], dict]


def http_to_lambda_event(
    method: str, path: str, query: str, headers: dict[str, str], body: bytes, source_ip: str
) -> dict:
    """The event a Lambda function URL would send for this request (payload format 2.0).

    Args:
        method: HTTP method, upper case.
        path: Route path as the function URL sees it (``/search``), prefix removed.
        query: Raw query string, without ``?``.
        headers: Request headers; keys are lower-cased as on AWS.
        body: Raw request body; sent as text when it is UTF-8, else base64.
        source_ip: The client's address.
    """
    params: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        params[key] = f"{params[key]},{value}" if key in params else value  # repeated keys join with commas on AWS
    text: str | None = None
    is_base64 = False
    if body:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            text, is_base64 = base64.b64encode(body).decode("ascii"), True
    lowered = {k.lower(): v for k, v in headers.items()}
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "headers": lowered,
        "queryStringParameters": params or None,
        "requestContext": {
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": lowered.get("user-agent", ""),
            },
            "routeKey": "$default",
            "stage": "$default",
        },
        "body": text,
        "isBase64Encoded": is_base64,
    }


def _site_file(root: Path, name: str) -> Path | None:
    """The file a URL path names inside ``root``, or None: missing, a folder without index.html, or outside ``root``."""
    if "\x00" in name:
        return None
    try:
        target = (root / name).resolve()  # resolves "..", and symlinks that lead out of the site
        if target.is_dir():
            target = target / "index.html"
        return target if target.is_relative_to(root) and target.is_file() else None
    except OSError:  # a name too long for the file system, say
        return None


class _RequestHandler(BaseHTTPRequestHandler):
    """One request: an API call for the Lambda handler, or a static file."""

    server: MapServer
    protocol_version = "HTTP/1.1"
    # keep-alive answers go out at once: with Nagle on, the body waits for the client's delayed ACK (~40 ms)
    disable_nagle_algorithm = True
    timeout = 60  # a client that announces a body and never sends it frees its thread after this many seconds

    def do_GET(self) -> None:
        self._dispatch(send_body=True)

    def do_HEAD(self) -> None:
        self._dispatch(send_body=False)

    def do_POST(self) -> None:
        self._dispatch(send_body=True)

    def do_OPTIONS(self) -> None:
        self._dispatch(send_body=True)

    def log_message(self, format: str, *args: object) -> None:
        logger.info("%s %s", self.address_string(), format % args)

    def _dispatch(self, *, send_body: bool) -> None:
        url = urlsplit(self.path)
        if self.headers.get("Transfer-Encoding"):  # a chunked body would be read as the next request
            self.close_connection = True
            error = b'{"error": "chunked request bodies are not accepted; send Content-Length"}'
            self._reply(411, {"Content-Type": "application/json"}, error, send_body=send_body)
        elif url.path == API_PREFIX or url.path.startswith(API_PREFIX + "/"):
            self._api(url.path[len(API_PREFIX) :] or "/", url.query, send_body=send_body)
        elif self.command in ("GET", "HEAD"):
            self._static(url.path, send_body=send_body)
        else:
            self.close_connection = True  # any body is left unread: it must not be taken for the next request
            self._reply(405, {"Content-Type": "application/json"}, b'{"error": "only GET and HEAD serve files"}')

    def _api(self, path: str, query: str, *, send_body: bool) -> None:
        announced = self.headers.get("Content-Length") or "0"
        length = int(announced) if announced.isdigit() else -1
        if not 0 <= length <= MAX_BODY_BYTES:
            self.close_connection = True  # the body is left unread
            status, error = (413, f"request body is {length} bytes; the limit is {MAX_BODY_BYTES}")
            if length < 0:
                status, error = (400, f"Content-Length must be a byte count, got {announced!r}")
            self._reply(status, {"Content-Type": "application/json"}, json.dumps({"error": error}).encode())
            return
        body = self.rfile.read(length) if length else b""
        method = "GET" if self.command == "HEAD" else self.command
        event = http_to_lambda_event(method, path, query, dict(self.headers.items()), body, self.client_address[0])
        try:
            response = self.server.lambda_handler(event, None)
            status = int(response["statusCode"])
            headers = dict(response.get("headers") or {})
            payload = response.get("body") or ""
            data = base64.b64decode(payload) if response.get("isBase64Encoded") else payload.encode("utf-8")
        except Exception:  # the handler hides its own errors; this guards against a malformed response
            logger.exception("the Lambda handler failed or returned a malformed response to %s %s", method, path)
            status, headers, data = 502, {"Content-Type": "application/json"}, b'{"error": "the handler failed"}'
        self._reply(status, headers, data, send_body=send_body)

    def _static(self, path: str, *, send_body: bool) -> None:
        name = unquote(path).lstrip("/") or "index.html"
        extra = self.server.extra_files.get(name)
        if extra is not None:
            data, content_type = extra
            self._reply(200, {"Content-Type": content_type, "Cache-Control": "no-cache"}, data, send_body=send_body)
            return
        target = _site_file(self.server.site_dir, name)
        if target is None:
            self._reply(404, {"Content-Type": "text/plain; charset=utf-8"}, b"not found\n", send_body=send_body)
            return
        content_type = _TYPES.get(target.suffix) or mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if content_type.startswith("text/") or content_type == "application/json":
            content_type += "; charset=utf-8"
        headers = {"Content-Type": content_type, "Cache-Control": "no-cache"}
        self._reply(200, headers, target.read_bytes(), send_body=send_body)

    def _reply(self, status: int, headers: dict[str, str], data: bytes, *, send_body: bool = True) -> None:
        self.send_response(status)
        for key, value in headers.items():
            if key.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(key, str(value))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if send_body:
            self.wfile.write(data)


class MapServer(ThreadingHTTPServer):
    """The bound server: one thread per request (the handler's search service locks each store itself).

    Attributes:
        lambda_handler: ``handler(event, context)`` answering every ``/api/`` request.
        site_dir: Folder of the static files.
        extra_files: In-memory files by path (``overview/landcover.png``): ``(bytes, content type)``.
    """

    daemon_threads = True
    request_queue_size = 128  # many clients connecting at once must not overflow the listen backlog (1 s SYN retry)

    def __init__(
        self,
        address: tuple[str, int],
        lambda_handler: LambdaHandler,
        site_dir: Path,
        extra_files: dict[str, tuple[bytes, str]],
    ) -> None:
        super().__init__(address, _RequestHandler)
        self.lambda_handler = lambda_handler
        self.site_dir = site_dir.resolve()
        self.extra_files = extra_files


def make_server(
    lambda_handler: LambdaHandler,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    site_dir: str | Path = SITE_DIR,
    extra_files: dict[str, tuple[bytes, str]] | None = None,
) -> MapServer:
    """A bound (not yet serving) HTTP server; call ``serve_forever()`` on it.

    Args:
        lambda_handler: ``handler(event, context)`` as deployed on AWS Lambda.
        host: Interface to listen on; ``0.0.0.0`` exposes it beyond this machine.
        port: TCP port; 0 picks a free one (read it from ``server.server_address``).
        site_dir: Folder of static files (the web map).
        extra_files: In-memory files served by path (``overview/landcover.png``):
            ``(bytes, content type)``.

    Raises:
        ServerStartError: no ``index.html`` in ``site_dir``, the port is taken, or the address cannot be bound.
    """
    site_dir = Path(site_dir)
    if not (site_dir / "index.html").is_file():
        raise ServerStartError(f"no index.html in {str(site_dir)!r}; point site_dir at the vg_site folder")
    try:
        return MapServer((host, port), lambda_handler, site_dir, dict(extra_files or {}))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ServerStartError(f"port {port} on {host} is already in use; pass --port N (or --port 0)") from exc
        raise ServerStartError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


def load_lambda_handler(path: str | Path = HANDLER_PATH) -> ModuleType:
    """Import ``lambda/handler.py`` by file path (``lambda`` is a Python keyword, so it is no package).

    The module is imported once per process, like a Lambda container's (registered in
    ``sys.modules`` under a name derived from its path, so a second call returns the same one).
    """
    path = Path(path).resolve()
    name = f"vectorgeo_lambda_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None or not path.is_file():
        raise ServerStartError(f"Lambda handler {str(path)!r} not found; run from a full VectorGeo checkout")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


_ENV_OPTIONS = {  # CLI option -> the environment variable constants.py reads it from
    "bucket": "VG_BUCKET",
    "model": "VG_MODEL",
    "resolution": "VG_H3_RESOLUTION",
    "stores": "VG_SEARCH_STORES",
    "store": "VG_SEARCH_DEFAULT_STORE",
    "data_dir": "VG_DATA_DIR",
    "landcover": "VG_LANDCOVER",
    "legend": "VG_LEGEND",
}


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m vectorgeo.serve",
        description="Serve the search API (the Lambda handler, under /api/) and the web map on this machine. "
        "Options left out come from the environment, as for the flows (VG_BUCKET, VG_MODEL, ...).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port; 0 picks a free one")
    parser.add_argument("--bucket", help="the pipeline bucket: a directory or s3://bucket/prefix ($VG_BUCKET)")
    parser.add_argument("--model", help="model file name whose embeddings are searched, e.g. demo.keras ($VG_MODEL)")
    parser.add_argument("--resolution", type=int, help="H3 resolution of the index ($VG_H3_RESOLUTION)")
    parser.add_argument("--stores", help="stores to offer, comma-separated: faiss,qdrant,pgvector ($VG_SEARCH_STORES)")
    parser.add_argument("--store", help="store a request without store= uses ($VG_SEARCH_DEFAULT_STORE)")
    parser.add_argument("--data-dir", help="where the embedded Qdrant and PostgreSQL live ($VG_DATA_DIR)")
    parser.add_argument("--landcover", help="land-cover raster of the map's overview layer ($VG_LANDCOVER)")
    parser.add_argument("--legend", help="its legend: lc100, worldcover or a legend file ($VG_LEGEND)")
    parser.add_argument("--overview-px", type=int, default=2048, help="longest side of the overview image")
    parser.add_argument(
        "--write-overview",
        metavar="DIR",
        help="write landcover.png and landcover.json into DIR (a static deployment's overview/ folder) and exit",
    )
    return parser.parse_args(argv)


def _overview(constants: ModuleType, max_px: int) -> Overview | None:
    """The land-cover overview of the configured raster, or None (logged) when there is none to show."""
    from vectorgeo.overview import bucket_overview
    from vectorgeo.transfer import Bucket

    bucket = Bucket.from_settings(constants, "serve")
    try:
        return bucket_overview(
            bucket,
            landcover=constants.LANDCOVER,
            legend=constants.LEGEND,
            synthetic_seed=constants.SYNTHETIC_SEED,
            max_px=max_px,
        )
    except VectorGeoError as exc:
        logger.warning("no land-cover layer on the map: %s", exc)
        return None


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _overview_files(overview: Overview | None) -> dict[str, tuple[bytes, str]]:
    """The overview's files at the paths the page loads them from (``overview/landcover.png``, ...)."""
    return {f"overview/{name}": file for name, file in (overview.files() if overview else {}).items()}


def main(argv: list[str] | None = None) -> int:
    """Run the local server until Ctrl-C (or SIGTERM); returns the exit status.

    The CLI is a configuration edge like ``lambda/`` and ``scripts/``: options become the
    environment variables ``constants.py`` reads, so the handler builds its search service
    exactly as it does on AWS.
    """
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for option, variable in _ENV_OPTIONS.items():
        value = getattr(args, option)
        if value is not None:
            os.environ[variable] = str(value)
    try:
        lambda_module = load_lambda_handler()  # imports constants, which reads the environment set above
        if args.write_overview:
            overview = _overview(lambda_module.constants, args.overview_px)
            if overview is None:
                raise VectorGeoError("no land-cover overview was made (see the log above), so none was written")
            for path in write_overview(overview, args.write_overview):
                print(f"wrote {path}")
            return 0
        server = make_server(lambda_module.handler, host=args.host, port=args.port)  # a taken port fails first
    except VectorGeoError as exc:
        print(f"vectorgeo.serve: {exc}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` and service managers stop it as cleanly as Ctrl-C
    try:
        server.extra_files.update(_overview_files(_overview(lambda_module.constants, args.overview_px)))
        lambda_module.configure(cache_max_age_s=0)  # locally, a rebuilt index shows at once
        service = lambda_module.get_service()  # fails now, with the cause logged, rather than at the first click
        host, port = server.server_address[:2]
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        print(f"VectorGeo: model {service.model}, res {service.h3_resolution}, stores {', '.join(service.stores)}")
        print(f"VectorGeo map: open http://{shown}:{port}/  (API under /api/; Ctrl-C stops)", flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        print("\nVectorGeo: stopping", file=sys.stderr)
    except VectorGeoError as exc:
        print(f"vectorgeo.serve: {exc}", file=sys.stderr)
        return 1
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the clean-up short
            signal.signal(signum, signal.SIG_IGN)
        server.server_close()
        lambda_module.reset_service()  # closes the stores: an embedded PostgreSQL is stopped
    return 0


if __name__ == "__main__":
    sys.exit(main())
