"""Few-shot classification on the embeddings, with labels drawn from the raster itself (issue 12's known answer).

For each target (a bucket holding a model's embeddings from flow 03), cells whose patch is at
least ``--min-fraction`` one class are labelled with that class (the commonest ``--max-classes``
classes, ``--per-class`` cells each: :func:`vectorgeo.derived_labels.labels_from_fractions`), then
flow 06's training step cross-validates each classifier by H3 blocks on the embeddings and on the
class histogram side by side. The histogram sees the composition that defined the labels, so it
is the ceiling, not a rival; the target is macro-F1 >= 0.8 for the embeddings.

    .venv/bin/python benchmarks/classification.py --target synthetic,data/bucket,demo,7
    .venv/bin/python benchmarks/classification.py --target esacci,tmp/quality/esacci/bucket,esacci,7 \\
        --target nlcd,tmp/quality/nlcd/bucket,nlcd,9

Writes JSON to ``benchmarks/results/classification.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from vectorgeo.artifacts import read_embeddings_manifest, read_model_sidecar
from vectorgeo.classifiers import CLASSIFIERS
from vectorgeo.derived_labels import labels_from_fractions
from vectorgeo.jobs.classify import train_classifier
from vectorgeo.transfer import Bucket

REPO = Path(__file__).resolve().parents[1]
TARGET_F1 = 0.8


def _labels(bucket: Bucket, model: str, res: int, args) -> tuple[dict, int]:
    manifest = read_embeddings_manifest(bucket, model, res)
    table = pq.read_table([str(bucket.download(k)) for k in manifest["parts"]],
                          columns=["h3", "lat", "lng", "class_fractions"])  # fmt: skip
    n = table.num_rows
    fractions = np.asarray(table.column("class_fractions").combine_chunks().flatten()).reshape(n, -1)
    names = [c["name"] for c in read_model_sidecar(bucket, f"{model}.keras")["legend"]["classes"]]
    doc = labels_from_fractions(
        table.column("h3").to_numpy(), table.column("lat").to_numpy(), table.column("lng").to_numpy(), fractions,
        names, min_fraction=args.min_fraction, per_class=args.per_class, max_classes=args.max_classes, seed=args.seed,
    )  # fmt: skip
    return doc, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", action="append", required=True, help="label,bucket,model,resolution")
    parser.add_argument("--classifiers", default=",".join(CLASSIFIERS))
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--max-classes", type=int, default=5)
    parser.add_argument("--min-fraction", type=float, default=0.6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "classification.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for spec in args.target:
        label, bucket_dir, model, res = spec.split(",")
        with tempfile.TemporaryDirectory(prefix="vg-bench-cls-") as tmp:
            bucket = Bucket(bucket_dir, Path(tmp) / "cache")
            doc, n_cells = _labels(bucket, model, int(res), args)
            labels_path = Path(tmp) / f"derived-{label}.geojson"
            labels_path.write_text(json.dumps(doc))
            for kind in args.classifiers.split(","):
                started = time.perf_counter()
                sidecar = train_classifier(
                    bucket, model_filename=f"{model}.keras", h3_resolution=int(res), labels=str(labels_path),
                    class_property="class", classifier=kind, name=f"bench-derived-{kind}", seed=args.seed,
                )  # fmt: skip
                cv = sidecar["cv"]
                rows.append({
                    "target": label, "model": model, "h3_resolution": int(res), "n_embedded": n_cells,
                    "classifier": kind, "n_labels": cv["n_labels"], "n_blocks": cv["n_blocks"],
                    "parent_res": cv["parent_res"], "counts": cv["counts"],
                    "embeddings": {k: cv["features"]["embeddings"][k] for k in ("accuracy", "macro_f1", "per_class")},
                    "histogram": {k: cv["features"]["histogram"][k] for k in ("accuracy", "macro_f1")},
                    "seconds": round(time.perf_counter() - started, 2), "warnings": cv["warnings"],
                })  # fmt: skip
    print(f"{'target':<15}{'classifier':<15}{'labels':>7}{'blocks':>7}  {'emb F1':>7}{'hist F1':>8}"
          f"{'emb acc':>8}{'hist acc':>9}  target F1>={TARGET_F1}")  # fmt: skip
    for r in rows:
        emb, hist = r["embeddings"], r["histogram"]
        met = "met" if emb["macro_f1"] >= TARGET_F1 else "MISSED"
        print(f"{r['target']:<15}{r['classifier']:<15}{r['n_labels']:>7}{r['n_blocks']:>7}  {emb['macro_f1']:>7.3f}"
              f"{hist['macro_f1']:>8.3f}{emb['accuracy']:>8.3f}{hist['accuracy']:>9.3f}  {met}")  # fmt: skip
    out = {"machine": f"{platform.machine()}, {platform.processor() or '?'}, python {platform.python_version()}",
           "settings": {k: v for k, v in vars(args).items() if k != "out"}, "rows": rows}  # fmt: skip
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
