"""The ``vectorgeo`` command: ``vectorgeo serve`` (the web map and the API) and ``vectorgeo search`` (no server).

A configuration edge, like ``lambda/``: it reads ``constants`` (the environment) and its own options
into one :class:`~vectorgeo.service_settings.ServiceSettings`. ``vectorgeo search`` sends its options
through :class:`~vectorgeo.api.SearchAPI` as the query of a ``GET /search``, so its checks and error
messages are the HTTP API's.

    vectorgeo search --lat 44.6 --lng -123.9 --k 10 --radius-km 50
    vectorgeo search --h3 8728f5990ffffff --bbox=-124.5,44,-123,45.5 --store faiss --geojson
    vectorgeo serve --port 8000
    vectorgeo registry predictions --model wetlands
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
from pathlib import Path
from types import ModuleType
from typing import NoReturn

__all__ = ["main"]

REPO_ROOT = Path(__file__).resolve().parents[1]
_SEARCH_PARAMS = ("lat", "lng", "h3", "k", "radius_km", "bbox", "polygon", "min_score", "min_separation_km",
                  "exclude_within_km", "store")  # fmt: skip
"""Options of ``vectorgeo search`` that are ``GET /search`` parameters of the same name."""
_TOP_CLASSES = 3


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vectorgeo", description="VectorGeo: land-cover embeddings of H3 cells, and search.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.add_parser("serve", add_help=False, help="serve the web map and the search API (see vectorgeo serve -h)")
    search = commands.add_parser(
        "search",
        help="search the index from the command line, no server",
        description="The cells most like a point or cells, as a table (or GeoJSON). Values are checked as the "
        "HTTP API checks them. Options left out come from the environment (VG_BUCKET, VG_MODEL, ...). "
        "Values that start with '-' and hold a comma need '=': --bbox=-124.5,44,-123,45.5.",
    )
    where = search.add_argument_group("query (a point or cells)")
    where.add_argument("--lat", metavar="DEG", help="latitude of the query point, degrees")
    where.add_argument("--lng", metavar="DEG", help="longitude of the query point, degrees")
    where.add_argument("--h3", metavar="ID[,ID...]", help="query cell id(s), comma-separated (several: their mean)")
    options = search.add_argument_group("search options")
    options.add_argument("--k", metavar="N", help="results wanted, 1..1000 (default 10)")
    options.add_argument("--radius-km", metavar="KM", help="only cells within this distance of the query, km")
    options.add_argument("--bbox", metavar="W,S,E,N", help="only cells inside west,south,east,north, degrees")
    options.add_argument("--polygon", metavar="LNG,LAT,...", help="only cells inside this ring, degrees")
    options.add_argument("--min-score", metavar="S", help="only cells at least this cosine-similar, -1..1")
    options.add_argument("--min-separation-km", metavar="KM", help="no two results closer than this, km")
    options.add_argument("--exclude-within-km", metavar="KM", help="no result closer than this to a query cell, km")
    options.add_argument("--include-query", action="store_true", help="let the query cells be results")
    options.add_argument(
        "--store", metavar="NAME", help="store to ask: faiss, qdrant or pgvector (default $VG_SEARCH_DEFAULT_STORE)"
    )
    options.add_argument("--geojson", action="store_true", help="print the answer as a GeoJSON FeatureCollection")
    index = search.add_argument_group("index (default: the environment)")
    index.add_argument(
        "--bucket", metavar="DIR|S3", help="the pipeline bucket: a directory or s3://bucket/prefix ($VG_BUCKET)"
    )
    index.add_argument(
        "--model", metavar="NAME", help="model whose embeddings are searched, e.g. demo.keras ($VG_MODEL)"
    )
    index.add_argument("--resolution", type=int, metavar="R", help="H3 resolution of the index ($VG_H3_RESOLUTION)")
    index.add_argument("--data-dir", metavar="DIR", help="where the embedded Qdrant and PostgreSQL live ($VG_DATA_DIR)")
    search.add_argument("-v", "--verbose", action="store_true", help="log what the search service does (warnings too)")
    _add_registry_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one ``vectorgeo`` command; returns the exit status (2: bad usage or input, 1: another failure)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:  # serve parses its own options (and --help)
        _constants()
        from vectorgeo.serve import main as serve

        return serve(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "registry":
        return _registry(args)
    if args.command != "search":
        parser.print_help(sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, format="%(name)s: %(message)s")
    try:
        return _search(args)
    except KeyboardInterrupt:
        return 130


def _search(args: argparse.Namespace) -> int:
    from vectorgeo.api import ApiRequest, SearchAPI
    from vectorgeo.errors import VectorGeoError
    from vectorgeo.service_settings import ServiceSettings

    params = {name: [getattr(args, name)] for name in _SEARCH_PARAMS if getattr(args, name) is not None}
    if args.include_query:
        params["include_query"] = ["true"]
    request = ApiRequest("GET", "/search", params=params)
    try:
        settings = ServiceSettings.from_constants(
            _constants(), bucket=args.bucket, model=args.model, h3_resolution=args.resolution, data_dir=args.data_dir
        )
    except VectorGeoError as exc:
        return _fail(str(exc), 2)
    checked = SearchAPI(settings, _Unopened()).handle(request)  # the API's checks, before the index is opened
    if checked.status == 400:
        return _fail(checked.json()["error"], 2)
    try:
        service = settings.open_service()
    except Exception as exc:  # any cause (bucket, credentials, files): one line, no traceback
        return _fail(f"cannot open the search index in {settings.bucket}: {exc}", 1)
    api = SearchAPI(settings, service)
    try:
        response = api.handle(request)
    finally:
        api.close()
    answer = response.json()
    if response.status != 200:
        return _fail(answer["error"], 2 if response.status == 400 else 1)
    print(json.dumps(answer) if args.geojson else _table(answer))
    return 0


class _Unopened:
    """A stand-in service: a request that passes the API's checks reaches it and gets an empty answer."""

    def search(self, *args: object, **kwargs: object) -> dict:
        return {}

    def close(self) -> None:
        pass


