"""Save and load trained classifiers safely: skops files, never pickles.

A classifier file comes from a bucket, which anyone with write access can change. A pickle
runs whatever code it names when loaded; a skops file is a zip of JSON and arrays, and
:func:`load_classifier` refuses it unless every type it would build is one of skops'
defaults or in :data:`TRUSTED_TYPES` (the types VectorGeo's own classifiers need). Nothing
from the bucket is executed, whatever it holds.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from vectorgeo.errors import InvalidInputError

__all__ = ["TRUSTED_TYPES", "load_classifier", "save_classifier"]

TRUSTED_TYPES = ("sklearn.tree._tree.Tree",)
"""Types beyond skops' own safe defaults that a VectorGeo classifier file may hold (a random forest's trees)."""


def save_classifier(model, path: str | Path) -> Path:
    """Write ``model`` as a skops file, atomically (a temporary file, then a rename)."""
    import skops.io as sio

    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        sio.dump(model, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_classifier(path: str | Path):
    """Load a classifier saved by :func:`save_classifier`, building only trusted types.

    Raises:
        InvalidInputError: the file is not a skops file, or it holds a type that is not trusted
            (it was not written by VectorGeo, or was tampered with); nothing in it was run.
    """
    import skops.io as sio

    path = Path(path)
    try:
        untrusted = sio.get_untrusted_types(file=path)
    except Exception as exc:  # skops raises zipfile/JSON/key errors of many kinds for a file that is not its own
        raise InvalidInputError(f"{path.name} is not a readable skops classifier file ({exc!r}); retrain it") from exc
    refused = sorted(set(untrusted) - set(TRUSTED_TYPES))
    if refused:
        raise InvalidInputError(
            f"{path.name} holds types VectorGeo does not trust: {refused[:5]}; it was not written by flow 06 "
            "(or was altered), so it is not loaded"
        )
    return sio.load(path, trusted=list(untrusted))
