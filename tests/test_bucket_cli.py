"""scripts/bucket.py: the bucket from the command line."""

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT

CLI = str(REPO_ROOT / "scripts" / "bucket.py")


def _cli(tmp_path, *args):
    env = {**os.environ, "VG_BUCKET": str(tmp_path / "bucket"), "VG_CACHE_DIR": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, CLI, *args], env=env, capture_output=True, text=True, timeout=60)


def test_put_ls_get_cat(tmp_path):
    src = tmp_path / "hello.txt"
    src.write_text("hello bucket\n")
    assert _cli(tmp_path, "put", str(src), "docs/hello.txt").returncode == 0
    assert _cli(tmp_path, "ls", "docs/").stdout.split() == ["docs/hello.txt"]
    got = _cli(tmp_path, "get", "docs/hello.txt")
    assert got.returncode == 0 and Path(got.stdout.strip()).read_text() == "hello bucket\n"
    assert _cli(tmp_path, "get", "docs/hello.txt", "--force").returncode == 0
    assert _cli(tmp_path, "cat", "docs/hello.txt").stdout == "hello bucket\n"


def test_missing_key_is_one_line_and_exit_2(tmp_path):
    done = _cli(tmp_path, "get", "stencil/res7.parquet")
    assert done.returncode == 2
    assert "key 'stencil/res7.parquet' not found in bucket" in done.stderr
    assert "Traceback" not in done.stderr
