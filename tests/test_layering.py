"""The package's layers: the library never imports a job, and inference never loads the evaluation code.

Jobs (``vectorgeo/jobs/``) wire library calls to the bucket for one flow; entry points (flows, the CLI)
call jobs. An import the other way round would make the library depend on a flow's unit of work.
"""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "vectorgeo"
ENTRY_POINTS = {"cli.py"}  # may call jobs, as flows do


def _imported_modules(path) -> set[str]:
    """Every module a file imports, at the top or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_library_never_imports_jobs():
    offenders = {
        str(path.relative_to(REPO_ROOT)): sorted(m for m in _imported_modules(path) if m.startswith("vectorgeo.jobs"))
        for path in PACKAGE.rglob("*.py")
        if "jobs" not in path.relative_to(PACKAGE).parts[:1] and path.name not in ENTRY_POINTS
    }
    assert not {k: v for k, v in offenders.items() if v}


def test_inference_does_not_load_evaluation():
    assert not {m for m in _imported_modules(PACKAGE / "inference.py") if m.startswith("vectorgeo.evaluat")}
    code = "import sys, vectorgeo.inference; assert 'vectorgeo.evaluate' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)
