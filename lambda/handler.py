"""AWS Lambda entry point of the search API: check the request, call the search service, answer JSON.

Takes Lambda function-URL / API Gateway HTTP API events (payload 2.0) and API Gateway REST events
(1.0). Routes (``lambda/openapi.json`` describes each parameter and answer):

* ``GET /search``: similar cells to a point (``lat``, ``lng``) or cells (``h3``, comma-separated),
  with ``k``, ``radius_km``, ``bbox``, ``polygon``, ``min_score``, ``min_separation_km``, ``exclude_within_km``,
  ``include_query``, ``store``; a GeoJSON FeatureCollection.
* ``POST /search``: the same as a JSON body, plus ``positive``/``negative`` cell lists and ``vector``.
* ``GET /cell``: one cell's embedding, hexagon and explanation.
* ``GET /health``: whether a store answers (503 when it does not).
* ``GET /openapi.json``: the API description. ``OPTIONS``: CORS preflight.

Errors are JSON ``{"error": "..."}`` saying what was wrong and what is allowed: bad input 400,
an unknown route or a cell outside the index 404, a wrong method 405, an unreachable store 503;
anything unexpected is logged here and answered 500 ``{"error": "internal error"}``. Only typed
numbers and cell ids reach the stores, never request text.

The service (store clients, sidecars) is built once per container, at the first request that
needs it, from ``constants`` (the environment). :func:`configure` installs another service or
response settings (tests, ``vectorgeo.serve``); :func:`reset_service` closes it, so the next
request builds one again. The handler never loads the model: no TensorFlow in the zip.
"""

from __future__ import annotations

import base64
import binascii
import importlib.util
import json
import logging
import math
import re
import sys
import threading
from pathlib import Path
from typing import NamedTuple
from urllib.parse import parse_qs

if importlib.util.find_spec("vectorgeo") is None:  # a checkout: lambda/ sits beside vectorgeo/ (the zip: inside)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import constants
from vectorgeo.errors import InvalidInputError, NotFoundError, StoreUnavailableError, VectorGeoError
from vectorgeo.search import (
    Query,
    SearchOptions,
    SearchService,
    cell_from_string,
    open_search_service,
    quoted,
)
from vectorgeo.transfer import Bucket

__all__ = ["configure", "get_service", "handler", "reset_service"]

logger = logging.getLogger("vectorgeo.lambda")
logger.setLevel(logging.INFO)

OPENAPI_PATH = Path(__file__).with_name("openapi.json")
MAX_BODY_BYTES = 256 * 1024
_MAX_FIELDS = 64
_OPTIONS = ("k", "radius_km", "bbox", "polygon", "min_score", "min_separation_km", "exclude_within_km", "include_query")
_GET_SEARCH = ("lat", "lng", "h3", *_OPTIONS, "store")
_POST_SEARCH = (*_GET_SEARCH, "positive", "negative", "vector", "alpha")
_GET_CELL = ("h3", "lat", "lng", "store")
_GET_HEALTH = ("store",)
_HINTS = {
    "lat": "degrees, -90..90",
    "lng": "degrees, -180..180",
    "radius_km": "km, > 0",
    "min_score": "cosine similarity, -1..1",
    "min_separation_km": "km, >= 0",
    "exclude_within_km": "km, >= 0",
    "alpha": "0..1",
}
_lock = threading.Lock()
_service: SearchService | None = None
_settings: dict = {}
_openapi: str | None = None


