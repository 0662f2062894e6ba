"""Look into the pipeline bucket from the command line.

    python scripts/bucket.py ls [PREFIX]          keys under PREFIX
    python scripts/bucket.py get KEY [--force]    download (cached) and print the local path
    python scripts/bucket.py put LOCAL_PATH KEY   upload a file atomically
    python scripts/bucket.py cat KEY              print a (text) object

The bucket, cache and S3 endpoint come from VG_BUCKET, VG_CACHE_DIR and
VG_S3_ENDPOINT_URL, as for the flows.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import constants
from vectorgeo.errors import VectorGeoError
from vectorgeo.transfer import Bucket


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Look into the VectorGeo bucket ($VG_BUCKET).")
    verbs = parser.add_subparsers(dest="verb", required=True)
    verbs.add_parser("ls", help="list keys").add_argument("prefix", nargs="?", default="")
    get = verbs.add_parser("get", help="download (cached) and print the local path")
    get.add_argument("key")
    get.add_argument("--force", action="store_true", help="download even when the cached copy is current")
    put = verbs.add_parser("put", help="upload a local file")
    put.add_argument("path")
    put.add_argument("key")
    verbs.add_parser("cat", help="print an object").add_argument("key")
    args = parser.parse_args(argv)

    bucket = Bucket.from_settings(constants, "cli")
    try:
        if args.verb == "ls":
            print("\n".join(bucket.list(args.prefix)))
        elif args.verb == "get":
            print(bucket.download(args.key, force=args.force))
        elif args.verb == "put":
            bucket.upload(args.path, args.key)
            print(bucket.uri(args.key))
        else:
            sys.stdout.write(bucket.read_bytes(args.key).decode("utf-8", errors="replace"))
    except (VectorGeoError, FileNotFoundError) as exc:
        print(f"bucket.py: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
