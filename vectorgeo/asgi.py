"""The server's ASGI application: the search API under ``/api/``, the web map in ``vg_site/``, the overview.

A small ASGI 3 callable with no framework. API requests become :class:`~vectorgeo.api.ApiRequest`\\ s
(prefix stripped) and are answered by :meth:`SearchAPI.handle <vectorgeo.api.SearchAPI.handle>` in a
thread pool, since it blocks on the stores. Every other path is a file of the site, or an in-memory
file such as ``overview/landcover.png``. Every answer the application makes is JSON unless it is a file:
a wrong method is 405 with ``Allow``, a body over :data:`~vectorgeo.api.MAX_BODY_BYTES` is 413 before
it is read, a missing file 404. ``HEAD`` is ``GET`` without the body.

Each answer to the API carries ``Server-Timing: api;dur=<ms>, cpu;dur=<ms>``: the wall time of
``handle`` and the CPU time its thread spent (the Python cost of the answer, and FAISS's search).
"""

from __future__ import annotations

import asyncio
import json
import logging
import mimetypes
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from vectorgeo.api import MAX_BODY_BYTES, ApiRequest, ApiResponse, SearchAPI

__all__ = ["API_PREFIX", "SITE_DIR", "SiteApp", "json_error", "site_file"]

logger = logging.getLogger(__name__)

SITE_DIR = Path(__file__).resolve().parents[1] / "vg_site"
API_PREFIX = "/api"
"""API paths are ``/api/search`` here and ``/search`` on the Lambda function URL; the page's default endpoint."""

_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css", ".json": "application/json"}
_FILE_METHODS = "GET, HEAD"
_HOP_BY_HOP = frozenset({"content-length", "connection", "transfer-encoding", "keep-alive"})
_CLOSE = (b"connection", b"close")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def json_error(message: str) -> bytes:
    """The body of every error the server makes itself: ``{"error": message}``."""
    return json.dumps({"error": message}).encode()


def site_file(root: Path, name: str) -> Path | None:
    """The file a URL path names inside ``root``, or None: missing, a folder without index.html, or outside ``root``.

    Args:
        root: The site folder, resolved.
        name: The URL path, percent-decoded, without its leading ``/``.
    """
    if "\x00" in name:
        return None
    try:
        target = (root / name).resolve()  # resolves "..", and symlinks that lead out of the site
        if target.is_dir():
            target = (target / "index.html").resolve()  # an index.html symlink must not lead out either
        return target if target.is_relative_to(root) and target.is_file() else None
    except (OSError, ValueError):  # a name too long for the file system, say
        return None


def _content_type(path: Path) -> str:
    content_type = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if content_type.startswith("text/") or content_type == "application/json":
        content_type += "; charset=utf-8"
    return content_type


