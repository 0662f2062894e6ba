"""The search HTTP API (vectorgeo.api) on a real search service: routes, answers, every bad input, fuzzing."""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import threading
import time
from typing import ClassVar
from urllib.parse import urlencode

import h3.api.basic_int as h3i
import numpy as np
import pytest
from api_fuzz import DEEP_BODIES, FUZZ_EXAMPLES, check_answer, json_values, load_example, requests, schema, validators
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate as validate_openapi
from search_data import CENTRE, RES, build_search_bucket, open_test_service, service_settings_for

from vectorgeo import api_params
from vectorgeo.api import MAX_BODY_BYTES, MAX_JSON_DEPTH, OPENAPI_PATH, ROUTES, ApiRequest, SearchAPI
from vectorgeo.errors import BucketAccessError, StoreUnavailableError
from vectorgeo.search import Query, SearchOptions, SearchService
from vectorgeo.service_settings import ServiceSettings
from vectorgeo.stores import GeoFilter

OPENAPI = json.loads(OPENAPI_PATH.read_text())
KINDS = ("faiss", "qdrant")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return build_search_bucket(tmp_path_factory.mktemp("api"), kinds=KINDS)


@pytest.fixture(scope="module")
def service(data):
    service = open_test_service(data, KINDS)
    yield service
    service.close()


@pytest.fixture(scope="module")
def service_settings(data, tmp_path_factory) -> ServiceSettings:
    return service_settings_for(data, tmp_path_factory.mktemp("cache"), KINDS)


@pytest.fixture(scope="module")
def api(service_settings, service) -> SearchAPI:
    return SearchAPI(service_settings, service)  # the service fixture closes the service


def get(path: str, query: dict | str | None = None) -> ApiRequest:
    return ApiRequest("GET", path, query if isinstance(query, str) else urlencode(query or {}))


def post(body: object, query: str = "") -> ApiRequest:
    raw = body if isinstance(body, bytes) else body.encode() if isinstance(body, str) else json.dumps(body).encode()
    return ApiRequest("POST", "/search", query, body=raw, headers={"content-type": "application/json"})


def post_classify(body: object, query: str = "") -> ApiRequest:
    raw = body if isinstance(body, bytes) else body.encode() if isinstance(body, str) else json.dumps(body).encode()
    return ApiRequest("POST", "/classify", query, body=raw, headers={"content-type": "application/json"})


def call(api: SearchAPI, request: ApiRequest) -> tuple[int, dict, object]:
    response = api.handle(request)
    assert isinstance(response.body, bytes) and isinstance(response.headers, dict)
    return response.status, response.headers, response.json()


def cell_id(data, row: int) -> str:
    return h3i.int_to_str(int(data.h3[row]))


# ------------------------------------------------------------------------------------------------ routes


def test_get_search_from_a_query_string_or_parsed_params(api, service):
    query = {"lat": CENTRE[0], "lng": CENTRE[1], "k": 7}
    status, headers, body = call(api, get("/search", query))
    assert status == 200 and headers["Content-Type"] == "application/geo+json"
    assert headers["Access-Control-Allow-Origin"] == "*" and headers["Cache-Control"] == "public, max-age=300"
    assert body == json.loads(json.dumps(service.search(Query(lat=CENTRE[0], lng=CENTRE[1]), SearchOptions(k=7))))
    schema("SearchResult").validate(body)
    params = {k: [str(v)] for k, v in query.items()}
    assert call(api, ApiRequest("GET", "/search/", "ignored=1", params=params))[2] == body  # params win
    assert call(api, ApiRequest("get", "search", urlencode(query)))[2] == body


def test_every_search_parameter(api, service, data):
    cell = cell_id(data, 222)
    params = {"h3": cell, "k": "5", "radius_km": "20", "min_score": "0.5", "min_separation_km": "3",
              "exclude_within_km": "2", "include_query": "false", "store": "qdrant"}  # fmt: skip
    status, _, body = call(api, get("/search", params))
    options = SearchOptions(k=5, radius_km=20, min_score=0.5, min_separation_km=3, exclude_within_km=2)
    expected = service.search(Query(cells=(int(data.h3[222]),)), options, store="qdrant")
    assert status == 200 and body["features"] == json.loads(json.dumps(expected["features"]))
    assert body["store"] == "qdrant" and body["options"]["radius_km"] == 20
    status, _, boxed = call(api, get("/search", {"h3": cell, "bbox": "-124,44.5,-123.8,44.7", "k": 50}))
    assert status == 200 and all(-124 <= f["properties"]["lng"] <= -123.8 for f in boxed["features"])
    ring = "-124.1,44.4,-123.6,44.4,-123.6,44.8,-123.85,44.6"
    status, _, shaped = call(api, get("/search", {"h3": cell, "polygon": ring, "k": 30}))
    polygon = GeoFilter(polygon=((-124.1, 44.4), (-123.6, 44.4), (-123.6, 44.8), (-123.85, 44.6)))
    lat, lng = (np.array([f["properties"][c] for f in shaped["features"]]) for c in ("lat", "lng"))
    assert status == 200 and shaped["features"] and polygon.contains(lat, lng).all()
    assert shaped["options"]["polygon"] == [list(v) for v in polygon.polygon]
    posted = {"h3": cell, "polygon": [list(v) for v in polygon.polygon], "k": 30}
    assert call(api, post(posted))[2]["features"] == shaped["features"]
    status, _, mine = call(api, get("/search", {"h3": cell, "include_query": "true", "k": 1}))
    assert mine["features"][0]["id"] == cell
    status, _, both = call(api, get("/search", {"h3": f"{cell},{cell_id(data, 5)}"}))
    assert status == 200 and both["query"]["cells"] == [cell, cell_id(data, 5)] and len(both["features"]) == 10


