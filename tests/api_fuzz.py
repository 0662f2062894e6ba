"""Hypothesis strategies for requests of any shape, the check every answer must pass, and saved failures.

Shared by tests/test_api.py (a short, derandomised run) and benchmarks/fuzz_api.py (a long, random
one that saves each failing request into ``tests/fuzz_examples/`` for the tests to replay).
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from urllib.parse import urlencode

from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from vectorgeo.api import MAX_BODY_BYTES, OPENAPI_PATH, ApiRequest, SearchAPI
from vectorgeo.api_params import POST_CLASSIFY, POST_SEARCH

FUZZ_EXAMPLES = Path(__file__).with_name("fuzz_examples")
OPENAPI = json.loads(OPENAPI_PATH.read_text())
TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
DEEP_BODIES = (  # json.loads raised RecursionError on these, answered 500 before the depth check
    b"[" * 5000 + b"]" * 5000,
    b'{"a":' * 5000 + b"1" + b"}" * 5000,
    b"[" * MAX_BODY_BYTES,
)


def schema(name: str) -> Draft202012Validator:
    """A validator of one of the OpenAPI description's component schemas."""
    return Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": OPENAPI["components"]})


def json_values(cells: list[str], max_leaves: int = 40) -> st.SearchStrategy:
    """JSON values of any shape: scalars (huge numbers, NaN, cell ids) nested in lists and objects."""
    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(-2000, 2000), st.integers(), st.integers(10**300, 10**400), st.floats(),
        st.text(max_size=8), st.sampled_from(cells),
    )  # fmt: skip
    return st.recursive(
        scalars, lambda inner: st.lists(inner, max_size=9) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
        max_leaves=max_leaves,
    )  # fmt: skip


def nested(depth: int, kind: str, leaf: str) -> bytes:
    """JSON text nested ``depth`` deep: arrays, objects or both."""
    opens, closes = {"[": ("[", "]"), "{": ('{"h3":', "}"), "mix": ('[{"a":', "}]")}[kind]
    return (opens * depth + leaf + closes * depth).encode()


def labels(cells: list[str]) -> st.SearchStrategy:
    """``labels`` objects of ``POST /classify``: cell ids (or not) to class names (or anything)."""
    keys = st.sampled_from(cells) | st.sampled_from([c.upper() for c in cells]) | st.text(max_size=16)
    names = st.sampled_from(["a", "b", "forest", "", " ", "x" * 65]) | st.text(max_size=8) | json_values(cells, 4)
    return st.dictionaries(keys, names, max_size=6)