class SiteApp:
    """ASGI application: ``/api/...`` to a :class:`~vectorgeo.api.SearchAPI`, anything else to the site's files.

    Args:
        api: Answers the API; its :meth:`~vectorgeo.api.SearchAPI.handle` runs in this app's thread pool.
        site_dir: Folder of the static files (the web map).
        extra_files: In-memory files by URL path without ``/`` (``overview/landcover.png``):
            ``(bytes, content type)``.
        threads: Threads answering API requests at once in this process (the stores lock their own
            connections; more threads let one request's Python work overlap another's store call).
    """

    def __init__(
        self,
        api: SearchAPI,
        *,
        site_dir: str | Path = SITE_DIR,
        extra_files: Mapping[str, tuple[bytes, str]] | None = None,
        threads: int = 2,
    ) -> None:
        self.api = api
        self.site_dir = Path(site_dir).resolve()
        self.extra_files = dict(extra_files or {})
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="vectorgeo-api")

    def close(self) -> None:
        """Wait for the API threads to finish (the caller closes the API)."""
        self._executor.shutdown(wait=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":  # websockets are not served (uvicorn runs with ws="none")
            return
        started = False

        async def tracked_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            path = scope["path"]
            if path == API_PREFIX or path.startswith(API_PREFIX + "/"):
                await self._api(scope, receive, tracked_send, path[len(API_PREFIX) :] or "/")
            elif scope["method"] in ("GET", "HEAD"):
                await self._file(scope, tracked_send, path)
            else:
                error = json_error(f"{path[:200]} is a file of the map: only {_FILE_METHODS} are allowed")
                await _reply(tracked_send, 405, {"allow": _FILE_METHODS}, error, close=_has_body(scope))
        except Exception:  # a bug here must still answer JSON, never uvicorn's plain-text 500
            logger.exception("internal error answering %s %s", scope.get("method"), str(scope.get("path"))[:200])
            if not started:
                await _reply(send, 500, {}, json_error("internal error"), close=True)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _api(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        headers = _headers(scope)
        announced = headers.get("content-length", "0")
        if not announced.isdigit():  # the HTTP parsers refuse these already; a JSON 400 all the same
            error = json_error(f"Content-Length must be a byte count, got {announced[:40]}")
            await _reply(send, 400, {}, error, close=True)
            return
        if int(announced) > MAX_BODY_BYTES:
            error = json_error(f"the body is {announced} bytes; at most {MAX_BODY_BYTES}")
            await _reply(send, 413, {}, error, close=True)  # the body is left unread, so the connection closes
            return
        body = bytearray()
        more = True
        while more:  # Content-Length or chunked: the server has undone the framing
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > MAX_BODY_BYTES:
                error = json_error(f"the body is over {MAX_BODY_BYTES} bytes; at most {MAX_BODY_BYTES}")
                await _reply(send, 413, {}, error, close=True)
                return
        request = ApiRequest(
            method="GET" if scope["method"] == "HEAD" else scope["method"],
            path=path,
            query_string=scope["query_string"].decode("latin-1"),
            body=bytes(body),
            headers=headers,
        )
        loop = asyncio.get_running_loop()
        response, wall_s, cpu_s = await loop.run_in_executor(self._executor, self._timed_handle, request)
        out = {k: v for k, v in response.headers.items() if k.lower() not in _HOP_BY_HOP}
        out["Server-Timing"] = f"api;dur={wall_s * 1e3:.3f}, cpu;dur={cpu_s * 1e3:.3f}"
        await _reply(send, response.status, out, response.body)

    def _timed_handle(self, request: ApiRequest) -> tuple[ApiResponse, float, float]:
        wall, cpu = time.perf_counter(), time.thread_time()
        response = self.api.handle(request)
        return response, time.perf_counter() - wall, time.thread_time() - cpu

    async def _file(self, scope: Scope, send: Send, path: str) -> None:
        name = path.lstrip("/") or "index.html"
        close = _has_body(scope)  # a GET with a body: leave it unread and close
        extra = self.extra_files.get(name)
        if extra is not None:
            data, content_type = extra
            await _reply(send, 200, {"content-type": content_type, "cache-control": "no-cache"}, data, close=close)
            return
        target = site_file(self.site_dir, name)
        if target is None:
            await _reply(send, 404, {}, json_error(f"no file {path[:200]} in the map's site"), close=close)
            return
        try:
            data = target.read_bytes()  # the site's files are small: read at once, and fresh after every edit
        except OSError:
            await _reply(send, 404, {}, json_error(f"no file {path[:200]} in the map's site"), close=close)
            return
        headers = {"content-type": _content_type(target), "cache-control": "no-cache"}
        await _reply(send, 200, headers, data, close=close)


def _headers(scope: Scope) -> dict[str, str]:
    """Request headers as text, keys lower-case; repeated headers joined with ``, ``."""
    out: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if (name == b"content-length" and value.strip() != b"0") or name == b"transfer-encoding":
            return True
    return False


async def _reply(send: Send, status: int, headers: Mapping[str, str], body: bytes, *, close: bool = False) -> None:
    """Send a whole answer; JSON unless ``headers`` name another type; ``close`` ends the connection after it."""
    raw = [(k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in headers.items()]
    if body and not any(name == b"content-type" for name, _ in raw):
        raw.append((b"content-type", b"application/json"))
    raw.append((b"content-length", str(len(body)).encode()))
    if close:
        raw.append(_CLOSE)
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