def test_post_search(api, service, data):
    pos, neg = cell_id(data, 50), cell_id(data, 60)
    body = {"positive": [pos], "negative": [neg], "alpha": 0.8, "k": 4, "bbox": [-125, 44, -123, 45]}
    status, headers, answer = call(api, post(body))
    assert status == 200 and headers["Cache-Control"] == "no-store"
    expected = service.search(
        Query(cells=(int(data.h3[50]),), negative=(int(data.h3[60]),), alpha=0.8),
        SearchOptions(k=4, bbox=(-125, 44, -123, 45)),
    )
    assert answer == json.loads(json.dumps(expected))
    schema("SearchResult").validate(answer)
    vector = [float(v) for v in data.vectors[9]]
    status, _, by_vector = call(api, post({"vector": vector, "k": 2}))
    assert status == 200 and by_vector["features"][0]["id"] == cell_id(data, 9)
    status, _, by_point = call(api, post({"lat": CENTRE[0], "lng": CENTRE[1]}))
    assert by_point["query"]["cells"] == [h3i.int_to_str(h3i.latlng_to_cell(*CENTRE, RES))]
    status, _, by_h3 = call(api, post({"h3": pos, "store": "qdrant", "k": 3}))
    assert status == 200 and by_h3["store"] == "qdrant" and len(by_h3["features"]) == 3


def test_cell_health_openapi_and_preflight(api, data):
    status, headers, cell = call(api, get("/cell", {"h3": cell_id(data, 3)}))
    assert status == 200 and headers["Cache-Control"] == "public, max-age=300" and cell["id"] == cell_id(data, 3)
    schema("Cell").validate(cell)
    lat, lng = h3i.cell_to_latlng(int(data.h3[3]))
    assert call(api, get("/cell", {"lat": lat, "lng": lng, "store": "qdrant"}))[2]["id"] == cell["id"]
    status, headers, health = call(api, get("/health", {"store": "qdrant"}))
    assert status == 200 and headers["Cache-Control"] == "no-store" and health["count"] == len(data.h3)
    schema("Health").validate(health)
    status, headers, doc = call(api, get("/openapi.json"))
    assert status == 200 and doc == OPENAPI and headers["Content-Type"] == "application/json"
    response = api.handle(ApiRequest("OPTIONS", "/search"))
    assert response.status == 204 and response.body == b"" and "Content-Type" not in response.headers
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert response.headers["Access-Control-Allow-Methods"] == "GET, POST, OPTIONS"
    assert response.headers["Access-Control-Allow-Headers"] == "Content-Type"


BOX = [-124.05, 44.5, -123.75, 44.7]  # about half of the test index


def _labels(data, n: int = 4) -> dict[str, str]:
    """``n`` cells of each of the two commonest dominant land-cover classes, labelled with its name."""
    dominant = data.fractions.argmax(axis=1)
    first, second = np.argsort(-np.bincount(dominant))[:2]
    return {cell_id(data, int(row)): data.legend.names[code] for code in (first, second)
            for row in np.flatnonzero(dominant == code)[:n]}  # fmt: skip


def test_post_classify(api, service, data):
    labels = _labels(data)
    status, headers, answer = call(api, post_classify({"labels": labels, "bbox": BOX}))
    assert status == 200 and headers["Cache-Control"] == "no-store"
    assert headers["Content-Type"] == "application/geo+json"
    schema("ClassifyResult").validate(answer)
    region = GeoFilter(bbox=tuple(BOX))
    inside = data.h3[region.contains(data.lat, data.lng)]
    assert [f["id"] for f in answer["features"]] == [h3i.int_to_str(int(c)) for c in np.sort(inside)]
    assert answer["n_cells"] == len(inside) < answer["n_candidates"]  # the sea cells are not in the index
    assert [c["name"] for c in answer["classes"]] == list(dict.fromkeys(labels.values()))
    assert sum(c["n_cells"] for c in answer["classes"]) == answer["n_cells"]
    assert (answer["store"], answer["model"], answer["resolution"], answer["classifier"]) == ("faiss", "m", RES,
                                                                                              "logistic")  # fmt: skip
    assert answer["training"]["n_labels"] == len(labels) and answer["training"]["accuracy_on_labels"] >= 0.75
    cells = {h3i.str_to_int(k): v for k, v in labels.items()}
    expected = service.classify(cells, region, store="faiss")
    assert answer == json.loads(json.dumps(expected))
    on_qdrant = call(api, post_classify({"labels": labels, "bbox": BOX, "store": "qdrant"}))[2]
    assert on_qdrant["store"] == "qdrant" and on_qdrant["classes"] == answer["classes"]
    for mine, theirs in zip(answer["features"], on_qdrant["features"], strict=True):
        assert mine["id"] == theirs["id"] and mine["properties"]["class"] == theirs["properties"]["class"]
        assert mine["properties"]["probability"] == pytest.approx(theirs["properties"]["probability"], abs=2e-4)


