"""scripts/setup_pgvector.py: a destructive recreate asks first, loudly."""

import os
import subprocess
import sys

import numpy as np

from tests.conftest import REPO_ROOT
from vectorgeo.stores.pgvector import EmbeddedPgVectorStore

SCRIPT = str(REPO_ROOT / "scripts" / "setup_pgvector.py")


def _setup(tmp_path, *args, answer=""):
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["VG_DATA_DIR"] = str(tmp_path / "stores")
    return subprocess.run(
        [sys.executable, SCRIPT, "--table", "t_res7", "--dim", "4", *args],
        input=answer, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_wipe_needs_the_table_name_typed(tmp_path):
    assert _setup(tmp_path).returncode == 0
    store = EmbeddedPgVectorStore(tmp_path / "stores" / "postgres", table="t_res7")
    store.upsert(np.array([1, 2], np.uint64), np.zeros(2), np.zeros(2), np.eye(2, 4, dtype=np.float32))
    store.close()

    refused = _setup(tmp_path, "--wipe_existing", answer="no\n")
    assert refused.returncode == 2 and "2 rows" in refused.stdout and "not confirmed" in refused.stderr
    done = _setup(tmp_path, "--wipe_existing", answer="t_res7\n")
    assert done.returncode == 0 and "(0 rows)" in done.stdout
