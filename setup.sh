#!/usr/bin/env bash
# Idempotent set-up: .venv with the pinned requirements, an import check, and Debian's chromium for the
# browser test where it can (root with apt-get; otherwise a warning).
# Needs only python3 (3.11+) and the package registries. Never uses sudo,
# never writes credentials, never edits shell start-up files.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "setup.sh: VectorGeo needs Python 3.11 or newer; '$python' is $("$python" --version 2>&1 || echo missing)." >&2
  echo "setup.sh: install Python 3.11+ or point PYTHON=/path/to/python3.11 at one." >&2
  exit 1
fi

if [ -x .venv/bin/python ] && ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "setup.sh: .venv holds an older Python; recreating it"
  rm -rf .venv
fi
if [ ! -x .venv/bin/python ]; then
  echo "setup.sh: creating .venv with $("$python" --version)"
  "$python" -m venv .venv
fi

# Chromium for tests/test_browser.py: Debian's package (playwright's own browser download is not used).
# Best effort: without it that test skips with the reason, so a failure here only warns.
install_chromium() {
  [ -x /usr/bin/chromium ] && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "setup.sh: warning: no /usr/bin/chromium, and no root apt-get to install it; the browser test will skip" >&2
    return 0
  fi
  echo "setup.sh: installing Debian's chromium for the browser test"
  local log
  log=$(mktemp)
  if { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } \
    >"$log" 2>&1; then
    rm -f "$log"
  else
    tail -n 5 "$log" >&2
    echo "setup.sh: warning: apt-get could not install chromium (log: $log); the browser test will skip" >&2
  fi
}

# The project itself, editable, with the pinned setuptools (no build isolation, so nothing else is fetched):
# the `vectorgeo` command in .venv/bin, and `import vectorgeo` from any folder.
install_project() {
  # the warning silenced is setuptools' reminder that ./vectorgeo shadows the install: here they are one folder
  PYTHONWARNINGS="ignore:Editable installation" \
    .venv/bin/python -m pip install --quiet --no-deps --no-build-isolation --editable .
}

stamp=.venv/.vectorgeo-requirements
wanted=$(cat requirements.txt setup.sh pyproject.toml | "$python" -c 'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$wanted" ] || [ "${1:-}" = "--force" ]; then
  echo "setup.sh: installing pinned requirements into .venv (first run: a few minutes)"
  .venv/bin/python -m pip install --quiet "pip==26.3"
  .venv/bin/python -m pip install --quiet -r requirements.txt
  .venv/bin/python - <<'PY'
import importlib

from vectorgeo.keras_env import import_keras  # TensorFlow and Keras, without the CUDA probing lines on CPU machines

import_keras()
mods = ["metaflow", "numpy", "scipy", "pyarrow", "rasterio", "h3", "h3ronpy", "shapely", "global_land_mask", "jax", "optuna", "sqlalchemy", "boto3", "qdrant_client", "qdrant_edge", "psycopg",
        "psycopg2", "pgvector", "faiss", "uvicorn", "httptools", "uvloop", "tqdm", "matplotlib", "pytest", "moto",
        "playwright"]
for name in mods:
    importlib.import_module(name)
import h3
assert h3.__version__.startswith("4."), f"h3 v4 is required, found {h3.__version__}"
print(f"setup.sh: TensorFlow, Keras and {len(mods)} more packages import")
PY
  install_project
  install_chromium
  echo "$wanted" > "$stamp"
elif [ ! -x .venv/bin/vectorgeo ]; then
  install_project
fi