def test_post_classify_positive_cells_regions_and_options(api, data):
    positive = [cell_id(data, i) for i in (10, 11, 12)]
    body = {"positive": positive, "lat": CENTRE[0], "lng": CENTRE[1], "radius_km": 12, "classifier": "knn"}
    status, _, answer = call(api, post_classify(body))
    assert status == 200 and answer["classifier"] == "knn"
    schema("ClassifyResult").validate(answer)
    assert [c["name"] for c in answer["classes"]] == ["positive", "negative"]
    assert answer["training"]["n_background"] == 15 and answer["region"]["radius_km"] == 12
    for feature in answer["features"]:
        props = feature["properties"]
        assert props["probability"] == props["probabilities"]["positive"]
    labelled = {f["id"]: f["properties"]["labelled"] for f in answer["features"] if "labelled" in f["properties"]}
    assert labelled == {c: "positive" for c in positive if c in {f["id"] for f in answer["features"]}}
    polygon = [[-124.1, 44.4], [-123.6, 44.4], [-123.6, 44.8], [-123.85, 44.6]]
    body = {"positive": positive, "negative": [cell_id(data, 300)], "classifier": "random_forest", "geometry": False,
            "polygon": polygon, "store": "qdrant"}  # fmt: skip
    status, _, answer = call(api, post_classify(body))
    assert status == 200 and answer["training"]["n_background"] == 0 and answer["features"]
    assert all(f["geometry"] is None for f in answer["features"])
    schema("ClassifyResult").validate(answer)
    response = api.handle(ApiRequest("OPTIONS", "/classify"))
    assert response.status == 204 and response.headers["Access-Control-Allow-Methods"] == "POST, OPTIONS"


