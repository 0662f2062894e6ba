"""Create (or, with --wipe_existing, recreate) the pgvector table for a model's embeddings.

    python scripts/setup_pgvector.py --table demo_res7 --dim 16 [--wipe_existing] [--yes]

Uses DATABASE_URL (Aurora or any PostgreSQL with pgvector) when set, else the
embedded PostgreSQL in VG_DATA_DIR. Recreating a table that holds rows asks
you to type the table name, unless --yes is given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import constants
from vectorgeo.errors import VectorGeoError
from vectorgeo.stores.pgvector import setup_table
from vectorgeo.stores.postgres_server import EmbeddedPostgres


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Create or recreate the pgvector table.")
    parser.add_argument("--table", required=True, help="table name, e.g. demo_res7")
    parser.add_argument("--dim", type=int, required=True, help="embedding length")
    parser.add_argument("--wipe_existing", action="store_true", help="DESTRUCTIVE: drop the table and its rows first")
    parser.add_argument("--yes", action="store_true", help="do not ask before wiping (for scripts)")
    args = parser.parse_args(argv)

    def confirm(message: str) -> bool:
        if args.yes:
            return True
        print(f"\n!!! {message}\n!!! Type the table name ({args.table}) to drop it, anything else to stop: ", end="")
        try:
            return input().strip() == args.table
        except EOFError:  # no terminal (a script, CI): never wipe without an answer
            print()
            return False

    server = None if constants.DATABASE_URL else EmbeddedPostgres(Path(constants.DATA_DIR) / "postgres")
    try:
        url = constants.DATABASE_URL or server.start()
        rows = setup_table(url, args.table, args.dim, wipe_existing=args.wipe_existing, confirm=confirm)
        print(f"table {args.table!r} ready ({rows} rows)")
        return 0
    except VectorGeoError as exc:
        print(f"setup_pgvector.py: {exc}", file=sys.stderr)
        return 2
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
