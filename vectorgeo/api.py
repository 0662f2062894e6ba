"""The search HTTP API as library code: route a request, check its inputs, call the search service, answer JSON.

Every entry point (the Lambda adapter in ``lambda/handler.py``, the local server, ``vectorgeo search``)
turns its own request into an :class:`ApiRequest` and sends the :class:`ApiResponse` back, so there is
one implementation of the routes. ``vectorgeo/openapi.json`` describes each parameter and answer:

* ``GET /search``: similar cells to a point (``lat``, ``lng``) or cells (``h3``, comma-separated),
  with ``k``, ``radius_km``, ``bbox``, ``polygon``, ``min_score``, ``min_separation_km``, ``exclude_within_km``,
  ``include_query``, ``store``; a GeoJSON FeatureCollection.
* ``POST /search``: the same as a JSON body, plus ``positive``/``negative`` cell lists and ``vector``.
* ``POST /classify``: labelled cells (``labels``: cell -> class, or ``positive``/``negative`` cells) and a
  region (``bbox``, ``polygon``, or ``lat``, ``lng`` and ``radius_km``; at most 50,000 cells): a light
  classifier trained on the fly predicts each indexed cell of the region; a GeoJSON FeatureCollection
  with each cell's class and probabilities (:mod:`vectorgeo.region_classify`).
* ``GET /cell``: one cell's embedding, hexagon and explanation.
* ``GET /health``: whether a store answers (503 when it does not).
* ``GET /openapi.json``: the API description. ``OPTIONS``: CORS preflight.

Errors are JSON ``{"error": "..."}`` saying what was wrong and what is allowed: bad input 400 (a body
that is not UTF-8, not a JSON object, nested too deep, or holds NaN), an unknown route or a cell outside
the index 404, a wrong method 405 (with ``Allow``), a body over :data:`MAX_BODY_BYTES` 413, ``POST /classify``
on a deployment without scikit-learn 501, an unreachable store 503; anything unexpected is logged and answered
500 ``{"error": "internal error"}``. Only typed numbers and cell ids reach the stores, never request text.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs

import numpy as np

from vectorgeo.api_params import (
    GET_CELL,
    GET_HEALTH,
    GET_SEARCH,
    POST_CLASSIFY,
    POST_SEARCH,
    Text,
    cell_params,
    classify_params,
    search_params,
)
from vectorgeo.errors import InvalidInputError, NotFoundError, StoreUnavailableError, VectorGeoError
from vectorgeo.search import SearchService, quoted
from vectorgeo.service_settings import ServiceSettings

__all__ = ["MAX_BODY_BYTES", "MAX_JSON_DEPTH", "OPENAPI_PATH", "ROUTES", "ApiRequest", "ApiResponse", "SearchAPI"]

logger = logging.getLogger(__name__)

OPENAPI_PATH = Path(__file__).with_name("openapi.json")
MAX_BODY_BYTES = 256 * 1024
"""Largest request body read, bytes (a search body is a few KiB; 100 cells and a 4096-d vector fit)."""
MAX_JSON_DEPTH = 32
"""Deepest nesting of arrays and objects in a body (the API's own fields nest 3 deep)."""
MAX_FIELDS = 64
"""Most query-string fields one request may carry."""
ROUTES: dict[str, dict[str, str]] = {
    "/search": {"GET": "_get_search", "POST": "_post_search"},
    "/cell": {"GET": "_get_cell"},
    "/health": {"GET": "_get_health"},
    "/openapi.json": {"GET": "_get_openapi"},
    "/classify": {"POST": "_post_classify"},
}
"""Route path -> HTTP method -> the :class:`SearchAPI` method answering it."""

_ROUTE_LIST = ", ".join(f"{m} {p}" for p, ms in ROUTES.items() for m in ms)
# A JSON string (an unterminated one runs to the end, so the scan stays linear), or a run of anything but brackets.
_NOT_BRACKETS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[^"\[\]{}]+', re.S)
_NOT_READY = "the search service is not ready (see the server log); try later"


@dataclass(frozen=True)
class ApiRequest:
    """One HTTP request as the API sees it.

    Attributes:
        method: Upper-case HTTP method.
        path: Route path without any mount prefix (``/search``); trailing slashes are ignored.
        query_string: Raw query string without ``?``; parsed here (more than :data:`MAX_FIELDS` fields: 400).
        params: Already-parsed parameters (API Gateway REST events); when given, ``query_string`` is ignored.
        body: Raw request body.
        headers: Request headers, keys lower-case.
    """

    method: str
    path: str
    query_string: str = ""
    params: Mapping[str, Sequence[str]] | None = None
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ApiResponse:
    """One answer: status, headers (``Content-Type`` when there is a body, CORS, ``Cache-Control``), body bytes."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        """The body parsed as JSON (None when empty)."""
        return json.loads(self.body) if self.body else None


class _HttpError(Exception):
    """A request the router refuses (unknown route, wrong method, unreadable body)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.headers = status, headers or {}


class SearchAPI:
    """Routes, parsing, validation and answers, over one search service.

    Args:
        settings: Where the index lives and how answers are sent (CORS origin, cache max-age).
        service: The search service; None builds one from ``settings`` at the first request that needs
            it (once, under a lock; a failure is logged and answered 503, and the next request tries again).

    Thread-safe: the server calls :meth:`handle` from many threads at once.
    """

    def __init__(self, settings: ServiceSettings, service: SearchService | None = None) -> None:
        self.settings = settings
        self._service = service
        self._lock = threading.Lock()
        self._openapi: bytes | None = None

    def service(self) -> SearchService:
        """The search service, built now if need be (a server calls this at start-up to fail early).

        Raises:
            StoreUnavailableError: it cannot be built (bucket unreachable, no index); the cause is logged
                and chained.
        """
        with self._lock:
            if self._service is None:
                try:
                    self._service = self.settings.open_service()
                except Exception as exc:  # whatever the cause, clients get a 503 and the log gets the detail
                    expected = isinstance(exc, VectorGeoError)  # its message says it all; anything else: a traceback
                    logger.error("cannot build the search service: %s", exc, exc_info=not expected)
                    raise StoreUnavailableError(_NOT_READY) from exc
            return self._service

    def close(self) -> None:
        """Close the service (built or given): its stores close, an embedded PostgreSQL stops."""
        with self._lock:
            service, self._service = self._service, None
        if service is not None:
            service.close()

    def handle(self, request: ApiRequest) -> ApiResponse:
        """Answer one request; never raises (a surprise is logged and answered 500)."""
        try:
            return self._route(request)
        except _HttpError as exc:
            return self._error(exc.status, str(exc), exc.headers)
        except InvalidInputError as exc:
            return self._error(400, str(exc))
        except NotFoundError as exc:
            return self._error(404, str(exc))
        except StoreUnavailableError as exc:
            return self._error(503, str(exc))
        except Exception:
            what = f"{getattr(request, 'method', '?')!s:.20} {getattr(request, 'path', '?')!s:.200}"
            logger.exception("internal error answering %s", what)
            return self._error(500, "internal error")

    # ------------------------------------------------------------------------------------------------ routes

    def _route(self, request: ApiRequest) -> ApiResponse:
        path = "/" + request.path.strip("/")
        method = request.method.upper()
        methods = ROUTES.get(path)
        if methods is None:
            raise _HttpError(404, f"no route {quoted(path)}; routes: {_ROUTE_LIST}")
        if method == "OPTIONS":
            return self._preflight(methods)
        if method not in methods:
            allowed = ", ".join(methods)
            shown = method[:20] if re.fullmatch(r"[A-Z]{1,20}", method[:20]) else quoted(method, 24)
            raise _HttpError(405, f"method {shown} is not allowed on {path}; use {allowed}", {"Allow": allowed})
        return getattr(self, methods[method])(request, f"{method} {path}")

    def _get_search(self, request: ApiRequest, route: str) -> ApiResponse:
        query, options, store = search_params(_query_params(request, route, GET_SEARCH))
        return self._ok(self.service().search(query, options, store=store), cache=True)

    def _post_search(self, request: ApiRequest, route: str) -> ApiResponse:
        if _params(request):
            raise _HttpError(400, f"{route} takes its parameters in the JSON body, not in the query string")
        query, options, store = search_params(_json_body(request.body, POST_SEARCH))
        return self._ok(self.service().search(query, options, store=store), cache=False)

    def _post_classify(self, request: ApiRequest, route: str) -> ApiResponse:
        if _params(request):
            raise _HttpError(400, f"{route} takes its parameters in the JSON body, not in the query string")
        arguments = classify_params(_json_body(request.body, POST_CLASSIFY))
        if importlib.util.find_spec("sklearn") is None:  # a Lambda zip built without it (see lambda/README.md)
            missing = f"{route} needs scikit-learn, which this deployment leaves out; the other routes work"
            raise _HttpError(501, missing)
        return self._ok(self.service().classify(**arguments), cache=False)

    def _get_cell(self, request: ApiRequest, route: str) -> ApiResponse:
        cell, lat, lng, store = cell_params(_query_params(request, route, GET_CELL))
        return self._ok(self.service().cell(cell, lat=lat, lng=lng, store=store), cache=True)

    def _get_health(self, request: ApiRequest, route: str) -> ApiResponse:
        p = _query_params(request, route, GET_HEALTH)
        report = self.service().health(p.get("store"))
        return self._answer(200 if report["reachable"] else 503, _dump(report))

    def _get_openapi(self, request: ApiRequest, route: str) -> ApiResponse:
        _query_params(request, route, ())
        if self._openapi is None:
            self._openapi = OPENAPI_PATH.read_bytes()
        return self._answer(200, self._openapi, cache=self._max_age())

    # ----------------------------------------------------------------------------------------------- answers

    def _max_age(self) -> str:
        age = self.settings.cache_max_age_s
        return f"public, max-age={age}" if age > 0 else "no-store"

    def _ok(self, body: dict, *, cache: bool) -> ApiResponse:
        return self._answer(200, _dump(body), "application/geo+json", self._max_age() if cache else "no-store")

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> ApiResponse:
        if status >= 500:
            logger.warning("answered %d: %s", status, message)
        return self._answer(status, _dump({"error": message}), headers=headers)

    def _preflight(self, methods: dict[str, str]) -> ApiResponse:
        headers = {
            "Access-Control-Allow-Methods": ", ".join([*methods, "OPTIONS"]),
            "Access-Control-Allow-Headers": "Content-Type",
            "Access-Control-Max-Age": "86400",
        }
        return self._answer(204, b"", headers=headers)

    def _answer(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        cache: str = "no-store",
        headers: dict[str, str] | None = None,
    ) -> ApiResponse:
        out = {
            "Access-Control-Allow-Origin": self.settings.cors_allow_origin,
            "Cache-Control": cache,
            **(headers or {}),
        }
        if body:
            out["Content-Type"] = content_type
        return ApiResponse(status, out, body)


# ------------------------------------------------------------------------------------------------------ inputs


def _dump(body: object) -> bytes:
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


def _params(request: ApiRequest) -> dict[str, list[str]]:
    """The query parameters, as name -> values (``params`` when given, else the parsed query string)."""
    if request.params is None:
        try:
            return parse_qs(request.query_string, keep_blank_values=True, max_num_fields=MAX_FIELDS)
        except ValueError as exc:
            raise _HttpError(400, f"too many query parameters (at most {MAX_FIELDS})") from exc
    params = {str(k): [v] if isinstance(v, str) else [str(x) for x in v] for k, v in request.params.items()}
    if sum(map(len, params.values())) > MAX_FIELDS:
        raise _HttpError(400, f"too many query parameters (at most {MAX_FIELDS})")
    return params


def _query_params(request: ApiRequest, route: str, allowed: tuple[str, ...]) -> dict[str, Text]:
    """The query string as name -> value, refusing unknown and repeated names."""
    out = {}
    for name, values in _params(request).items():
        if name not in allowed:
            hint = " (longitude is 'lng')" if name in ("lon", "long", "longitude") else ""
            listed = ", ".join(allowed) or "none"
            raise InvalidInputError(f"unknown parameter {quoted(name)}{hint} for {route}; allowed: {listed}")
        if len(values) != 1:
            raise InvalidInputError(f"{name} is given {len(values)} times; give it once")
        out[name] = Text(values[0])
    return out


def _json_body(body: bytes, allowed: tuple[str, ...]) -> dict:
    """The body as a JSON object of known fields (nulls dropped); 413 past the size limit, 400 for anything else."""
    if len(body) > MAX_BODY_BYTES:
        raise _HttpError(413, f"the body is {len(body)} bytes; at most {MAX_BODY_BYTES}")
    try:
        text = body.decode("utf-8")
        depth = _json_depth(text)
        if depth > MAX_JSON_DEPTH:
            raise _HttpError(400, f"the body nests arrays and objects {depth} deep; at most {MAX_JSON_DEPTH}")
        value = json.loads(text, parse_constant=_no_constant, parse_int=_json_int)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _HttpError(400, f"the body must be a JSON object ({exc})") from exc
    if not isinstance(value, dict):
        raise _HttpError(400, f"the body must be a JSON object, got {type(value).__name__}")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise InvalidInputError(f"unknown field(s) {quoted(unknown, 200)} in the body; allowed: {', '.join(allowed)}")
    return {k: v for k, v in value.items() if v is not None}


def _json_depth(text: str) -> int:
    """How deep arrays and objects nest in JSON text, counted outside strings (linear; no recursion)."""
    brackets = _NOT_BRACKETS.sub("", text)
    if not brackets:
        return 0
    codes = np.frombuffer(brackets.encode("ascii"), np.uint8)
    return int(np.cumsum(np.where((codes == ord("[")) | (codes == ord("{")), 1, -1)).max())


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _json_int(text: str) -> int | float:
    """JSON integers past 18 digits become floats (inf past ~308): ``float()`` of a huge int would overflow."""
    return int(text) if len(text) <= 18 else float(text)