def test_post_classify_without_scikit_learn_is_a_501(api, data, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sklearn" else real(name, *a))
    status, _, body = call(api, post_classify({"labels": {cell_id(data, 0): "a", cell_id(data, 1): "b"}, "bbox": BOX}))
    assert status == 501 and body == {"error": "POST /classify needs scikit-learn, which this deployment leaves out; "
                                               "the other routes work"}  # fmt: skip
    assert call(api, post_classify({"labels": [], "bbox": BOX}))[0] == 400  # bad bodies are still told so
    assert call(api, get("/cell", {"h3": cell_id(data, 3)}))[0] == 200


def test_openapi_document_is_valid_and_lists_every_route():
    validate_openapi(OPENAPI)
    documented = {(p, m.upper()) for p, ms in OPENAPI["paths"].items() for m in ms}
    assert documented == {(p, m) for p, ms in ROUTES.items() for m in ms}
    assert {p["name"] for p in OPENAPI["paths"]["/search"]["get"]["parameters"]} == set(api_params.GET_SEARCH)
    assert {p["name"] for p in OPENAPI["paths"]["/cell"]["get"]["parameters"]} == set(api_params.GET_CELL)
    assert set(OPENAPI["components"]["schemas"]["SearchBody"]["properties"]) == set(api_params.POST_SEARCH)
    assert set(OPENAPI["components"]["schemas"]["ClassifyBody"]["properties"]) == set(api_params.POST_CLASSIFY)


def test_settings_set_cors_and_cache(service_settings, service, data):
    api = SearchAPI(service_settings.replace(cors_allow_origin="https://map.example.org", cache_max_age_s=0), service)
    _, headers, _ = call(api, get("/cell", {"h3": cell_id(data, 3)}))
    assert headers["Access-Control-Allow-Origin"] == "https://map.example.org"
    assert headers["Cache-Control"] == "no-store"
    _, headers, _ = call(api, get("/nowhere"))
    assert headers["Access-Control-Allow-Origin"] == "https://map.example.org"
    _, headers, _ = call(SearchAPI(service_settings.replace(cache_max_age_s=60), service), get("/openapi.json"))
    assert headers["Cache-Control"] == "public, max-age=60"


# ------------------------------------------------------------------------------------------------ errors


def _errors(data):
    cell, sea = cell_id(data, 0), h3i.int_to_str(int(data.missing[0]))
    coarse = h3i.int_to_str(h3i.cell_to_parent(int(data.h3[0]), 5))
    deep = 1
    for _ in range(MAX_JSON_DEPTH):
        deep = [deep]  # in the body object: 33 deep

    def g(path, **q):
        return get(path, q)

    return [
        (g("/search"), 400, "give exactly one query"),
        (g("/search", lat="abc", lng="1"), 400, r"lat must be a number \(degrees, -90..90\), got 'abc'"),
        (g("/search", lat="nan", lng="1"), 400, "lat must be a finite number"),
        (g("/search", lat="95", lng="1"), 400, "lat must be between -90 and 90 degrees, got 95.0"),
        (g("/search", lat="1", lng="-181"), 400, "lng must be between -180 and 180"),
        (g("/search", lat="1"), 400, "needs both lat and lng"),
        (g("/search", h3=cell, k="0"), 400, "k must be an integer between 1 and 1000, got 0"),
        (g("/search", h3=cell, k="1001"), 400, "k must be an integer between 1 and 1000"),
        (g("/search", h3=cell, k="ten"), 400, "k must be an integer, 1..1000, got 'ten'"),
        (g("/search", h3=cell, k="2.5"), 400, "k must be an integer"),
        (g("/search", h3=cell, radius_km="-3"), 400, "radius_km must be between 0 and"),
        (g("/search", h3=cell, radius_km="x"), 400, r"radius_km must be a number \(km, > 0\)"),
        (g("/search", h3=cell, bbox="1,2,3"), 400, "bbox must be west,south,east,north"),
        (g("/search", h3=cell, bbox="a,b,c,d"), 400, "bbox must be a number"),
        (g("/search", h3=cell, bbox="0,50,1,40"), 400, "south <= north"),
        (g("/search", h3=cell, bbox="0,0,1,1", radius_km="5"), 400, "give one of radius_km, bbox and polygon"),
        (g("/search", h3=cell, polygon="0,0,1,0,1"), 400, "odd count of numbers"),
        (g("/search", h3=cell, polygon="0,0,1,x,1,1"), 400, "polygon must be a number"),
        (g("/search", h3=cell, polygon="0,0,1,0"), 400, "polygon needs 3 to 500 vertices"),
        (g("/search", h3=cell, polygon="170,0,-170,0,-170,5"), 400, "more than 180 degrees of longitude"),
        (post({"h3": cell, "polygon": [[0, 0], [1, 0, 2], [1, 1]]}), 400, "polygon must be lng,lat"),
        (post({"h3": cell, "polygon": [[0, 0], [1, "a"], [1, 1]]}), 400, "polygon must be a number"),
        (g("/search", h3=cell, min_score="2"), 400, "min_score must be between -1 and 1"),
        (g("/search", h3=cell, min_separation_km="-1"), 400, "min_separation_km must be between 0"),
        (g("/search", h3=cell, exclude_within_km="far"), 400, "exclude_within_km must be a number"),
        (g("/search", h3=cell, include_query="maybe"), 400, "include_query must be true or false"),
        (g("/search", h3=cell, store="milvus"), 400, "unknown store 'milvus'; use one of faiss, qdrant"),
        (g("/search", h3=cell, store="pgvector"), 400, "store 'pgvector' is not served here; use one of faiss"),
        (g("/search", h3="zz"), 400, "h3 must be an H3 cell id string like '8728f5990ffffff', got 'zz'"),
        (g("/search", h3=coarse), 400, "is at resolution 5; this index holds resolution-7 cells"),
        (g("/search", h3=cell, lon="1"), 400, r"unknown parameter 'lon' \(longitude is 'lng'\)"),
        (get("/search", f"h3={cell}&k=1&k=2"), 400, "k is given 2 times; give it once"),
        (ApiRequest("GET", "/search", params={"h3": [cell, cell]}), 400, "h3 is given 2 times"),
        (get("/search", "&".join(f"x{i}=1" for i in range(65))), 400, r"too many query parameters \(at most 64\)"),
        (ApiRequest("GET", "/search", params={f"x{i}": ["1"] for i in range(65)}), 400, "too many query parameters"),
        (g("/search", h3=sea), 404, f"H3 cell {sea} is not in the index"),
        (g("/search", lat="0", lng="0"), 404, r"the point 0.0, 0.0 \(cell 87754e64dffffff\) is not in the index"),
        (g("/cell"), 400, "GET /cell needs h3=<H3 cell id>, or lat and lng"),
        (g("/cell", h3=cell, lat="1"), 400, "give h3, or lat and lng, not both"),
        (g("/cell", h3=sea), 404, "is not in the index"),
        (g("/cell", h3=cell, k="3"), 400, "unknown parameter 'k' for GET /cell; allowed: h3, lat, lng, store"),
        (g("/health", store="nope"), 400, "unknown store 'nope'"),
        (g("/openapi.json", x="1"), 400, "unknown parameter 'x'"),
        (g("/nowhere"), 404, "no route '/nowhere'; routes: GET /search, POST /search, GET /cell"),
        (ApiRequest("DELETE", "/search"), 405, "method DELETE is not allowed on /search; use GET, POST"),
        (ApiRequest("POST", "/cell"), 405, "method POST is not allowed on /cell; use GET"),
        (ApiRequest("HEAD", "/health"), 405, "method HEAD is not allowed on /health; use GET"),
        (ApiRequest("GET\r\nX: 1", "/health"), 405, r"method 'GET\\r\\nX: 1' is not allowed on /health"),
        (ApiRequest("", "/cell"), 405, "method '' is not allowed on /cell"),
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
        (post({"h3": [cell] * 101}), 400, "at most 100 cells per query, got 101"),
        (post({"h3": [cell], "negative": [cell] * 5000}), 400, "at most 100 negative cells per query, got 5000"),
        (post({"h3": cell, "radius_km": True}), 400, "radius_km must be a number"),
        (post('{"lat": 1e400, "lng": 1}'), 400, "lat must be a finite number"),
        (post('{"lat": ' + "9" * 400 + ', "lng": 1}'), 400, "lat must be a finite number"),
        (post('{"lat": ' + "9" * 5000 + ', "lng": 1}'), 400, "lat must be a finite number"),
        (post('{"vector": [' + ",".join(["9" * 400] * 8) + "]}"), 400, "vector"),
        (post('{"h3": "' + cell + '", "radius_km": ' + "1" * 320 + "}"), 400, "radius_km must be a finite number"),
        (post('{"h3": "' + cell + '", "k": 1' + "0" * 30 + "}"), 400, "k must be an integer between 1 and 1000"),
        (g("/search", lat="1_0", lng="1"), 400, "lat must be a number"),
        (post({"lat": float("inf"), "lng": 1}), 400, "Infinity is not a JSON number"),
        (post({"positive": [cell], "negative": [cell], "alpha": 1}), 400, "the query cells cancel out"),
        (post({"h3": [sea]}), 404, "is not in the index"),
        (post("9" * 5000), 400, "the body must be a JSON object"),
        (post(" " * (300 * 1024)), 413, "the body is 307200 bytes; at most 262144"),
        (post(b"\xff\xfe"), 400, "the body must be a JSON object"),
        (post(b'{"h3": "\xe9"}'), 400, "the body must be a JSON object"),
        (post('{"h3": "\\ud800"}'), 400, "h3 must be an H3 cell id string"),
        (post("[" * 5000 + "]" * 5000), 400, "the body nests arrays and objects 5000 deep; at most 32"),
        (post('{"a":' * 5000 + "1" + "}" * 5000), 400, "the body nests arrays and objects 5000 deep; at most 32"),
        (post("[" * MAX_BODY_BYTES), 400, f"nests arrays and objects {MAX_BODY_BYTES} deep"),
        (post({"h3": cell, "bbox": deep}), 400, "the body nests arrays and objects 33 deep; at most 32"),
        (post({"h3": cell, "bbox": deep[0]}), 400, "bbox must be west,south,east,north"),
        (post({"h3": cell, "bbox": "[" * 40}), 400, "bbox must be west,south,east,north"),
        (post('{"h3": "' + cell + '", "store": "\\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}'), 400, "unknown store"),
        (post('{"h3": "\\\\' + "[" * 40 + '"}'), 400, "h3 must be an H3 cell id string"),
        (post('"' + "[" * 40), 400, r"the body must be a JSON object \(Unterminated string"),
        (post(cell), 400, "the body must be a JSON object"),
        (post("{}", query="k=3"), 400, "takes its parameters in the JSON body"),
    ]


def _classify_errors(data):
    a, b, c = cell_id(data, 0), cell_id(data, 1), cell_id(data, 2)
    sea, coarse = h3i.int_to_str(int(data.missing[0])), h3i.int_to_str(h3i.cell_to_parent(int(data.h3[0]), 5))
    two = {a: "x", b: "y"}

    def pc(body, **region):
        return post_classify({**body, **(region or {"bbox": BOX})})

    return [
        (pc({}), 400, r'give labels \{"<h3 cell>": "<class>", ...\} with at least 2 classes, or positive cells'),
        (pc({"negative": [a]}), 400, r"\(negative cells need positive ones\)"),
        (pc({"labels": [a, b]}), 400, r'labels must be a JSON object \{"<h3 cell>": "<class>", ...\}, got'),
        (pc({"labels": {"zz": "x", b: "y"}}), 400, "each labels key must be an H3 cell id string like .*, got 'zz'"),
        (pc({"labels": {a: 3, b: "y"}}), 400, "labels values must be class names \\(strings\\), got 3 for"),
        (pc({"labels": {a: ["x"], b: "y"}}), 400, r"labels values must be class names \(strings\), got \['x'\]"),
        (pc({"labels": {a: "x" * 65, b: "y"}}), 400, "class names must be non-empty strings of at most 64 characters"),
        (pc({"labels": {a: "", b: "y"}}), 400, "class names must be non-empty strings"),
        (pc({"labels": {a: "x", b: "x"}}), 400, "every label is class 'x': give at least 2 classes"),
        (pc({"labels": {cell_id(data, i): f"c{i}" for i in range(21)}}), 400, "at most 20 classes, got 21"),
        (pc({"labels": {f"{i:x}": "x" for i in range(1001)}}), 400, "at most 1,000 labelled cells, got 1,001"),
        (pc({"labels": {a: "x", a.upper(): "y"}}), 400, "is labelled more than once; keep one label"),
        (pc({"labels": two, "positive": [c]}), 400, "give labels, or positive \\(and negative\\) cells, not both"),
        (pc({"positive": a}), 400, "positive must be a list of H3 cell id strings"),
        (pc({"positive": [a], "negative": [1]}), 400, "negative must be a list of H3 cell id strings"),
        (pc({"positive": [a] * 1001}), 400, "at most 1,000 positive cells, got 1,001"),
        (pc({"positive": [a, b], "negative": [b]}), 400, f"H3 cell {b} is both positive and negative"),
        (pc({"positive": [coarse]}), 400, "is at resolution 5; this index holds resolution-7 cells"),
        (pc({"labels": {sea: "x", b: "y"}}), 404, f"labelled H3 cell {sea} is not in the index of model 'm'"),
        (post_classify({"labels": two}), 400, r"give one region: bbox \[west, south, east, north\], polygon"),
        (pc({"labels": two}, bbox=BOX, polygon=[[0, 0], [1, 0], [1, 1]]), 400, "got bbox and polygon"),
        (pc({"labels": two}, bbox=BOX, radius_km=3), 400, "got bbox and lat/lng/radius_km"),
        (pc({"labels": two}, lat=44.6, lng=-123.9), 400, "a radius region needs lat, lng and radius_km; got only lat"),
        (pc({"labels": two}, lat=44.6, lng=-123.9, radius_km=0), 400, "radius_km must be > 0"),
        (pc({"labels": two}, lat=95, lng=-123.9, radius_km=1), 400, "filter centre must be lat -90..90"),
        (pc({"labels": two}, lat="44", lng=-123.9, radius_km=1), 400, "lat must be a number"),
        (pc({"labels": two}, bbox=[1, 2, 3]), 400, "bbox must be west,south,east,north"),
        (pc({"labels": two}, bbox=[0, 50, 1, 40]), 400, "south <= north"),
        (pc({"labels": two}, bbox=[0, 0, "a", 1]), 400, "bbox must be a number"),
        (pc({"labels": two}, polygon=[[0, 0], [1, 0]]), 400, "polygon needs 3 to 500 vertices"),
        (pc({"labels": two}, polygon="0,0,1"), 400, "odd count of numbers"),
        (
            pc({"labels": two}, bbox=[-130, 30, -100, 50]),
            400,
            r"the region holds about [\d,]+ H3 cells at resolution 7; /classify takes at most 50,000: zoom in or use "
            "flow 06 for whole maps",
        ),
        (pc({"positive": [a]}, bbox=[0, 0, 0.1, 0.1]), 400, "no indexed cells of the region are left"),
        (pc({"labels": two, "classifier": "svm"}), 400, "classifier must be one of logistic, random_forest, knn"),
        (pc({"labels": two, "classifier": 1}), 400, "classifier must be one of"),
        (pc({"labels": two, "geometry": "no"}), 400, "geometry must be true or false, got 'no'"),
        (pc({"labels": two, "store": "milvus"}), 400, "unknown store 'milvus'"),
        (pc({"labels": two, "store": "pgvector"}), 400, "store 'pgvector' is not served here"),
        (pc({"labels": two, "k": 3}), 400, r"unknown field\(s\) \['k'\] in the body; allowed: labels, positive"),
        (post_classify({"labels": two, "bbox": BOX}, query="k=3"), 400, "POST /classify takes its parameters in"),
        (post_classify("[]"), 400, "the body must be a JSON object, got list"),
        (post_classify(" " * (300 * 1024)), 413, "at most 262144"),
        (get("/classify"), 405, "method GET is not allowed on /classify; use POST"),
    ]


def test_every_bad_input_gets_a_clear_4xx(api, data):
    for request, status, message in _errors(data) + _classify_errors(data):
        got, headers, body = call(api, request)
        assert (got, set(body)) == (status, {"error"}), (message, body)
        assert re.search(message, body["error"]), (message, body["error"])
        assert headers["Cache-Control"] == "no-store" and headers["Access-Control-Allow-Origin"] == "*"
        assert headers["Content-Type"] == "application/json"
        schema("Error").validate(body)
    for method, allowed in (("PUT", "GET"), ("PATCH", "GET"), ("TRACE", "GET"), ("M-SEARCH", "GET")):
        _, headers, _ = call(api, ApiRequest(method, "/health"))
        assert headers["Allow"] == allowed
    assert call(api, ApiRequest("BREW", "/search"))[1]["Allow"] == "GET, POST"


def test_a_deep_body_is_refused_before_it_is_parsed(api, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("json.loads ran on a body nested too deep")

    with monkeypatch.context() as patch:
        patch.setattr("vectorgeo.api.json.loads", never)
        response = api.handle(post("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)))
    assert response.status == 400 and "at most 32" in response.json()["error"]
    started = time.perf_counter()
    status, _, _ = call(api, post(b'"' + b'\\"' * (MAX_BODY_BYTES // 2 - 1)))  # an unterminated string of escapes
    assert status == 400 and time.perf_counter() - started < 1.0  # the scan stays linear


def test_unreachable_store_is_503_and_surprises_are_500(api, service_settings, service, data, monkeypatch, caplog):
    def refuses():
        raise StoreUnavailableError("cannot reach Qdrant at http://10.1.2.3:6333")

    down = SearchAPI(service_settings, SearchService({"qdrant": refuses}, model="m", h3_resolution=RES))
    status, headers, body = call(down, get("/search", {"h3": cell_id(data, 0)}))
    assert status == 503 and body == {"error": "store 'qdrant' cannot be reached now; try again later"}
    status, _, body = call(down, post_classify({"labels": {cell_id(data, 0): "a", cell_id(data, 1): "b"}, "bbox": BOX}))
    assert status == 503 and body == {"error": "store 'qdrant' cannot be reached now; try again later"}
    status, _, health = call(down, get("/health"))
    assert status == 503 and health["reachable"] is False and headers["Cache-Control"] == "no-store"
    schema("Health").validate(health)

    def broken(*args, **kwargs):
        raise RuntimeError("secret detail /var/task/x.py")

    monkeypatch.setattr(service, "search", broken)
    with caplog.at_level(logging.ERROR, logger="vectorgeo.api"):
        status, _, body = call(api, get("/search", {"h3": cell_id(data, 0)}))
    assert status == 500 and body == {"error": "internal error"}
    assert "secret detail" in caplog.text and "GET /search" in caplog.text


class _CountingSettings(ServiceSettings):
    opened: ClassVar[list[int]] = []

    def open_service(self) -> SearchService:
        self.opened.append(1)
        time.sleep(0.05)  # long enough for the other threads to ask too
        return super().open_service()


class _BrokenSettings(ServiceSettings):
    def open_service(self) -> SearchService:
        raise BucketAccessError("cannot read s3://nope/ (AccessDenied); check the role")


def _fields(settings_: ServiceSettings) -> dict:
    return {name: getattr(settings_, name) for name in settings_.__dataclass_fields__}


def test_the_service_is_built_once_on_first_need(service_settings, data, caplog):
    settings_ = _CountingSettings(**_fields(service_settings))
    api = SearchAPI(settings_.replace(stores=("faiss",)))
    try:
        assert call(api, get("/openapi.json"))[0] == 200 and not _CountingSettings.opened  # no service needed
        services = []
        threads = [threading.Thread(target=lambda: services.append(api.service())) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(_CountingSettings.opened) == 1 and len({id(s) for s in services}) == 1
        status, _, health = call(api, get("/health"))
        assert status == 200 and health["count"] == len(data.h3) and health["calibration"] is True
        assert call(api, get("/search", {"h3": cell_id(data, 1)}))[0] == 200 and len(_CountingSettings.opened) == 1
    finally:
        api.close()
    broken = SearchAPI(_BrokenSettings(**_fields(service_settings)))
    with caplog.at_level(logging.ERROR, logger="vectorgeo.api"):
        status, _, body = call(broken, get("/health"))
    assert status == 503 and body == {"error": "the search service is not ready (see the server log); try later"}
    assert "AccessDenied" in caplog.text
    with pytest.raises(StoreUnavailableError, match="not ready") as caught:
        broken.service()
    assert isinstance(caught.value.__cause__, BucketAccessError)
    broken.close()  # nothing was built: nothing to close


def test_close_closes_the_service_it_was_given(service_settings):
    closed = []

    class Service:
        def close(self):
            closed.append(1)

    api = SearchAPI(service_settings, Service())
    api.close()
    api.close()
    assert closed == [1]


# ------------------------------------------------------------------------------------------------ fuzzing


def test_no_request_of_any_shape_gets_a_5xx(api, data):
    checks = validators()
    cells = [cell_id(data, 0), cell_id(data, 100), h3i.int_to_str(int(data.missing[0])), "8528f5dbfffffff"]

    @settings(max_examples=150, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(request=requests(cells))
    @example(request=post(DEEP_BODIES[0]))
    @example(request=post(DEEP_BODIES[1]))
    @example(request=ApiRequest("POST", "/search/", body=DEEP_BODIES[2]))
    def run(request):
        check_answer(api, request, checks)

    run()


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
def _plausible_requests(draw, data) -> ApiRequest:
    """A GET or POST to a route (or not) with plausible or hostile parameters: reaches the search itself."""
    cells = [cell_id(data, 0), cell_id(data, 100), h3i.int_to_str(int(data.missing[0]))]
    plausible = _plausible(data)
    hostile = st.sampled_from(["", "nan", "1e309", "-1", "1001", "milvus", "1_0", "a,b,c,d", *cells]) | st.text(
        max_size=12
    )
    route = draw(st.sampled_from(["/search", "/search", "/search", "/cell", "/health", "/openapi.json", "/x"]))
    method = draw(st.sampled_from(["GET"] * 4 + (["POST", "POST"] if route == "/search" else ["POST"])))
    names = [p["name"] for p in OPENAPI["paths"].get(route, {}).get("get", {}).get("parameters", [])]
    form = draw(st.sampled_from([(), ("h3",), ("lat", "lng"), ("positive", "negative"), ("vector",)]))
    if method == "GET":
        query = {name: _as_text(draw(plausible[name])) for name in form if name in names}
        for name in draw(st.lists(st.sampled_from([*names, "lon"]), max_size=4, unique=True)) if names else []:
            good = plausible[name].map(_as_text) if name in plausible else hostile
            query[name] = draw(st.one_of(good, good, good, hostile))
        return get(route, query)
    obj = {name: draw(plausible[name]) for name in form}
    for name in draw(st.lists(st.sampled_from([*api_params.POST_SEARCH, "extra"]), max_size=4, unique=True)):
        good = plausible.get(name, json_values(cells))
        obj[name] = draw(st.one_of(good, good, good, json_values(cells)))
    return ApiRequest("POST", route, body=json.dumps(obj).encode())


def test_plausible_requests_get_answers_not_5xx(api, data):
    checks = validators()
    seen = set()

    @settings(max_examples=150, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(request=_plausible_requests(data))
    def run(request):
        seen.add(check_answer(api, request, checks))

    run()
    assert {200, 400, 404} <= seen


def _box(west_south_width_height: tuple[float, float, float, float]) -> list[float]:
    west, south, width, height = west_south_width_height
    return [west, south, west + width, south + height]


@st.composite
def _plausible_classify(draw, data) -> ApiRequest:
    """A POST /classify a client would send (labels or positive cells, a region near the index), now and then
    with one field hostile: most reach the classifier."""
    sea = h3i.int_to_str(int(data.missing[0]))  # one in 70: a 404 now and then
    cells = st.sampled_from([cell_id(data, i) for i in range(0, len(data.h3), 7)] + [sea])
    west, south = st.floats(-124.3, -123.6), st.floats(44.2, 44.9)
    regions = [
        {"bbox": st.tuples(west, south, st.floats(0.01, 0.5), st.floats(0.01, 0.4)).map(_box)},
        {"lat": st.floats(44.4, 44.8), "lng": st.floats(-124.1, -123.7), "radius_km": st.floats(0.5, 40)},
        {"polygon": st.just([[-124.1, 44.4], [-123.6, 44.4], [-123.6, 44.8], [-123.85, 44.6]])},
    ]
    body = {name: draw(value) for name, value in draw(st.sampled_from(regions)).items()}
    labelled = draw(st.lists(cells, min_size=2, max_size=8, unique=True))
    if draw(st.booleans()):
        names = ["a", "b", *draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=6, max_size=6))]
        body["labels"] = dict(zip(labelled, names, strict=False))
    else:
        split = draw(st.integers(1, len(labelled)))
        body["positive"], body["negative"] = labelled[:split], labelled[split:]
    options = {"classifier": st.sampled_from(["logistic", "knn", "random_forest"]), "geometry": st.booleans(),
               "store": st.sampled_from(["faiss", "qdrant"])}  # fmt: skip
    for name in draw(st.lists(st.sampled_from(list(options)), max_size=3, unique=True)):
        body[name] = draw(options[name])
    if draw(st.integers(0, 4)) == 0:  # one field hostile
        body[draw(st.sampled_from([*api_params.POST_CLASSIFY, "extra"]))] = draw(json_values([cell_id(data, 0)]))
    return post_classify(body)


def test_plausible_classify_requests_get_answers_not_5xx(api, data):
    checks = validators()
    seen = set()

    @settings(max_examples=60, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(request=_plausible_classify(data))
    def run(request):
        seen.add(check_answer(api, request, checks))

    run()
    assert {200, 400} <= seen


@pytest.mark.parametrize("path", sorted(FUZZ_EXAMPLES.glob("*.json")), ids=lambda p: p.stem)
def test_recorded_fuzz_failures_stay_fixed(api, path):
    """Requests that once got a 5xx (benchmarks/fuzz_api.py saves new ones there) are answered below 500."""
    check_answer(api, load_example(path), validators())