def _fail(message: str, status: int) -> int:
    print(f"vectorgeo search: {message}", file=sys.stderr)
    return status


def _table(answer: dict) -> str:
    """Results as aligned text: rank, cell, centre, score, percentile, distance, top land-cover classes."""
    header = ("rank", "h3", "lat", "lng", "score", "pct", "dist km", "land cover")
    rows = []
    for feature in answer["features"]:
        p = feature["properties"]
        classes = (p.get("explanation") or {}).get("classes") or []
        cover = ", ".join(f"{c['name']} {100 * c['fraction']:.0f}%" for c in classes[:_TOP_CLASSES])
        rows.append((str(p["rank"]), p["h3"], f"{p['lat']:.4f}", f"{p['lng']:.4f}", f"{p['score']:.4f}",
                     _maybe(p.get("percentile"), "{:.1f}"), _maybe(p.get("distance_km"), "{:.1f}"), cover))  # fmt: skip
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    right = {0, 2, 3, 4, 5, 6}
    lines = ["  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in [header, *rows]]  # fmt: skip
    query = answer["query"]
    what = ", ".join(query["cells"]) if query["cells"] else "the vector"
    lines.append(
        f"{len(rows)} of k={answer['k']} from {answer['store']} (model {answer['model']}, res {answer['resolution']}; "
        f"{answer['n_candidates']} candidates examined) for {what}"
    )
    return "\n".join(line.rstrip() for line in lines)


def _maybe(value: float | None, spec: str) -> str:
    return "-" if value is None else spec.format(value)


# ------------------------------------------------------------ vectorgeo registry


def _add_registry_parser(commands: argparse._SubParsersAction) -> None:
    registry = commands.add_parser(
        "registry",
        help="list the trained classifiers and their prediction rasters",
        description="The model and prediction registry (ml_models, raster_predictions), newest first. "
        "Reads DATABASE_URL; unset, the embedded PostgreSQL in $VG_DATA_DIR/postgres.",
    )
    lists = registry.add_subparsers(dest="registry_command", metavar="LIST", required=True, parser_class=_Parser)
    models = lists.add_parser("models", help="the registered classifiers")
    predictions = lists.add_parser("predictions", help="the registered prediction rasters")
    predictions.add_argument("--model", metavar="NAME", help="only the predictions of models of this name")
    for sub in (models, predictions):
        sub.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
        sub.add_argument("--data-dir", metavar="DIR", help="where the embedded PostgreSQL lives ($VG_DATA_DIR)")
        sub.add_argument("-v", "--verbose", action="store_true", help="log what the registry does")


def _registry(args: argparse.Namespace) -> int:
    from vectorgeo.errors import InvalidInputError, VectorGeoError
    from vectorgeo.registry import open_registry

    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, format="%(name)s: %(message)s")
    constants = _constants()
    what = args.registry_command
    try:
        with open_registry(constants.DATABASE_URL, args.data_dir or constants.DATA_DIR) as registry:
            rows = registry.list_models() if what == "models" else registry.list_predictions(args.model)
            location = registry.location
    except VectorGeoError as exc:
        print(f"vectorgeo registry: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, InvalidInputError) else 1
    if not rows:
        of = f" of model {args.model!r}" if what == "predictions" and args.model else ""
        print(f"no {what}{of} in the registry at {location}", file=sys.stderr if args.json else sys.stdout)
    elif args.json:
        print("\n".join(json.dumps(row, default=_json_value, ensure_ascii=False) for row in rows))
    else:
        print(_registry_table(rows, what))
    return 0


def _registry_table(rows: list[dict], what: str) -> str:
    """Registry rows as aligned text (times in UTC); numeric columns right-aligned."""
    from datetime import UTC

    def when(row: dict) -> str:
        return row["created"].astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")

    def macro_f1(row: dict) -> str:
        value = (row["cv_metrics"] or {}).get("macro_f1")
        return f"{value:.3f}" if isinstance(value, int | float) and not isinstance(value, bool) else "-"

    if what == "models":
        header = ("id", "name", "created", "classifier", "macro-F1", "artifact key")
        cells = [(str(r["id"]), r["name"], when(r), r["classifier"], macro_f1(r), r["artifact_key"]) for r in rows]
        right = {0, 4}
    else:
        header = ("id", "model", "created", "res", "cells", "COG key", "GeoParquet key")
        cells = [(str(r["id"]), r["model_name"], when(r), str(r["h3_resolution"]), str(r["n_cells"]), r["cog_key"],
                  r["geoparquet_key"]) for r in rows]  # fmt: skip
        right = {0, 3, 4}
    widths = [max(len(r[i]) for r in [header, *cells]) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in [header, *cells]]  # fmt: skip
    return "\n".join(line.rstrip() for line in lines)


def _json_value(value: object) -> object:
    """JSON for what psycopg returns beyond JSON's types (timestamps)."""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _constants() -> ModuleType:
    """The ``constants`` module at the checkout's root (the environment, read once at its import)."""
    if importlib.util.find_spec("constants") is None:
        sys.path.insert(0, str(REPO_ROOT))
    import constants

    return constants


if __name__ == "__main__":
    sys.exit(main())
