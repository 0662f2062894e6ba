#!/usr/bin/env bash
# The whole test suite (lint included), bootstrapping .venv when missing.
# Extra arguments go to pytest, e.g. scripts/test.sh -k stencil
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./setup.sh
export USERNAME="${USERNAME:-${USER:-vectorgeo}}"

.venv/bin/ruff check .
.venv/bin/ruff format --check .

set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "test.sh: pytest collected no tests; that is a failure" >&2
  exit 1
fi
exit "$rc"
