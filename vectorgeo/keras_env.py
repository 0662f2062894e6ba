"""Import Keras (and TensorFlow behind it) once, with the process settings training needs and quiet logs.

TensorFlow reads a few settings only at import, and on a machine without a
GPU its C++ layer prints CUDA probing lines ("Could not find cuda drivers",
"failed call to cuInit") before its own log level applies, in every task of
every flow. :func:`import_keras` sets the environment first, then imports
with the process's stderr captured and prints back every line except those
known-harmless start-up lines, so real errors still show.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import tempfile

__all__ = ["import_keras"]

_NOISE = re.compile(
    r"cudart_stub\.cc|cuda_executor|cuda_dnn|cuda_fft|cuda_blas|failed call to cuInit|Could not find cuda drivers|"
    r"absl::InitializeLog|computation placer already registered|Unable to register cu(DNN|FFT|BLAS) factory|"
    r"TF-TRT Warning|oneDNN custom operations are on|This TensorFlow binary is optimized to use available CPU"
    r"|rebuild TensorFlow with the appropriate compiler flags|E0000 00:00:|W0000 00:00:|I0000 00:00:"
)


def _settings() -> None:
    # TensorFlow's pooling allocator for host memory: without it every step's tensors are malloc'd
    # and freed, glibc hands the pages back, and a third of training's CPU time went to page
    # faults (docs/encoder.md). A value the user set wins.
    os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@functools.cache
def import_keras():
    """The ``keras`` module, imported once with :func:`_settings` applied and start-up noise filtered."""
    _settings()
    if "keras" in sys.modules or os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        import keras

        return keras
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import keras
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")  # device probing prints its CUDA lines here, not mid-task
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines() if not _NOISE.search(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr)
    return keras