def bodies(cells: list[str]) -> st.SearchStrategy:
    """Request bodies of any shape: JSON of any depth, truncated JSON, raw bytes, text."""
    deep = st.builds(nested, st.integers(0, 20_000), st.sampled_from(["[", "{", "mix"]), st.sampled_from(["1", ""]))
    fields = st.dictionaries(st.sampled_from([*POST_SEARCH, *POST_CLASSIFY, "x"]), json_values(cells), max_size=5)
    classify = st.fixed_dictionaries(
        {"labels": labels(cells)},
        optional={name: json_values(cells) for name in POST_CLASSIFY if name != "labels"},
    )
    return st.one_of(
        json_values(cells).map(lambda v: json.dumps(v).encode()),
        fields.map(lambda v: json.dumps(v).encode()),
        classify.map(lambda v: json.dumps(v).encode()),
        deep,
        deep.map(lambda b: b[: len(b) // 2]),
        st.binary(max_size=64),
        st.text(max_size=40).map(str.encode),
        st.sampled_from([b"", b"null", b"NaN", b'{"lat": -Infinity}', b"\xef\xbb\xbf{}", b"1e999999", b'"\\ud800"']),
    )


def query_strings(cells: list[str]) -> st.SearchStrategy:
    """Raw query strings: known and unknown names with odd values, free text, too many fields."""
    names = st.sampled_from([*POST_SEARCH, *POST_CLASSIFY, "lon", "", "x"])
    words = st.sampled_from(["", "nan", "inf", "1e309", "0", "-1", "1001", "44.6", "-123.9", "true", "faiss",
                             "milvus", "1_0", "1,2,3", "-124,44.5,-123.8,44.7", "%ff", "%00", *cells])  # fmt: skip
    pairs = st.lists(st.tuples(names, words | st.text(max_size=10)), max_size=8).map(urlencode)
    return st.one_of(pairs, st.text(max_size=40), st.just("&".join(f"k{i}=1" for i in range(70))))


@st.composite
def requests(draw, cells: list[str]) -> ApiRequest:
    """Any method (odd tokens too), path, query string (or parsed params), body and headers."""
    others = st.sampled_from(["OPTIONS", "HEAD", "PUT", "DELETE", "PATCH"])
    tokens, text = st.text(TOKEN_CHARS, max_size=12), st.text(max_size=8)
    method = draw(_weighted(draw, (4, st.just("GET")), (4, st.just("POST")), (2, others), (1, tokens), (1, text)))
    routes = st.sampled_from(["/search", "/search/", "search", "/cell", "/health", "/openapi.json", "/classify"])
    odd = st.sampled_from(["/", "", "/x", "//cell//"])
    path = draw(_weighted(draw, (8, routes), (1, odd), (1, st.text(max_size=20))))
    query = draw(query_strings(cells))
    parsed = st.dictionaries(st.text(max_size=6), st.lists(st.text(max_size=8), max_size=3))
    params = draw(_weighted(draw, (3, st.none()), (1, parsed)))
    body = draw(bodies(cells))
    headers = draw(st.dictionaries(st.text(max_size=10).map(str.lower), st.text(max_size=10), max_size=3))
    return ApiRequest(method, path, query, params, body, headers)


def _weighted(draw, *choices: tuple[int, st.SearchStrategy]) -> st.SearchStrategy:
    """One of the strategies, picked in proportion to its weight (the first is what shrinking leans to)."""
    pick = draw(st.integers(0, sum(w for w, _ in choices) - 1))
    for weight, strategy in choices:
        if pick < weight:
            return strategy
        pick -= weight
    raise AssertionError("unreachable")


def check_answer(api: SearchAPI, request: ApiRequest, validators: dict[str, Draft202012Validator]) -> int:
    """Answer ``request`` and check it: below 500, JSON (empty for a preflight), CORS; returns the status."""
    response = api.handle(request)
    assert response.status < 500, (request, response)
    assert response.headers["Access-Control-Allow-Origin"] == api.settings.cors_allow_origin
    if response.status == 204:
        assert response.body == b""
        return 204
    body = json.loads(response.body)
    if response.status >= 400:
        assert response.headers["Content-Type"] == "application/json"
        validators["Error"].validate(body)
    elif body.get("type") == "FeatureCollection":
        validators["ClassifyResult" if "classes" in body else "SearchResult"].validate(body)
    elif body.get("type") == "Feature":
        validators["Cell"].validate(body)
    return response.status


def validators() -> dict[str, Draft202012Validator]:
    return {name: schema(name) for name in ("SearchResult", "ClassifyResult", "Cell", "Health", "Error")}


def save_example(request: ApiRequest, folder: Path = FUZZ_EXAMPLES) -> Path:
    """Write a request as readable JSON (the body as text when it is UTF-8, else base64); named by its digest."""
    saved: dict = {"method": request.method, "path": request.path, "query_string": request.query_string}
    if request.params is not None:
        saved["params"] = {k: list(v) for k, v in request.params.items()}
    try:
        saved["body"] = request.body.decode("utf-8")
    except UnicodeDecodeError:
        saved["body_base64"] = base64.b64encode(request.body).decode("ascii")
    if request.headers:
        saved["headers"] = dict(request.headers)
    text = json.dumps(saved, indent=1, ensure_ascii=True) + "\n"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"
    path.write_text(text)
    return path


def load_example(path: Path) -> ApiRequest:
    """A request written by :func:`save_example`."""
    saved = json.loads(path.read_text())
    body = saved["body"].encode() if "body" in saved else base64.b64decode(saved["body_base64"])
    return ApiRequest(
        saved["method"],
        saved["path"],
        saved.get("query_string", ""),
        saved.get("params"),
        body,
        saved.get("headers", {}),
    )