class _HttpError(Exception):
    """A request the router refuses (unknown route, wrong method, unreadable body)."""

    def __init__(self, status: int, message: str, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.headers = status, headers or {}


class _Text(str):
    """A query-string value: text that may spell a number or a boolean (JSON values must be typed)."""


class _Request(NamedTuple):  # not a dataclass: those need the module in sys.modules, and serve.py may not add it
    method: str
    path: str
    params: dict[str, list[str]]
    body: bytes


# ---------------------------------------------------------------------------------------------- configuration


def configure(
    service: SearchService | None = None, *, cors_allow_origin: str | None = None, cache_max_age_s: int | None = None
) -> None:
    """Answer with this service and these response settings from now on (None keeps a value as it is).

    Args:
        service: The search service (the caller keeps ownership until :func:`reset_service`).
        cors_allow_origin: ``Access-Control-Allow-Origin`` of every answer (default ``VG_CORS_ALLOW_ORIGIN``).
        cache_max_age_s: ``Cache-Control`` max-age of GET answers, seconds; 0 = no-store
            (default ``VG_SEARCH_CACHE_MAX_AGE_S``).
    """
    global _service
    with _lock:
        if service is not None:
            _service = service
        if cors_allow_origin is not None:
            _settings["cors_allow_origin"] = cors_allow_origin
        if cache_max_age_s is not None:
            _settings["cache_max_age_s"] = int(cache_max_age_s)


def reset_service() -> None:
    """Close the current service and forget it and every :func:`configure` setting."""
    global _service
    with _lock:
        service, _service = _service, None
        _settings.clear()
    if service is not None:
        service.close()


def get_service() -> SearchService:
    """The container's search service, built from ``constants`` on first use.

    Raises:
        StoreUnavailableError: it cannot be built (bucket unreachable, bad settings); logged in full.
    """
    global _service
    with _lock:
        if _service is None:
            try:
                _service = _build_service()
            except VectorGeoError as exc:
                logger.error("cannot build the search service: %s", exc)
                raise StoreUnavailableError("the search service is not ready (see the server log); try later") from exc
        return _service


def _build_service() -> SearchService:
    bucket = Bucket.from_settings(constants, "search")
    return open_search_service(
        bucket,
        model=constants.MODEL_FILENAME.removesuffix(".keras"),
        h3_resolution=constants.H3_RESOLUTION,
        stores=[s.strip() for s in constants.SEARCH_STORES.split(",") if s.strip()],
        default_store=constants.SEARCH_DEFAULT_STORE,
        collection=constants.SEARCH_COLLECTION,
        data_dir=constants.DATA_DIR,
        qdrant_url=constants.QDRANT_URL,
        qdrant_api_key=constants.QDRANT_API_KEY,
        database_url=constants.DATABASE_URL,
    )


# ---------------------------------------------------------------------------------------------------- entry


def handler(event: dict, context: object) -> dict:
    """Answer one HTTP event (function URL / HTTP API payload 2.0, or REST API 1.0)."""
    request = None
    try:
        request = _parse_event(event)
        methods = _ROUTES.get(request.path)
        if methods is None:
            routes = ", ".join(f"{m} {p}" for p, ms in _ROUTES.items() for m in ms)
            raise _HttpError(404, f"no route {quoted(request.path)}; routes: {routes}")
        if request.method == "OPTIONS":
            return _preflight(methods)
        if request.method not in methods:
            allowed = ", ".join(methods)
            raise _HttpError(
                405, f"method {request.method[:20]} is not allowed on {request.path}; use {allowed}", {"Allow": allowed}
            )
        return methods[request.method](request)
    except _HttpError as exc:
        return _error(exc.status, str(exc), exc.headers)
    except InvalidInputError as exc:
        return _error(400, str(exc))
    except NotFoundError as exc:
        return _error(404, str(exc))
    except StoreUnavailableError as exc:
        return _error(503, str(exc))
    except Exception:
        logger.exception("internal error answering %s", f"{request.method} {request.path}" if request else "an event")
        return _error(500, "internal error")


def _parse_event(event: object) -> _Request:
    try:
        http = event.get("requestContext", {}).get("http") if isinstance(event, dict) else None
        if isinstance(http, dict):  # payload 2.0: function URL, HTTP API
            method, path = http["method"], event.get("rawPath") or http["path"]
            raw = event.get("rawQueryString")
            params = _parse_qs(raw) if raw is not None else _single(event.get("queryStringParameters"))
        elif isinstance(event, dict) and "httpMethod" in event:  # payload 1.0: REST API
            method, path = event["httpMethod"], event["path"]
            multi = event.get("multiValueQueryStringParameters")
            params = {k: list(v) for k, v in multi.items()} if multi else _single(event.get("queryStringParameters"))
        else:
            raise _HttpError(400, "not an HTTP event: expected a Lambda function-URL or API Gateway event")
        body = event.get("body") or ""
        if event.get("isBase64Encoded"):
            body = base64.b64decode(body, validate=True)
        body = body.encode() if isinstance(body, str) else bytes(body)
        path = "/" + str(path).strip("/")
        return _Request(str(method).upper(), path, params, body)
    except (KeyError, TypeError, AttributeError, ValueError, binascii.Error) as exc:
        raise _HttpError(400, f"malformed HTTP event ({type(exc).__name__})") from exc


def _parse_qs(raw: str) -> dict[str, list[str]]:
    try:
        return parse_qs(raw, keep_blank_values=True, max_num_fields=_MAX_FIELDS)
    except ValueError as exc:
        raise _HttpError(400, f"too many query parameters (at most {_MAX_FIELDS})") from exc


def _single(params: dict | None) -> dict[str, list[str]]:
    return {str(k): [str(v)] for k, v in (params or {}).items()}


# --------------------------------------------------------------------------------------------------- routes


def _get_search(request: _Request) -> dict:
    p = _query_params(request, _GET_SEARCH)
    result = get_service().search(_query(p), _options(p), store=_store(p))
    return _ok(result, "application/geo+json", cache=True)


def _post_search(request: _Request) -> dict:
    if request.params:
        raise _HttpError(400, "POST /search takes its parameters in the JSON body, not in the query string")
    p = _json_body(request, _POST_SEARCH)
    result = get_service().search(_query(p), _options(p), store=_store(p))
    return _ok(result, "application/geo+json", cache=False)


def _get_cell(request: _Request) -> dict:
    p = _query_params(request, _GET_CELL)
    h3 = p.get("h3")
    if h3 is not None and ("lat" in p or "lng" in p):
        raise InvalidInputError("give h3, or lat and lng, not both")
    lat, lng = _number(p, "lat"), _number(p, "lng")
    if h3 is None and (lat is None or lng is None):
        raise InvalidInputError("GET /cell needs h3=<H3 cell id>, or lat and lng")
    cell = cell_from_string(h3) if h3 is not None else None
    return _ok(get_service().cell(cell, lat=lat, lng=lng, store=_store(p)), "application/geo+json", cache=True)


def _get_health(request: _Request) -> dict:
    p = _query_params(request, _GET_HEALTH)
    report = get_service().health(_store(p))
    return _response(200 if report["reachable"] else 503, report)


def _get_openapi(request: _Request) -> dict:
    global _openapi
    _query_params(request, ())
    if _openapi is None:
        _openapi = OPENAPI_PATH.read_text()
    return _response(200, None, raw=_openapi, cache=_max_age())


_ROUTES = {
    "/search": {"GET": _get_search, "POST": _post_search},
    "/cell": {"GET": _get_cell},
    "/health": {"GET": _get_health},
    "/openapi.json": {"GET": _get_openapi},
}


# --------------------------------------------------------------------------------------------------- inputs


def _query_params(request: _Request, allowed: tuple[str, ...]) -> dict[str, str]:
    """The query string as name -> value, refusing unknown and repeated names."""
    out = {}
    for name, values in request.params.items():
        if name not in allowed:
            hint = " (longitude is 'lng')" if name in ("lon", "long", "longitude") else ""
            listed = ", ".join(allowed) or "none"
            raise InvalidInputError(
                f"unknown parameter {quoted(name)}{hint} for {request.method} {request.path}; allowed: {listed}"
            )
        if len(values) != 1:
            raise InvalidInputError(f"{name} is given {len(values)} times; give it once")
        out[name] = _Text(values[0])
    return out


def _json_body(request: _Request, allowed: tuple[str, ...]) -> dict:
    if len(request.body) > MAX_BODY_BYTES:
        raise _HttpError(413, f"the body is {len(request.body)} bytes; at most {MAX_BODY_BYTES}")
    try:
        body = json.loads(request.body.decode("utf-8"), parse_constant=_no_constant, parse_int=_json_int)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _HttpError(400, f"the body must be a JSON object ({exc})") from exc
    if not isinstance(body, dict):
        raise _HttpError(400, f"the body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise InvalidInputError(f"unknown field(s) {unknown} in the body; allowed: {', '.join(allowed)}")
    return {k: v for k, v in body.items() if v is not None}


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _json_int(text: str) -> int | float:
    """JSON integers past 18 digits become floats (inf past ~308): ``float()`` of a huge int would overflow."""
    return int(text) if len(text) <= 18 else float(text)


def _query(p: dict) -> Query:
    if "h3" in p and "positive" in p:
        raise InvalidInputError("give h3 or positive, not both")
    cells = _cells(p.get("h3", p.get("positive")), "positive" if "positive" in p else "h3")
    vector = p.get("vector")
    if vector is not None and not isinstance(vector, list):
        raise InvalidInputError("vector must be a JSON array of numbers")
    return Query(
        lat=_number(p, "lat"),
        lng=_number(p, "lng"),
        cells=cells,
        negative=_cells(p.get("negative"), "negative"),
        vector=None if vector is None else tuple(vector),
        **({"alpha": _number(p, "alpha")} if "alpha" in p else {}),
    )


def _options(p: dict) -> SearchOptions:
    k = p.get("k", 10)
    if isinstance(k, _Text):
        if not re.fullmatch(r"\s*[+-]?\d{1,9}\s*", k):
            raise InvalidInputError(f"k must be an integer, 1..1000, got {quoted(k)}")
        k = int(k)
    include = p.get("include_query", False)
    if isinstance(include, _Text):
        if include.strip().lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise InvalidInputError(f"include_query must be true or false, got {quoted(include)}")
        include = include.strip().lower() in ("true", "1", "yes")
    return SearchOptions(
        k=k,
        radius_km=_number(p, "radius_km"),
        bbox=_bbox(p.get("bbox")),
        polygon=_polygon(p.get("polygon")),
        min_score=_number(p, "min_score"),
        min_separation_km=_number(p, "min_separation_km") or 0.0,
        exclude_within_km=_number(p, "exclude_within_km") or 0.0,
        include_query=include,
    )


def _store(p: dict) -> str | None:
    store = p.get("store")
    if store is not None and not isinstance(store, str):
        raise InvalidInputError(f"store must be a string such as 'faiss', got {quoted(store)}")
    return store


def _number(p: dict, name: str) -> float | None:
    """A parameter as a finite float (from query text or a JSON number), or None when absent."""
    value = p.get(name)
    if value is None:
        return None
    hint = f" ({_HINTS[name]})" if name in _HINTS else ""
    if isinstance(value, _Text):
        try:
            if "_" in value:  # float() reads "1_0" as 10; a client means no such thing
                raise ValueError(value)
            number = float(value)
        except ValueError:
            raise InvalidInputError(f"{name} must be a number{hint}, got {quoted(value)}") from None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    else:
        raise InvalidInputError(f"{name} must be a number{hint}, got {quoted(value)}")
    if not math.isfinite(number):
        raise InvalidInputError(f"{name} must be a finite number{hint}, got {quoted(value)}")
    return number


def _bbox(value: object) -> tuple[float, ...] | None:
    if value is None:
        return None
    parts = [_Text(v) for v in value.split(",")] if isinstance(value, str) else value
    if not isinstance(parts, list) or len(parts) != 4:
        raise InvalidInputError(f"bbox must be west,south,east,north (4 numbers, degrees), got {quoted(value)}")
    return tuple(_number({"bbox": v}, "bbox") for v in parts)


def _polygon(value: object) -> tuple[tuple[float, float], ...] | None:
    """A ring from ``lng,lat,lng,lat,...`` (query text) or ``[[lng, lat], ...]`` (JSON)."""
    if value is None:
        return None
    shape = "lng,lat,lng,lat,... (at least 3 vertices, degrees) or, in JSON, [[lng, lat], ...]"
    if isinstance(value, str):
        numbers = [_number({"polygon": _Text(v)}, "polygon") for v in value.split(",")]
        if len(numbers) % 2:
            raise InvalidInputError(f"polygon must be {shape}; got an odd count of numbers, {len(numbers)}")
        return tuple(zip(numbers[::2], numbers[1::2], strict=True))
    if not isinstance(value, list) or not all(isinstance(v, list) and len(v) == 2 for v in value):
        raise InvalidInputError(f"polygon must be {shape}, got {quoted(value)}")
    return tuple((_number({"polygon": x}, "polygon"), _number({"polygon": y}, "polygon")) for x, y in value)


def _cells(value: object, name: str) -> tuple[int, ...]:
    """H3 ids from a comma-separated string (query) or a list of strings (JSON)."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        raise InvalidInputError(f"{name} must be a list of H3 cell id strings, got {quoted(value)}")
    return tuple(cell_from_string(v, name) for v in items)


# -------------------------------------------------------------------------------------------------- outputs


def _max_age() -> str:
    age = _settings.get("cache_max_age_s", constants.SEARCH_CACHE_MAX_AGE_S)
    return f"public, max-age={age}" if age > 0 else "no-store"


def _ok(body: dict, content_type: str, *, cache: bool) -> dict:
    return _response(200, body, content_type=content_type, cache=_max_age() if cache else "no-store")


def _error(status: int, message: str, headers: dict | None = None) -> dict:
    if status >= 500:
        logger.warning("answered %d: %s", status, message)
    return _response(status, {"error": message}, headers=headers)


def _preflight(methods: dict) -> dict:
    headers = {
        "Access-Control-Allow-Methods": ", ".join([*methods, "OPTIONS"]),
        "Access-Control-Allow-Headers": "Content-Type",
        "Access-Control-Max-Age": "86400",
    }
    return _response(204, None, headers=headers)


def _response(
    status: int,
    body: dict | None,
    *,
    content_type: str = "application/json",
    cache: str = "no-store",
    headers: dict | None = None,
    raw: str | None = None,
) -> dict:
    text = raw if raw is not None else "" if body is None else json.dumps(body, separators=(",", ":"), allow_nan=False)
    out = {
        "Access-Control-Allow-Origin": _settings.get("cors_allow_origin", constants.CORS_ALLOW_ORIGIN),
        "Cache-Control": cache,
        **(headers or {}),
    }
    if text:
        out["Content-Type"] = content_type
    return {"statusCode": status, "headers": out, "body": text, "isBase64Encoded": False}
