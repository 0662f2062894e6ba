"""The Lambda adapter (lambda/handler.py): both event formats, base64 both ways, bad events, one API, the zip.

The routes and their answers are vectorgeo.api's (tests/test_api.py); here only the translation is checked.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import subprocess
import sys
import zipfile
from urllib.parse import urlencode

import h3.api.basic_int as h3i
import pytest
from search_data import CENTRE, RES, build_search_bucket, open_test_service, service_settings_for

from tests.conftest import REPO_ROOT
from vectorgeo.api import ApiRequest, ApiResponse, SearchAPI
from vectorgeo.service_settings import ServiceSettings

HANDLER = REPO_ROOT / "lambda" / "handler.py"
KINDS = ("faiss", "qdrant")


def load_handler():
    """The handler module loaded by file path, as Lambda does (``lambda`` is a keyword: no package)."""
    spec = importlib.util.spec_from_file_location("vg_lambda_handler", HANDLER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return build_search_bucket(tmp_path_factory.mktemp("handler"), kinds=KINDS)


@pytest.fixture(scope="module")
def service(data):
    service = open_test_service(data, KINDS)
    yield service
    service.close()


@pytest.fixture(scope="module")
def service_settings(data, tmp_path_factory) -> ServiceSettings:
    return service_settings_for(data, tmp_path_factory.mktemp("cache"), KINDS)


@pytest.fixture(scope="module")
def api(service_settings, service):
    return SearchAPI(service_settings, service)


@pytest.fixture
def lam(api):
    module = load_handler()
    module.set_api(api)
    yield module
    module.set_api(None)


def v2(method: str, path: str, query: dict | str | None = None, body: str | bytes | None = None, b64=False) -> dict:
    """A Lambda function-URL event (payload 2.0)."""
    raw = query if isinstance(query, str) else urlencode(query or {})
    if b64:
        body = base64.b64encode(body if isinstance(body, bytes) else body.encode()).decode()
    event = {
        "version": "2.0",
        "rawPath": path,
        "rawQueryString": raw,
        "headers": {"Content-Type": "application/json"},
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


def call(lam, event) -> tuple[int, dict, object]:
    response = lam.handler(event, None)
    assert set(response) == {"statusCode", "headers", "body", "isBase64Encoded"}
    assert response["isBase64Encoded"] is False
    body = json.loads(response["body"]) if response["body"] else None
    return response["statusCode"], response["headers"], body


def cell_id(data, row: int) -> str:
    return h3i.int_to_str(int(data.h3[row]))


def test_both_event_formats_reach_the_api_alike(lam, api):
    query = {"lat": CENTRE[0], "lng": CENTRE[1], "k": 7}
    direct = api.handle(ApiRequest("GET", "/search", urlencode(query)))
    status, headers, body = call(lam, v2("GET", "/search", query))
    assert (status, headers, body) == (200, direct.headers, direct.json())
    assert call(lam, v1("GET", "/search", {k: str(v) for k, v in query.items()}))[2] == body
    assert call(lam, v1("GET", "/search/", None, multi={k: [str(v)] for k, v in query.items()}))[2] == body
    assert call(lam, {**v2("GET", "/search"), "rawQueryString": None, "queryStringParameters": query})[2] == body
    no_raw_path = {
        **v2("GET", "/x", query),
        "rawPath": None,
        "requestContext": {"http": {"method": "get", "path": "/search"}},
    }
    assert call(lam, no_raw_path)[2] == body


def test_bodies_in_text_or_base64(lam, api, data):
    payload = json.dumps({"positive": [cell_id(data, 50)], "k": 4})
    answer = api.handle(ApiRequest("POST", "/search", body=payload.encode())).json()
    assert call(lam, v2("POST", "/search", body=payload))[2] == answer
    assert call(lam, v2("POST", "/search", body=payload, b64=True))[2] == answer
    assert call(lam, v1("POST", "/search", body=payload))[2] == answer
    status, _, body = call(lam, v2("POST", "/search", body=b"\xff\xfe", b64=True))
    assert status == 400 and body["error"].startswith("the body must be a JSON object")


def test_head_answers_as_get_without_a_body(lam, data):
    get = lam.handler(v2("GET", "/cell", {"h3": cell_id(data, 3)}), None)
    head = lam.handler(v2("HEAD", "/cell", {"h3": cell_id(data, 3)}), None)
    assert (head["statusCode"], head["headers"], head["body"]) == (200, get["headers"], "")


def test_a_binary_answer_goes_back_in_base64(lam):
    class Binary:
        def handle(self, request: ApiRequest) -> ApiResponse:
            return ApiResponse(200, {"Content-Type": "application/octet-stream"}, b"\x00\xff" + request.body)

    lam.set_api(Binary())
    response = lam.handler(v2("POST", "/search", body="hi"), None)
    assert response == {"statusCode": 200, "headers": {"Content-Type": "application/octet-stream"},
                        "body": base64.b64encode(b"\x00\xffhi").decode(), "isBase64Encoded": True}  # fmt: skip


def test_the_adapter_hands_headers_and_parsed_params_on(lam):
    seen = []

    class Spy:
        def handle(self, request: ApiRequest) -> ApiResponse:
            seen.append(request)
            return ApiResponse(204, {}, b"")

    lam.set_api(Spy())
    lam.handler(v2("post", "/search", "a=1&a=2", body="{}"), None)
    lam.handler(v1("GET", "/cell", {"h3": "x"}, multi={"h3": ["x", "y"]}), None)
    lam.handler(v1("GET", "/cell", {"h3": "x"}), None)
    assert seen[0] == ApiRequest("POST", "/search", "a=1&a=2", None, b"{}", {"content-type": "application/json"})
    assert seen[1].params == {"h3": ["x", "y"]} and seen[2].params == {"h3": ["x"]} and seen[2].query_string == ""


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({"hello": "world"}, "not an HTTP event"),
        (["GET", "/search"], "not an HTTP event"),
        ({"requestContext": {"http": {"path": "/search"}}}, r"malformed HTTP event \(KeyError\)"),
        ({**v2("POST", "/search"), "body": "%%%", "isBase64Encoded": True}, r"malformed HTTP event \(Error\)"),
        ({**v2("POST", "/search"), "body": 12, "isBase64Encoded": False}, r"malformed HTTP event \(TypeError\)"),
        ({**v1("GET", "/search"), "multiValueQueryStringParameters": {"h3": 3}}, "malformed HTTP event"),
        ({**v1("GET", "/search"), "headers": ["x"]}, "malformed HTTP event"),
    ],
)
def test_a_malformed_event_is_a_400(lam, event, message):
    status, headers, body = call(lam, event)
    assert status == 400 and re.search(message, body["error"]), body
    assert headers["Content-Type"] == "application/json" and headers["Cache-Control"] == "no-store"


def test_the_container_builds_one_api_from_constants(data, tmp_path, monkeypatch):
    lam = load_handler()
    values = {"BUCKET": data.bucket.url, "CACHE_DIR": str(tmp_path / "{step}"), "MODEL_FILENAME": "m.keras",
              "H3_RESOLUTION": RES, "SEARCH_STORES": "faiss", "DATA_DIR": str(tmp_path / "stores")}  # fmt: skip
    for name, value in values.items():
        monkeypatch.setattr(lam.constants, name, value)
    try:
        status, _, health = call(lam, v2("GET", "/health"))
        assert status == 200 and health["count"] == len(data.h3) and health["calibration"] is True
        built = lam._api
        assert call(lam, v2("GET", "/search", {"h3": cell_id(data, 1)}))[0] == 200 and lam._api is built
        assert built.settings.stores == ("faiss",) and built.settings.model == "m"
        assert (tmp_path / "search").is_dir()  # "{step}" in the cache dir names the service's cache
    finally:
        lam._api.close()
        lam.set_api(None)
    monkeypatch.setattr(lam.constants, "SEARCH_STORES", "milvus")
    status, _, body = call(lam, v2("GET", "/health"))
    assert status == 503 and body == {"error": "the search service is not ready (see the server log); try later"}


# ------------------------------------------------------------------------------------------------ deployment


def test_build_script_makes_a_zip_without_the_model_frameworks_or_a_server(tmp_path):
    out = tmp_path / "fn.zip"
    done = subprocess.run(
        ["bash", str(REPO_ROOT / "lambda" / "build.sh"), "--no-deps", "--out", str(out)],
        env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    names = set(zipfile.ZipFile(out).namelist())
    wanted = {"handler.py", "constants.py", "vectorgeo/api.py", "vectorgeo/api_params.py", "vectorgeo/openapi.json",
              "vectorgeo/service_settings.py", "vectorgeo/search.py", "vectorgeo/stores/faiss.py"}  # fmt: skip
    assert wanted <= names
    banned = ("tensorflow", "keras", "jax", "jaxlib", "uvicorn", "starlette", "fastapi", "httptools")
    assert not [n for n in names if n.split("/")[0] in banned or "__pycache__" in n]
    bad = subprocess.run(["bash", str(REPO_ROOT / "lambda" / "build.sh"), "--zip"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown option '--zip'" in bad.stderr


def test_the_lambda_pins_are_the_projects_and_hold_no_model_framework_or_server():
    def pins(path):
        lines = [ln.split("#")[0].strip() for ln in path.read_text().splitlines()]
        return dict(re.sub(r"\[.*\]", "", ln).lower().split("==") for ln in lines if "==" in ln)

    lambda_pins, project_pins = pins(REPO_ROOT / "lambda" / "requirements.txt"), pins(REPO_ROOT / "requirements.txt")
    banned = {"tensorflow", "tf-keras", "keras", "jax", "jaxlib", "torch", "uvicorn", "starlette", "fastapi"}
    assert lambda_pins and not set(lambda_pins) & banned
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
heavy = sorted(m for m in ("tensorflow", "keras", "jax", "torch", "pyarrow", "rasterio", "vectorgeo.encoder",
                           "vectorgeo.model_files", "uvicorn", "starlette") if m in sys.modules)
print(json.dumps({{"status": status, "heavy": heavy}}))
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("VG_")}
    env.update(VG_BUCKET=str(data.bucket.url), VG_CACHE_DIR=str(tmp_path / "cache"), VG_MODEL="m.keras",
               VG_H3_RESOLUTION=str(RES), VG_SEARCH_STORES="faiss", VG_DATA_DIR=str(tmp_path / "stores"))  # fmt: skip
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"status": 200, "heavy": []}
