"""AWS Lambda adapter: a function-URL / HTTP API (payload 2.0) or REST API (1.0) event in, a response out.

Routes and answers live in :mod:`vectorgeo.api`; the API is built once per container from ``constants``.
"""

from __future__ import annotations

import base64
import binascii
import importlib.util
import json
import logging
import sys
import threading
from dataclasses import replace
from pathlib import Path

if not all(importlib.util.find_spec(m) for m in ("constants", "vectorgeo")):  # a checkout: lambda/ is beside them
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import constants
from vectorgeo.api import ApiRequest, SearchAPI
from vectorgeo.errors import VectorGeoError
from vectorgeo.service_settings import ServiceSettings

__all__ = ["handler", "set_api"]

logger = logging.getLogger("vectorgeo.lambda")
_lock = threading.Lock()
_api: SearchAPI | None = None


def set_api(api: SearchAPI | None) -> None:
    """Answer with this API from now on (tests); None: build one from ``constants`` at the next event."""
    global _api
    with _lock:
        _api = api


def handler(event: dict, context: object) -> dict:
    """Answer one HTTP event; HEAD is answered as GET without the body."""
    global _api
    try:
        request = _request(event)
    except _NotHttpError as exc:
        return _error(400, str(exc))
    except (KeyError, TypeError, AttributeError, ValueError, binascii.Error) as exc:
        return _error(400, f"malformed HTTP event ({type(exc).__name__})")
    try:
        with _lock:
            _api = _api or SearchAPI(ServiceSettings.from_constants(constants))
    except VectorGeoError as exc:  # settings the environment spells wrong (an unknown store, say)
        logger.error("cannot configure the search API: %s", exc)
        return _error(503, "the search service is not ready (see the server log); try later")
    head = request.method == "HEAD"
    answer = _api.handle(replace(request, method="GET") if head else request)
    return _response(answer.status, answer.headers, b"" if head else answer.body)


class _NotHttpError(ValueError):
    """An event of neither HTTP payload format."""


def _request(event: object) -> ApiRequest:
    http = event.get("requestContext", {}).get("http") if isinstance(event, dict) else None
    if isinstance(http, dict):  # payload 2.0: function URL, HTTP API
        method, path, raw = http["method"], event.get("rawPath") or http["path"], event.get("rawQueryString")
        params = None if raw is not None else _single(event.get("queryStringParameters"))
    elif isinstance(event, dict) and "httpMethod" in event:  # payload 1.0: REST API
        method, path, raw = event["httpMethod"], event["path"], None
        multi = event.get("multiValueQueryStringParameters")
        params = {str(k): [str(x) for x in v] for k, v in multi.items()} if multi else None
        params = params or _single(event.get("queryStringParameters"))
    else:
        raise _NotHttpError("not an HTTP event: expected a Lambda function-URL or API Gateway event")
    body = event.get("body") or ""
    body = base64.b64decode(body, validate=True) if event.get("isBase64Encoded") else body
    body = body.encode() if isinstance(body, str) else body
    if not isinstance(body, bytes):
        raise TypeError(f"the body is a {type(body).__name__}")
    headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
    return ApiRequest(str(method).upper(), str(path), str(raw or ""), params, body, headers)


def _single(params: dict | None) -> dict[str, list[str]]:
    return {str(k): [str(v)] for k, v in (params or {}).items()}


def _error(status: int, message: str) -> dict:
    headers = {"Access-Control-Allow-Origin": constants.CORS_ALLOW_ORIGIN, "Cache-Control": "no-store"}
    return _response(status, {**headers, "Content-Type": "application/json"}, json.dumps({"error": message}).encode())


def _response(status: int, headers: dict[str, str], body: bytes) -> dict:
    """The Lambda response: the body as text when it is UTF-8, else base64."""
    try:
        text, is_base64 = body.decode("utf-8"), False
    except UnicodeDecodeError:
        text, is_base64 = base64.b64encode(body).decode("ascii"), True
    return {"statusCode": status, "headers": headers, "body": text, "isBase64Encoded": is_base64}
