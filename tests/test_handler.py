"""The Lambda handler: routes, both event formats, CORS and caching, every bad input, a fuzz run, the zip."""

from __future__ import annotations

import base64
import importlib.util
import json
import logging
import os
import re
import subprocess
import sys
import zipfile
from urllib.parse import urlencode

import h3.api.basic_int as h3i
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi
from search_data import CENTRE, RES, build_search_bucket, open_test_service

from tests.conftest import REPO_ROOT
from vectorgeo.errors import StoreUnavailableError
from vectorgeo.search import Query, SearchOptions, SearchService
from vectorgeo.stores import GeoFilter

HANDLER = REPO_ROOT / "lambda" / "handler.py"
OPENAPI = json.loads((REPO_ROOT / "lambda" / "openapi.json").read_text())


def load_handler():
    """The handler module loaded by file path, as vectorgeo.serve loads it (``lambda`` is a keyword)."""
    spec = importlib.util.spec_from_file_location("vg_lambda_handler", HANDLER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return build_search_bucket(tmp_path_factory.mktemp("api"), kinds=("faiss", "qdrant"))


@pytest.fixture(scope="module")
def service(data):
    service = open_test_service(data, ("faiss", "qdrant"))
    yield service
    service.close()


@pytest.fixture(scope="module")
def api(service):
    module = load_handler()
    module.configure(service)
    yield module
    module.reset_service()


def v2(method: str, path: str, query: dict | str | None = None, body: str | bytes | None = None, b64=False) -> dict:
    """A Lambda function-URL event (payload 2.0)."""
    raw = query if isinstance(query, str) else urlencode(query or {})
    if b64:
        body = base64.b64encode(body if isinstance(body, bytes) else body.encode()).decode()
    event = {
        "version": "2.0",
        "rawPath": path,
        "rawQueryString": raw,
        "headers": {"content-type": "application/json"},
        "requestContext": {"http": {"method": method, "path": path}},
        "isBase64Encoded": b64,
    }
    if body is not None:
        event["body"] = body
    return event


def v1(method: str, path: str, query: dict | None = None, body: str | None = None, multi=None) -> dict:
    """An API Gateway REST event (payload 1.0)."""
    return {
        "httpMethod": method,
        "path": path,
        "queryStringParameters": query,
        "multiValueQueryStringParameters": multi,
        "body": body,
        "isBase64Encoded": False,
    }


def call(api, event) -> tuple[int, dict, dict | None]:
    response = api.handler(event, None)
    assert set(response) == {"statusCode", "headers", "body", "isBase64Encoded"}
    body = json.loads(response["body"]) if response["body"] else None
    return response["statusCode"], response["headers"], body


def schema(name: str) -> Draft202012Validator:
    return Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": OPENAPI["components"]})


def cell_id(data, row: int) -> str:
    return h3i.int_to_str(int(data.h3[row]))


# ------------------------------------------------------------------------------------------------ routes


def test_get_search_in_both_event_formats(api, service, data):
    query = {"lat": CENTRE[0], "lng": CENTRE[1], "k": 7}
    status, headers, body = call(api, v2("GET", "/search", query))
    assert status == 200 and headers["Content-Type"] == "application/geo+json"
    assert headers["Access-Control-Allow-Origin"] == "*" and headers["Cache-Control"] == "public, max-age=300"
    assert body == json.loads(json.dumps(service.search(Query(lat=CENTRE[0], lng=CENTRE[1]), SearchOptions(k=7))))
    schema("SearchResult").validate(body)
    assert call(api, v1("GET", "/search", {k: str(v) for k, v in query.items()}))[2] == body
    assert call(api, v1("GET", "/search/", None, multi={k: [str(v)] for k, v in query.items()}))[2] == body
    assert call(api, {**v2("GET", "/search"), "rawQueryString": None, "queryStringParameters": query})[2] == body


def test_every_search_parameter(api, service, data):
    cell = cell_id(data, 222)
    params = {"h3": cell, "k": "5", "radius_km": "20", "min_score": "0.5", "min_separation_km": "3",
              "exclude_within_km": "2", "include_query": "false", "store": "qdrant"}  # fmt: skip
    status, _, body = call(api, v2("GET", "/search", params))
    options = SearchOptions(k=5, radius_km=20, min_score=0.5, min_separation_km=3, exclude_within_km=2)
    expected = service.search(Query(cells=(int(data.h3[222]),)), options, store="qdrant")
    assert status == 200 and body["features"] == json.loads(json.dumps(expected["features"]))
    assert body["store"] == "qdrant" and body["options"]["radius_km"] == 20
    status, _, boxed = call(api, v2("GET", "/search", {"h3": cell, "bbox": "-124,44.5,-123.8,44.7", "k": 50}))
    assert status == 200 and all(-124 <= f["properties"]["lng"] <= -123.8 for f in boxed["features"])
    ring = "-124.1,44.4,-123.6,44.4,-123.6,44.8,-123.85,44.6"
    status, _, shaped = call(api, v2("GET", "/search", {"h3": cell, "polygon": ring, "k": 30}))
    polygon = GeoFilter(polygon=((-124.1, 44.4), (-123.6, 44.4), (-123.6, 44.8), (-123.85, 44.6)))
    lat, lng = (np.array([f["properties"][c] for f in shaped["features"]]) for c in ("lat", "lng"))
    assert status == 200 and shaped["features"] and polygon.contains(lat, lng).all()
    assert shaped["options"]["polygon"] == [list(v) for v in polygon.polygon]
    posted = {"h3": cell, "polygon": [list(v) for v in polygon.polygon], "k": 30}
    assert call(api, v2("POST", "/search", body=json.dumps(posted)))[2]["features"] == shaped["features"]
    status, _, mine = call(api, v2("GET", "/search", {"h3": cell, "include_query": "true", "k": 1}))
    assert mine["features"][0]["id"] == cell
    status, _, both = call(api, v2("GET", "/search", {"h3": f"{cell},{cell_id(data, 5)}"}))
    assert status == 200 and both["query"]["cells"] == [cell, cell_id(data, 5)] and len(both["features"]) == 10


def test_post_search(api, service, data):
    pos, neg = cell_id(data, 50), cell_id(data, 60)
    body = {"positive": [pos], "negative": [neg], "alpha": 0.8, "k": 4, "bbox": [-125, 44, -123, 45]}
    status, headers, answer = call(api, v2("POST", "/search", body=json.dumps(body)))
    assert status == 200 and headers["Cache-Control"] == "no-store"
    expected = service.search(
        Query(cells=(int(data.h3[50]),), negative=(int(data.h3[60]),), alpha=0.8),
        SearchOptions(k=4, bbox=(-125, 44, -123, 45)),
    )
    assert answer == json.loads(json.dumps(expected))
    schema("SearchResult").validate(answer)
    assert call(api, v2("POST", "/search", body=json.dumps(body), b64=True))[2] == answer
    assert call(api, v1("POST", "/search", body=json.dumps(body)))[2] == answer
    vector = [float(v) for v in data.vectors[9]]
    status, _, by_vector = call(api, v2("POST", "/search", body=json.dumps({"vector": vector, "k": 2})))
    assert status == 200 and by_vector["features"][0]["id"] == cell_id(data, 9)
    status, _, by_point = call(api, v2("POST", "/search", body=json.dumps({"lat": CENTRE[0], "lng": CENTRE[1]})))
    assert by_point["query"]["cells"] == [h3i.int_to_str(h3i.latlng_to_cell(*CENTRE, RES))]
    status, _, by_h3 = call(api, v2("POST", "/search", body=json.dumps({"h3": pos, "store": "qdrant", "k": 3})))
    assert status == 200 and by_h3["store"] == "qdrant" and len(by_h3["features"]) == 3


def test_cell_health_openapi_and_preflight(api, data):
    status, headers, cell = call(api, v2("GET", "/cell", {"h3": cell_id(data, 3)}))
    assert status == 200 and headers["Cache-Control"] == "public, max-age=300" and cell["id"] == cell_id(data, 3)
    schema("Cell").validate(cell)
    lat, lng = h3i.cell_to_latlng(int(data.h3[3]))
    assert call(api, v1("GET", "/cell", {"lat": str(lat), "lng": str(lng), "store": "qdrant"}))[2]["id"] == cell["id"]
    status, headers, health = call(api, v2("GET", "/health", {"store": "qdrant"}))
    assert status == 200 and headers["Cache-Control"] == "no-store" and health["count"] == len(data.h3)
    schema("Health").validate(health)
    status, headers, doc = call(api, v2("GET", "/openapi.json"))
    assert status == 200 and doc == OPENAPI
    status, headers, body = call(api, v2("OPTIONS", "/search"))
    assert status == 204 and body is None and headers["Access-Control-Allow-Origin"] == "*"
    assert headers["Access-Control-Allow-Methods"] == "GET, POST, OPTIONS"
    assert headers["Access-Control-Allow-Headers"] == "Content-Type"


def test_openapi_document_is_valid_and_lists_every_route(api):
    validate_openapi(OPENAPI)
    assert {(p, m.upper()) for p, ms in OPENAPI["paths"].items() for m in ms} == {
        (p, m) for p, ms in api._ROUTES.items() for m in ms
    }
    get_params = {p["name"] for p in OPENAPI["paths"]["/search"]["get"]["parameters"]}
    assert get_params == set(api._GET_SEARCH)
    assert set(OPENAPI["components"]["schemas"]["SearchBody"]["properties"]) == set(api._POST_SEARCH)


def test_settings_cors_and_cache(api, data):
    api.configure(cors_allow_origin="https://map.example.org", cache_max_age_s=0)
    try:
        _, headers, _ = call(api, v2("GET", "/cell", {"h3": cell_id(data, 3)}))
        assert headers["Access-Control-Allow-Origin"] == "https://map.example.org"
        assert headers["Cache-Control"] == "no-store"
        _, headers, _ = call(api, v2("GET", "/nowhere"))
        assert headers["Access-Control-Allow-Origin"] == "https://map.example.org"
    finally:
        api._settings.clear()


# ------------------------------------------------------------------------------------------------ errors


def _errors(data):
    cell, sea = cell_id(data, 0), h3i.int_to_str(int(data.missing[0]))
    coarse = h3i.int_to_str(h3i.cell_to_parent(int(data.h3[0]), 5))
    get = lambda path, **q: v2("GET", path, q)  # noqa: E731
    post = lambda body: v2("POST", "/search", body=body if isinstance(body, str) else json.dumps(body))  # noqa: E731
    return [
        (get("/search"), 400, "give exactly one query"),
        (get("/search", lat="abc", lng="1"), 400, r"lat must be a number \(degrees, -90..90\), got 'abc'"),
        (get("/search", lat="nan", lng="1"), 400, "lat must be a finite number"),
        (get("/search", lat="95", lng="1"), 400, "lat must be between -90 and 90 degrees, got 95.0"),
        (get("/search", lat="1", lng="-181"), 400, "lng must be between -180 and 180"),
        (get("/search", lat="1"), 400, "needs both lat and lng"),
        (get("/search", h3=cell, k="0"), 400, "k must be an integer between 1 and 1000, got 0"),
        (get("/search", h3=cell, k="1001"), 400, "k must be an integer between 1 and 1000"),
        (get("/search", h3=cell, k="ten"), 400, "k must be an integer, 1..1000, got 'ten'"),
        (get("/search", h3=cell, k="2.5"), 400, "k must be an integer"),
        (get("/search", h3=cell, radius_km="-3"), 400, "radius_km must be between 0 and"),
        (get("/search", h3=cell, radius_km="x"), 400, r"radius_km must be a number \(km, > 0\)"),
        (get("/search", h3=cell, bbox="1,2,3"), 400, "bbox must be west,south,east,north"),
        (get("/search", h3=cell, bbox="a,b,c,d"), 400, "bbox must be a number"),
        (get("/search", h3=cell, bbox="0,50,1,40"), 400, "south <= north"),
        (get("/search", h3=cell, bbox="0,0,1,1", radius_km="5"), 400, "give one of radius_km, bbox and polygon"),
        (get("/search", h3=cell, polygon="0,0,1,0,1"), 400, "odd count of numbers"),
        (get("/search", h3=cell, polygon="0,0,1,x,1,1"), 400, "polygon must be a number"),
        (get("/search", h3=cell, polygon="0,0,1,0"), 400, "polygon needs 3 to 500 vertices"),
        (get("/search", h3=cell, polygon="170,0,-170,0,-170,5"), 400, "more than 180 degrees of longitude"),
        (post({"h3": cell, "polygon": [[0, 0], [1, 0, 2], [1, 1]]}), 400, "polygon must be lng,lat"),
        (post({"h3": cell, "polygon": [[0, 0], [1, "a"], [1, 1]]}), 400, "polygon must be a number"),
        (get("/search", h3=cell, min_score="2"), 400, "min_score must be between -1 and 1"),
        (get("/search", h3=cell, min_separation_km="-1"), 400, "min_separation_km must be between 0"),
        (get("/search", h3=cell, exclude_within_km="far"), 400, "exclude_within_km must be a number"),
        (get("/search", h3=cell, include_query="maybe"), 400, "include_query must be true or false"),
        (get("/search", h3=cell, store="milvus"), 400, "unknown store 'milvus'; use one of faiss, qdrant"),
        (get("/search", h3=cell, store="pgvector"), 400, "store 'pgvector' is not served here; use one of faiss"),
        (get("/search", h3="zz"), 400, "h3 must be an H3 cell id string like '8728f5990ffffff', got 'zz'"),
        (get("/search", h3=coarse), 400, "is at resolution 5; this index holds resolution-7 cells"),
        (get("/search", h3=cell, lon="1"), 400, r"unknown parameter 'lon' \(longitude is 'lng'\)"),
        (v2("GET", "/search", f"h3={cell}&k=1&k=2"), 400, "k is given 2 times; give it once"),
        (get("/search", h3=sea), 404, f"H3 cell {sea} is not in the index"),
        (get("/search", lat="0", lng="0"), 404, r"the point 0.0, 0.0 \(cell 87754e64dffffff\) is not in the index"),
        (get("/cell"), 400, "GET /cell needs h3=<H3 cell id>, or lat and lng"),
        (get("/cell", h3=cell, lat="1"), 400, "give h3, or lat and lng, not both"),
        (get("/cell", h3=sea), 404, "is not in the index"),
        (get("/cell", h3=cell, k="3"), 400, "unknown parameter 'k' for GET /cell; allowed: h3, lat, lng, store"),
        (get("/health", store="nope"), 400, "unknown store 'nope'"),
        (get("/openapi.json", x="1"), 400, "unknown parameter 'x'"),
        (get("/nowhere"), 404, "no route '/nowhere'; routes: GET /search, POST /search, GET /cell"),
        (v2("DELETE", "/search"), 405, "method DELETE is not allowed on /search; use GET, POST"),
        (v2("POST", "/cell"), 405, "method POST is not allowed on /cell; use GET"),
        (post("{not json"), 400, "the body must be a JSON object"),
        (post("[1, 2]"), 400, "the body must be a JSON object, got list"),
        (post(""), 400, "the body must be a JSON object"),
        (post('{"lat": NaN, "lng": 1}'), 400, "NaN is not a JSON number"),
        (post({"h3": cell, "colour": "red"}), 400, r"unknown field\(s\) \['colour'\] in the body"),
        (post({"h3": cell, "positive": [cell]}), 400, "give h3 or positive, not both"),
        (post({"positive": cell + "x"}), 400, "positive must be an H3 cell id string"),
        (post({"positive": [1, 2]}), 400, "positive must be a list of H3 cell id strings"),
        (post({"negative": [cell]}), 400, "give exactly one query"),
        (post({"vector": [1.0, 2.0]}), 400, "vector must hold 8 numbers"),
        (post({"vector": [0.0] * 8}), 400, "vector is all zeros"),
        (post({"vector": ["a"] * 8}), 400, "every vector element must be a number"),
        (post({"vector": "1,2"}), 400, "vector must be a JSON array of numbers"),
        (post({"vector": [1.0] * 8, "radius_km": 5}), 400, "radius_km needs a place"),
        (post({"h3": cell, "k": "5"}), 400, "k must be an integer between 1 and 1000, got '5'"),
        (post({"h3": cell, "min_score": "0.5"}), 400, "min_score must be a number .*, got '0.5'"),
        (post({"h3": cell, "k": 5.5}), 400, "k must be an integer between 1 and 1000, got 5.5"),
        (post({"h3": cell, "include_query": 3}), 400, "include_query must be true or false, got 3"),
        (post({"h3": cell, "store": 3}), 400, "store must be a string"),
        (post({"h3": cell, "alpha": 3}), 400, "alpha must be between 0 and 1"),
        (post({"h3": cell, "bbox": [1, 2]}), 400, "bbox must be west,south,east,north"),
        (post({"h3": [cell] * 101}), 400, "at most 100 cells per query"),
        (post({"h3": cell, "radius_km": True}), 400, "radius_km must be a number"),
        (post('{"lat": 1e400, "lng": 1}'), 400, "lat must be a finite number"),
        (post('{"lat": ' + "9" * 400 + ', "lng": 1}'), 400, "lat must be a finite number"),
        (post('{"vector": [' + ",".join(["9" * 400] * 8) + "]}"), 400, "vector"),
        (post('{"h3": "' + cell + '", "radius_km": ' + "1" * 320 + "}"), 400, "radius_km must be a finite number"),
        (get("/search", lat="1_0", lng="1"), 400, "lat must be a number"),
        (post({"lat": float("inf"), "lng": 1}), 400, "Infinity is not a JSON number"),
        (post({"positive": [cell], "negative": [cell], "alpha": 1}), 400, "the query cells cancel out"),
        (post({"h3": [sea]}), 404, "is not in the index"),
        (post("9" * 5000), 400, "the body must be a JSON object"),
        (post(" " * (300 * 1024)), 413, "at most 262144"),
        ({**v2("POST", "/search"), "body": "%%%", "isBase64Encoded": True}, 400, "malformed HTTP event"),
        (
            {**v2("POST", "/search"), "body": base64.b64encode(b"\xff\xfe").decode(), "isBase64Encoded": True},
            400,
            "the body must be a JSON object",
        ),
        (v2("POST", "/search", {"k": "3"}, body="{}"), 400, "takes its parameters in the JSON body"),
        ({"hello": "world"}, 400, "not an HTTP event"),
        ({"requestContext": {"http": {"path": "/search"}}}, 400, "malformed HTTP event"),
        (v1("GET", "/search", {"h3": cell}, multi={"h3": [cell, cell]}), 400, "h3 is given 2 times"),
    ]


def test_every_bad_input_gets_a_clear_4xx(api, data):
    for event, status, message in _errors(data):
        got, headers, body = call(api, event)
        assert (got, set(body)) == (status, {"error"}), (message, body)
        assert re.search(message, body["error"]), (message, body["error"])
        assert headers["Cache-Control"] == "no-store" and headers["Access-Control-Allow-Origin"] == "*"
        assert headers["Content-Type"] == "application/json"
        schema("Error").validate(body)
    _, headers, _ = call(api, v2("PUT", "/health"))
    assert headers["Allow"] == "GET"


def test_unreachable_store_is_503_and_surprises_are_500(api, service, data, monkeypatch, caplog):
    def refuses():
        raise StoreUnavailableError("cannot reach Qdrant at http://10.1.2.3:6333")

    api.configure(SearchService({"qdrant": refuses}, model="m", h3_resolution=RES))
    try:
        status, headers, body = call(api, v2("GET", "/search", {"h3": cell_id(data, 0)}))
        assert status == 503 and body == {"error": "store 'qdrant' cannot be reached now; try again later"}
        status, _, health = call(api, v2("GET", "/health"))
        assert status == 503 and health["reachable"] is False and headers["Cache-Control"] == "no-store"
        schema("Health").validate(health)
    finally:
        api.configure(service)

    def broken(*args, **kwargs):
        raise RuntimeError("secret detail /var/task/x.py")

    monkeypatch.setattr(service, "search", broken)
    with caplog.at_level(logging.ERROR, logger="vectorgeo.lambda"):
        status, _, body = call(api, v2("GET", "/search", {"h3": cell_id(data, 0)}))
    assert status == 500 and body == {"error": "internal error"}
    assert "secret detail" in caplog.text and "GET /search" in caplog.text


def test_the_service_is_built_once_from_settings(api, service, data, tmp_path, monkeypatch):
    settings_ = {"BUCKET": str(data.bucket.url), "CACHE_DIR": str(tmp_path / "{step}"), "MODEL_FILENAME": "m.keras",
                 "H3_RESOLUTION": RES, "SEARCH_STORES": "faiss", "DATA_DIR": str(tmp_path / "stores")}  # fmt: skip
    for name, value in settings_.items():
        monkeypatch.setattr(api.constants, name, value)
    api.reset_service()
    try:
        status, _, health = call(api, v2("GET", "/health"))
        assert status == 200 and health["count"] == len(data.h3) and health["calibration"] is True
        built = api.get_service()
        assert call(api, v2("GET", "/search", {"h3": cell_id(data, 1)}))[0] == 200 and api.get_service() is built
        assert (tmp_path / "search").is_dir()  # "{step}" in the cache dir names the service's cache
        api.reset_service()
        monkeypatch.setattr(api.constants, "SEARCH_STORES", "milvus")
        status, _, body = call(api, v2("GET", "/health"))
        assert status == 503 and body == {"error": "the search service is not ready (see the server log); try later"}
    finally:
        api.reset_service()
        api.configure(service)


# ------------------------------------------------------------------------------------------------ fuzzing


def _fuzz_values(data):
    cells = [cell_id(data, 0), cell_id(data, 100), h3i.int_to_str(int(data.missing[0])), "8528f5dbfffffff"]
    words = ["", " ", "nan", "inf", "-inf", "1e309", "0", "-0", "1", "-1", "10", "1001", "0.5", "44.6", "-123.9",
             "90", "-90.0001", "true", "false", "yes", "faiss", "qdrant", "pgvector", "milvus", "1_0", " 5 ",
             "-124,44.5,-123.8,44.7", "1,2,3", "a,b,c,d", "180,-90,-180,90", "%", "\x00", "é"]  # fmt: skip
    return st.one_of(
        st.sampled_from(words + cells + [",".join(cells[:2])]),
        st.floats().map(str),
        st.integers(-(10**6), 10**6).map(str),
        st.text(max_size=12),
    ), cells


def _json_values(cells):
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-2000, 2000),
        st.integers(),
        st.integers(10**300, 10**400),
        st.floats(),
        st.text(max_size=8),
        st.sampled_from(cells),
    )
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=9) | st.dictionaries(st.text(max_size=4),
                                                                                              inner, max_size=3),
                        max_leaves=12)  # fmt: skip


