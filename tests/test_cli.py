"""The ``vectorgeo`` command: ``search`` on a small real FAISS index (table, GeoJSON, bad input), ``serve --help``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import h3.api.basic_int as h3i
import pytest
from search_data import CENTRE, RES, build_search_bucket, open_test_service

from vectorgeo.cli import main
from vectorgeo.search import Query, SearchOptions

SCRIPT = Path(sys.executable).with_name("vectorgeo")  # setup.sh installs the project editable: the console script


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return build_search_bucket(tmp_path_factory.mktemp("cli"), kinds=("faiss",))


@pytest.fixture(scope="module")
def service(data):
    service = open_test_service(data, ("faiss",))
    yield service
    service.close()


@pytest.fixture
def index_args(data, tmp_path, monkeypatch) -> list[str]:
    """Options naming the test index; the bucket cache goes to a temporary folder."""
    import constants

    monkeypatch.setattr(constants, "CACHE_DIR", str(tmp_path / "cache" / "{step}"))
    return [
        "--bucket",
        data.bucket.url,
        "--model",
        "m.keras",
        "--resolution",
        str(RES),
        "--data-dir",
        str(data.data_dir),
    ]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(["search", *argv])
    out, err = capsys.readouterr()
    return status, out, err


def cell_id(data, row: int) -> str:
    return h3i.int_to_str(int(data.h3[row]))


def test_search_prints_a_table(capsys, index_args, service):
    status, out, err = run(capsys, "--lat", str(CENTRE[0]), "--lng", str(CENTRE[1]), "--k", "5", "--radius-km", "50",
                           *index_args)  # fmt: skip
    assert status == 0 and err == ""
    expected = service.search(Query(lat=CENTRE[0], lng=CENTRE[1]), SearchOptions(k=5, radius_km=50))
    lines = out.splitlines()
    assert re.match(r"rank\s+h3\s+lat\s+lng\s+score\s+pct\s+dist km\s+land cover$", lines[0])
    rows = [line.split() for line in lines[1:6]]
    assert [r[1] for r in rows] == [f["id"] for f in expected["features"]]
    assert [int(r[0]) for r in rows] == [1, 2, 3, 4, 5]
    first = expected["features"][0]["properties"]
    assert rows[0][2:5] == [f"{first['lat']:.4f}", f"{first['lng']:.4f}", f"{first['score']:.4f}"]
    top = first["explanation"]["classes"][0]
    assert f"{top['name']} {100 * top['fraction']:.0f}%" in lines[1]
    assert lines[6].startswith("5 of k=5 from faiss (model m, res 7;") and len(lines) == 7


def test_search_prints_geojson(capsys, index_args, service, data):
    cell = cell_id(data, 222)
    status, out, _ = run(capsys, "--h3", cell, "--bbox=-124.3,44.3,-123.5,44.9", "--min-separation-km", "3",
                         "--include-query", "--store", "faiss", "--geojson", *index_args)  # fmt: skip
    assert status == 0
    options = SearchOptions(bbox=(-124.3, 44.3, -123.5, 44.9), min_separation_km=3, include_query=True)
    expected = service.search(Query(cells=(int(data.h3[222]),)), options, store="faiss")
    assert json.loads(out) == json.loads(json.dumps(expected))


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["--lat", "abc", "--lng", "1"], 2, r"lat must be a number \(degrees, -90..90\), got 'abc'"),
        (["--lat", "44.6"], 2, "a point query needs both lat and lng"),
        ([], 2, "give exactly one query: lat and lng, H3 cell"),
        (["--h3", "zz"], 2, "h3 must be an H3 cell id string like '8728f5990ffffff', got 'zz'"),
        (["--lat", "44.6", "--lng", "-123.9", "--k", "0"], 2, "k must be an integer between 1 and 1000, got 0"),
        (["--lat", "44.6", "--lng", "-123.9", "--bbox=1,2,3"], 2, "bbox must be west,south,east,north"),
        (["--lat", "44.6", "--lng", "-123.9", "--store", "milvus"], 2, "unknown store 'milvus'"),
        (["--lat", "0", "--lng", "0"], 1, r"the point 0.0, 0.0 \(cell 87754e64dffffff\) is not in the index"),
    ],
)
def test_bad_input_is_one_line_on_stderr(capsys, index_args, argv, status, message):
    got, out, err = run(capsys, *argv, *index_args)
    assert (got, out) == (status, "")
    assert len(err.splitlines()) == 1 and err.startswith("vectorgeo search: ") and re.search(message, err), err


def test_usage_errors_and_a_missing_index(capsys, index_args, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main(["search", "--lat", "1", "--resolution", "seven"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.splitlines() == [
        "vectorgeo search: error: argument --resolution: invalid int value: 'seven' (see vectorgeo search --help)"
    ]
    with pytest.raises(SystemExit) as exit_:
        main(["search", "--colour", "red"])
    assert exit_.value.code == 2 and "unrecognized arguments: --colour red" in capsys.readouterr().err
    empty = ["--bucket", str(tmp_path / "empty"), *index_args[2:]]
    status, _, err = run(capsys, "--lat", "44.6", "--lng", "-123.9", *empty)
    assert status == 1 and len(err.splitlines()) == 1 and re.search(r"no (FAISS )?index", err), err
    assert main([]) == 2 and "COMMAND" in capsys.readouterr().err


def test_serve_forwards_its_arguments(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "usage: " in out and "--port" in out and "--bucket" in out


def test_the_console_script(data, tmp_path):
    """``.venv/bin/vectorgeo`` from another folder: a GeoJSON answer, then bad input as one line and status 2."""
    assert SCRIPT.is_file(), "no vectorgeo console script: run ./setup.sh (it installs the project editable)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VG_")}
    env.update(VG_BUCKET=data.bucket.url, VG_MODEL="m.keras", VG_H3_RESOLUTION=str(RES), VG_SEARCH_STORES="faiss",
               VG_CACHE_DIR=str(tmp_path / "cache"), VG_DATA_DIR=str(data.data_dir))  # fmt: skip
    argv = [str(SCRIPT), "search", "--h3", cell_id(data, 5), "--k", "3", "--geojson"]
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert [f["properties"]["rank"] for f in json.loads(done.stdout)["features"]] == [1, 2, 3]
    bad = subprocess.run([*argv[:-1], "--k", "many"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr == "vectorgeo search: k must be an integer, 1..1000, got 'many'\n"
    module = subprocess.run([sys.executable, "-m", "vectorgeo", "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert module.returncode == 0 and "search" in module.stdout and "serve" in module.stdout
