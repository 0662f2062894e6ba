"""Steady-state training pairs/s of this checkout, or of an older one, on the same synthetic pairs.

Trains 4 epochs on 6,144 pairs of 32 px patches from the synthetic default and
reports the mean time of epochs 2-4 (epoch 1 holds graph tracing). Run the
variants one at a time on a quiet machine and compare; prints one JSON line.

    .venv/bin/python benchmarks/training_speed.py default            # this checkout's defaults
    .venv/bin/python benchmarks/training_speed.py triplet            # the triplet objective, batch 128
    TF_CPU_ALLOCATOR_USE_BFC=false .venv/bin/python benchmarks/training_speed.py triplet
    git archive e83cb74 vectorgeo | tar -x -C /tmp/old && \\
        .venv/bin/python benchmarks/training_speed.py first-version --code /tmp/old   # the first version
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("variant", choices=["default", "triplet", "first-version"])
    parser.add_argument("--code", default=str(Path(__file__).resolve().parents[1]), help="folder holding vectorgeo/")
    args = parser.parse_args()
    sys.path.insert(0, args.code)
    import numpy as np

    from vectorgeo.legends import get_legend
    from vectorgeo.raster import open_raster
    from vectorgeo.sampling import sample_pairs
    from vectorgeo.synthetic import write_synthetic_rasters

    with tempfile.TemporaryDirectory() as tmp:
        lc, _ = write_synthetic_rasters(Path(tmp) / "lc.tif", Path(tmp) / "dem.tif", seed=0)
        with open_raster(lc) as ds:
            shard = sample_pairs(ds, get_legend("lc100"), 6400, patch_px=32, pair_distance_m=5000, seed=0)
    train = {"anchor": shard.anchor[:6144], "neighbor": shard.neighbor[:6144]}
    val = {"anchor": shard.anchor[6144:], "neighbor": shard.neighbor[6144:]}
    ends: list[float] = []
    if args.variant == "first-version":
        import keras

        from vectorgeo import model as vm
    else:
        from vectorgeo.keras_env import import_keras

        keras = import_keras()

    class EpochEnds(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            ends.append(time.perf_counter())

    fit = keras.Model.fit

    def timed_fit(self, *a, **k):  # the training functions build their own callbacks; add the timer
        k["callbacks"] = [*(k.get("callbacks") or []), EpochEnds()]
        return fit(self, *a, **k)

    keras.Model.fit = timed_fit
    if args.variant == "first-version":
        vm.train_encoder(train, val, vm.EncoderConfig(n_classes=23, patch_px=32), epochs=4, batch_size=128, patience=10)
    else:
        from vectorgeo.encoder import ENCODER_DEFAULTS, EncoderConfig
        from vectorgeo.training import TrainingParams, train_encoder

        if args.variant == "triplet":
            config = EncoderConfig(n_classes=23, patch_px=32)
            params = TrainingParams(objective="triplet", batch_size=128, epochs=4, patience=10)
        else:
            config = EncoderConfig(n_classes=23, patch_px=32, **ENCODER_DEFAULTS)
            params = TrainingParams(epochs=4, patience=10)
        train_encoder(train, val, config, params)
    steady = (ends[-1] - ends[0]) / (len(ends) - 1)
    epochs = [round(b - a, 2) for a, b in itertools.pairwise(ends)]
    print(
        json.dumps(
            {
                "variant": args.variant,
                "epoch_seconds": epochs,
                "pairs_per_s": round(6144 / steady, 1),
                "TF_CPU_ALLOCATOR_USE_BFC": os.environ.get("TF_CPU_ALLOCATOR_USE_BFC"),
                "np": np.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
