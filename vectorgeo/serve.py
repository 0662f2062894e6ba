"""``vectorgeo serve``: the search API under ``/api/`` and the web map in ``vg_site/``, self-hosted on uvicorn.

The command is a configuration edge, like ``lambda/``: it reads the environment through ``constants``
once, with its options on top, into a :class:`~vectorgeo.service_settings.ServiceSettings`, and hands
that value to the worker processes (:mod:`vectorgeo.workers`), which answer with the same
:class:`~vectorgeo.api.SearchAPI` as the Lambda does (:mod:`vectorgeo.asgi`).

    vectorgeo serve [--host 127.0.0.1] [--port 8000] [--workers N] [--bucket DIR|s3://…] [--store faiss]
    python -m vectorgeo.serve ...
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import signal
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from vectorgeo.asgi import API_PREFIX, SITE_DIR
from vectorgeo.errors import ServerStartError, VectorGeoError

if TYPE_CHECKING:
    from vectorgeo.overview import Overview
    from vectorgeo.service_settings import ServiceSettings

__all__ = ["API_PREFIX", "SITE_DIR", "main"]

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    from vectorgeo.workers import default_workers

    parser = argparse.ArgumentParser(
        prog="vectorgeo serve",
        description="Serve the search API (under /api/) and the web map on this machine, with worker processes. "
        "Options left out come from the environment, as for the flows (VG_BUCKET, VG_MODEL, ...).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port; 0 picks a free one")
    parser.add_argument(
        "--workers", type=_positive_int, default=default_workers(), help="worker processes (default: cores, at most 4)"
    )
    parser.add_argument("--threads", type=_positive_int, default=2, help="API requests each worker answers at once")
    parser.add_argument("--http", choices=("httptools", "h11"), default="httptools", help="uvicorn's HTTP parser")
    parser.add_argument("--bucket", help="the pipeline bucket: a directory or s3://bucket/prefix ($VG_BUCKET)")
    parser.add_argument("--model", help="model file name whose embeddings are searched, e.g. demo.keras ($VG_MODEL)")
    parser.add_argument("--resolution", type=int, help="H3 resolution of the index ($VG_H3_RESOLUTION)")
    parser.add_argument("--stores", help="stores to offer, comma-separated: faiss,qdrant,pgvector ($VG_SEARCH_STORES)")
    parser.add_argument("--store", help="store a request without store= uses ($VG_SEARCH_DEFAULT_STORE)")
    parser.add_argument("--data-dir", help="where the embedded Qdrant and PostgreSQL live ($VG_DATA_DIR)")
    parser.add_argument(
        "--cache-max-age-s", type=int, default=0, help="Cache-Control max-age of GET answers (0: a new index shows)"
    )
    parser.add_argument("--landcover", help="land-cover raster of the map's overview layer ($VG_LANDCOVER)")
    parser.add_argument("--legend", help="its legend: lc100, worldcover or a legend file ($VG_LEGEND)")
    parser.add_argument("--overview-px", type=int, default=2048, help="longest side of the overview image")
    parser.add_argument(
        "--write-overview",
        metavar="DIR",
        help="write landcover.png and landcover.json into DIR (a static deployment's overview/ folder) and exit",
    )
    return parser.parse_args(argv)


def _constants() -> ModuleType:
    """The ``constants`` module at the checkout's root (the environment, read once at its import)."""
    if importlib.util.find_spec("constants") is None:
        sys.path.insert(0, str(REPO_ROOT))
    import constants

    return constants


def _overview(settings: ServiceSettings, constants: ModuleType, args: argparse.Namespace) -> Overview | None:
    """The land-cover overview of the configured raster, or None (logged) when there is none to show."""
    from vectorgeo.overview import bucket_overview

    try:
        return bucket_overview(
            settings.open_bucket(),
            landcover=args.landcover if args.landcover is not None else constants.LANDCOVER,
            legend=args.legend if args.legend is not None else constants.LEGEND,
            synthetic_seed=constants.SYNTHETIC_SEED,
            max_px=args.overview_px,
        )
    except VectorGeoError as exc:
        logger.warning("no land-cover layer on the map: %s", exc)
        return None


def main(argv: list[str] | None = None) -> int:
    """Run the server until Ctrl-C or SIGTERM; returns the exit status (1: it could not start)."""
    from vectorgeo.artifacts import collection_name
    from vectorgeo.service_settings import ServiceSettings
    from vectorgeo.workers import ServerProcesses, WorkerSpec, bind_socket

    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s")
    constants = _constants()
    try:
        settings = ServiceSettings.from_constants(
            constants,
            bucket=args.bucket,
            model=args.model,
            h3_resolution=args.resolution,
            stores=tuple(args.stores.split(",")) if args.stores is not None else None,
            default_store=args.store,
            data_dir=args.data_dir,
            cache_max_age_s=args.cache_max_age_s,
        )
        if args.write_overview:
            return _write_overview(settings, constants, args)
        if not (SITE_DIR / "index.html").is_file():
            raise ServerStartError(f"no index.html in {str(SITE_DIR)!r}; run from a full VectorGeo checkout")
        sock = bind_socket(args.host, args.port)  # a taken port fails first, before anything starts
    except VectorGeoError as exc:
        print(f"vectorgeo serve: {exc}", file=sys.stderr)
        return 1
    overview = _overview(settings, constants, args)
    embedded_qdrant = "qdrant" in settings.stores and not settings.qdrant_url
    embedded_pg = "pgvector" in settings.stores and not settings.database_url
    name = settings.collection or collection_name(settings.model, settings.h3_resolution)
    spec = WorkerSpec(
        settings,
        site_dir=str(SITE_DIR),
        extra_files={f"overview/{name}": file for name, file in (overview.files() if overview else {}).items()},
        threads=args.threads,
        http=args.http,
    )
    processes = ServerProcesses(
        sock,
        spec,
        workers=args.workers,
        shard_path=Path(settings.data_dir) / "qdrant" / name if embedded_qdrant else None,
        pg_dir=Path(settings.data_dir) / "postgres" if embedded_pg else None,
    )
    for signum in (signal.SIGINT, signal.SIGTERM):  # `kill` and service managers stop it as cleanly as Ctrl-C
        signal.signal(signum, lambda *_: processes.request_stop())
    code = 0
    try:
        processes.start()
        host, port = sock.getsockname()[:2]
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else f"[{host}]" if ":" in host else host
        print(f"VectorGeo: model {settings.model}, res {settings.h3_resolution}, stores {', '.join(settings.stores)}, "
              f"{args.workers} worker(s)")  # fmt: skip
        print(f"VectorGeo map: open http://{shown}:{port}/  (API under {API_PREFIX}/; Ctrl-C stops)", flush=True)
        code = processes.supervise()
    except ServerStartError as exc:
        code = 0 if processes.stop_requested else 1  # a stop asked for while starting is no failure
        if code:
            print(f"vectorgeo serve: {exc}", file=sys.stderr)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the clean-up short
            signal.signal(signum, signal.SIG_IGN)
        print("VectorGeo: stopping", file=sys.stderr, flush=True)
        processes.stop()  # workers finish their requests; then the shard's host and PostgreSQL stop
    return code


def _write_overview(settings: ServiceSettings, constants: ModuleType, args: argparse.Namespace) -> int:
    from vectorgeo.overview import write_overview

    overview = _overview(settings, constants, args)
    if overview is None:
        raise VectorGeoError("no land-cover overview was made (see the log above), so none was written")
    for path in write_overview(overview, args.write_overview):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
