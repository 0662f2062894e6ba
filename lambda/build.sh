#!/usr/bin/env bash
# Build the Lambda deployment zip: handler.py, constants.py, vectorgeo/ (the API in vectorgeo/api.py, its
# description vectorgeo/openapi.json) and the packages of lambda/requirements.txt (Linux wheels), without
# TensorFlow, Keras or JAX, and without any HTTP server library (uvicorn, starlette): the Lambda runtime is the server.
#
#   lambda/build.sh [--no-deps] [--out PATH]
#
#   --no-deps   skip the pip install (no download; the zip then holds only VectorGeo's own files)
#   --out PATH  where to write the zip (default: tmp/lambda/vectorgeo-lambda.zip)
#
# Environment: PYTHON (default python3), LAMBDA_PLATFORM and LAMBDA_PLATFORM_OLD (wheel tags accepted; default
# manylinux_2_28_x86_64 and manylinux2014_x86_64, both run on the Amazon Linux 2023 runtimes; use the _aarch64 tags
# for arm64 functions), LAMBDA_PYTHON_VERSION (default 3.12, the runtime in lambda/template.yaml).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
out="$root/tmp/lambda/vectorgeo-lambda.zip"
deps=1
python="${PYTHON:-python3}"

while [ $# -gt 0 ]; do
  case "$1" in
    --no-deps) deps=0 ;;
    --out) out="${2:?--out needs a path}"; shift ;;
    *) echo "build.sh: unknown option '$1'; use --no-deps and/or --out PATH" >&2; exit 2 ;;
  esac
  shift
done

build="$(mktemp -d)"
trap 'rm -rf "$build"' EXIT

cp "$here/handler.py" "$root/constants.py" "$build/"
(cd "$root" && tar --exclude='__pycache__' --exclude='*.pyc' -cf - vectorgeo) | (cd "$build" && tar -xf -)
if [ "$deps" = 1 ]; then
  "$python" -m pip install --quiet --target "$build" --implementation cp --only-binary=:all: \
    --platform "${LAMBDA_PLATFORM:-manylinux_2_28_x86_64}" --platform "${LAMBDA_PLATFORM_OLD:-manylinux2014_x86_64}" \
    --python-version "${LAMBDA_PYTHON_VERSION:-3.12}" \
    -r "$here/requirements.txt"
fi
for banned in tensorflow tf_keras keras jax jaxlib torch uvicorn starlette fastapi httptools uvloop; do
  if [ -e "$build/$banned" ] || compgen -G "$build/${banned}-*.dist-info" >/dev/null; then
    echo "build.sh: $banned ended up in the zip (pulled in by lambda/requirements.txt?); the Lambda loads neither" \
      "the model nor a server" >&2
    exit 1
  fi
done
for file in vectorgeo/api.py vectorgeo/service_settings.py vectorgeo/openapi.json; do
  [ -f "$build/$file" ] || { echo "build.sh: $file is missing from the zip" >&2; exit 1; }
done

mkdir -p "$(dirname "$out")"
"$python" - "$build" "$out" <<'PY'
"""Zip the build directory (sorted entries, so the same inputs give the same listing)."""
import os
import sys
import zipfile

build, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(out + ".tmp", "w", zipfile.ZIP_DEFLATED) as zf:
    for folder, dirs, files in os.walk(build):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            zf.write(path, os.path.relpath(path, build))
os.replace(out + ".tmp", out)
PY
echo "wrote $out ($(du -h "$out" | cut -f1))"