def _plausible(data) -> dict:
    """Values a client would send, per parameter: most fuzzed requests should get past the checks."""
    cells = st.sampled_from([cell_id(data, i) for i in (0, 50, 100, 300)])
    west, south = st.floats(-124.3, -123.6), st.floats(44.2, 44.9)
    return {
        "lat": st.floats(44.4, 44.8), "lng": st.floats(-124.1, -123.7), "h3": cells, "positive": st.lists(cells,
        min_size=1, max_size=3), "negative": st.lists(cells, max_size=2), "k": st.integers(1, 60),
        "radius_km": st.floats(0.5, 60), "min_score": st.floats(-1, 1), "min_separation_km": st.floats(0, 8),
        "exclude_within_km": st.floats(0, 8), "include_query": st.booleans(), "store": st.sampled_from(["faiss",
        "qdrant"]), "alpha": st.floats(0, 1), "bbox": st.tuples(west, south).map(lambda ws: [ws[0], ws[1],
        ws[0] + 0.4, ws[1] + 0.3]), "vector": st.lists(st.floats(-1, 1), min_size=8, max_size=8),
    }  # fmt: skip


def _as_text(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


@st.composite
def _events(draw, data):
    """A GET or POST to a route (or not), in either event format, with plausible or hostile parameters."""
    values, cells = _fuzz_values(data)
    plausible = _plausible(data)
    route = draw(st.sampled_from(["/search", "/search", "/search", "/cell", "/health", "/openapi.json", "/x"]))
    others = ["POST", "POST"] if route == "/search" else ["POST"]
    method = draw(st.sampled_from(["GET"] * 4 + others + ["OPTIONS", "DELETE"]))
    names = [p["name"] for p in OPENAPI["paths"].get(route, {}).get("get", {}).get("parameters", [])]
    forms = [(), ("h3",), ("lat", "lng"), ("positive", "negative"), ("vector",)]
    form = draw(st.sampled_from(forms))
    query = {name: _as_text(draw(plausible[name])) for name in form if name in names}
    for name in draw(st.lists(st.sampled_from([*names, "lon"]), max_size=4, unique=True)) if names else []:
        good = plausible[name].map(_as_text) if name in plausible else values
        query[name] = draw(st.one_of(good, good, good, values))
    body = None
    if method == "POST":
        fields = list(OPENAPI["components"]["schemas"]["SearchBody"]["properties"])
        obj = {name: draw(plausible[name]) for name in form}
        for name in draw(st.lists(st.sampled_from([*fields, "extra"]), max_size=4, unique=True)):
            good = plausible.get(name, _json_values(cells))
            obj[name] = draw(st.one_of(good, good, good, _json_values(cells)))
        body = draw(st.sampled_from([json.dumps(obj)] * 4 + [json.dumps(obj)[:-1], "null"]) | st.text(max_size=20))
        query = draw(st.sampled_from([{}, {}, {}, query]))
    if draw(st.booleans()):
        return v2(method, route, query, body, b64=body is not None and draw(st.booleans()))
    return v1(method, route, query or None, body)


def test_no_input_gets_a_5xx(api, data):
    validators = {name: schema(name) for name in ("SearchResult", "Cell", "Health", "Error")}
    seen = set()

    @settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(event=_events(data))
    def run(event):
        status, headers, body = call(api, event)
        assert status < 500, (event, body)
        assert headers["Access-Control-Allow-Origin"] == "*"
        seen.add(status)
        if status >= 400:
            validators["Error"].validate(body)
        elif status == 200 and isinstance(body, dict) and body.get("type") == "FeatureCollection":
            validators["SearchResult"].validate(body)
        elif status == 200 and isinstance(body, dict) and body.get("type") == "Feature":
            validators["Cell"].validate(body)

    run()
    assert {200, 400, 404} <= seen


# ------------------------------------------------------------------------------------------------ deployment


def test_build_script_makes_a_zip_without_the_model_frameworks(tmp_path):
    out = tmp_path / "fn.zip"
    done = subprocess.run(
        ["bash", str(REPO_ROOT / "lambda" / "build.sh"), "--no-deps", "--out", str(out)],
        env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    names = set(zipfile.ZipFile(out).namelist())
    assert {"handler.py", "openapi.json", "constants.py", "vectorgeo/search.py", "vectorgeo/stores/faiss.py"} <= names
    assert not [n for n in names if n.split("/")[0] in ("tensorflow", "keras", "jax", "jaxlib") or "__pycache__" in n]
    bad = subprocess.run(["bash", str(REPO_ROOT / "lambda" / "build.sh"), "--zip"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown option '--zip'" in bad.stderr


def test_the_lambda_pins_are_the_projects_and_hold_no_model_framework():
    def pins(path):
        lines = [ln.split("#")[0].strip() for ln in path.read_text().splitlines()]
        return dict(re.sub(r"\[.*\]", "", ln).lower().split("==") for ln in lines if "==" in ln)

    lambda_pins, project_pins = pins(REPO_ROOT / "lambda" / "requirements.txt"), pins(REPO_ROOT / "requirements.txt")
    assert lambda_pins and not set(lambda_pins) & {"tensorflow", "tf-keras", "keras", "jax", "jaxlib", "torch"}
    assert {name: project_pins.get(name) for name in lambda_pins} == lambda_pins  # the versions the tests ran


def test_the_handler_never_loads_the_model_frameworks(data, tmp_path):
    """Outside the repo, with nothing on sys.path: the handler finds vectorgeo itself and answers a search."""
    script = f"""
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("handler", {str(HANDLER)!r})
handler = importlib.util.module_from_spec(spec)
spec.loader.exec_module(handler)
event = {{"version": "2.0", "rawPath": "/search", "rawQueryString": "h3={cell_id(data, 4)}",
         "requestContext": {{"http": {{"method": "GET", "path": "/search"}}}}}}
status = handler.handler(event, None)["statusCode"]
heavy = sorted(m for m in ("tensorflow", "keras", "jax", "torch", "pyarrow", "rasterio", "vectorgeo.model")
               if m in sys.modules)
print(json.dumps({{"status": status, "heavy": heavy}}))
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("VG_")}
    env.update(VG_BUCKET=str(data.bucket.url), VG_CACHE_DIR=str(tmp_path / "cache"), VG_MODEL="m.keras",
               VG_H3_RESOLUTION=str(RES), VG_SEARCH_STORES="faiss", VG_DATA_DIR=str(tmp_path / "stores"))  # fmt: skip
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"status": 200, "heavy": []}
