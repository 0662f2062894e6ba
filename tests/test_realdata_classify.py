"""Few-shot classification on a real clip (NLCD Zion): labels drawn from its own patches, blocked CV.

A small encoder is trained on pairs from the clip itself (a minute on 2 cores), every res-8 cell
is embedded, cells that are mostly one class are labelled with it, and the classifier is scored
by H3-blocked cross-validation on the embeddings beside the class histogram. The full-budget
figures (the demo's training on every real clip) are in benchmarks/classification.py.
Skipped, with the reason, where ../shared/realdata is absent.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import REPO_ROOT
from vectorgeo.classify import cross_validate_features
from vectorgeo.derived_labels import labels_from_fractions
from vectorgeo.encoder import EncoderConfig
from vectorgeo.inference import embed_cells
from vectorgeo.labels import parse_labels
from vectorgeo.legends import get_legend
from vectorgeo.raster import open_raster
from vectorgeo.sampling import sample_pairs
from vectorgeo.stencil import build_stencil
from vectorgeo.training import TrainingParams, train_encoder

pytestmark = pytest.mark.realdata

PATCH, RES = 32, 8


def test_embeddings_classify_real_land_cover_under_blocked_cv(realdata):
    import json

    legend = get_legend(str(REPO_ROOT / "examples" / "legends" / "nlcd.csv"))
    with open_raster(realdata / "nlcd2011_zion_UT.tif") as ds:
        train = sample_pairs(ds, legend, 3000, patch_px=PATCH, seed=0)
        val = sample_pairs(ds, legend, 256, patch_px=PATCH, seed=1)
        stencil = build_stencil(RES, dataset=ds, legend=legend, progress=False)
        config = EncoderConfig(n_classes=legend.n_classes, patch_px=PATCH, embed_dim=16, num_filters=16,
                               n_conv_blocks=2)  # fmt: skip
        pairs = {"anchor": train.anchor, "neighbor": train.neighbor}
        encoder, _ = train_encoder(pairs, {"anchor": val.anchor, "neighbor": val.neighbor}, config,
                                   TrainingParams(batch_size=64, epochs=4, seed=0))  # fmt: skip
        h3, lat, lng = (stencil.column(c).to_numpy() for c in ("h3", "lat", "lng"))
        cells = embed_cells(encoder, ds, legend, lat, lng, patch_px=PATCH)
    h3, lat, lng = h3[cells.valid], lat[cells.valid], lng[cells.valid]
    doc = labels_from_fractions(h3, lat, lng, cells.fractions, list(legend.names), per_class=40, max_classes=4)
    labels = parse_labels(json.dumps(doc).encode(), "derived.geojson", h3_resolution=RES)
    rows = np.searchsorted(h3, labels.h3) if (np.diff(h3.astype(np.float64)) > 0).all() else None
    assert rows is not None and (h3[rows] == labels.h3).all()
    report = cross_validate_features(
        {"embeddings": cells.embeddings[rows], "histogram": cells.fractions[rows]}, labels.label, labels.h3,
        labels.classes, kind="logistic",
    )  # fmt: skip
    emb, hist = report["features"]["embeddings"], report["features"]["histogram"]
    scores = f"macro-F1 embeddings {emb['macro_f1']:.3f}, histogram {hist['macro_f1']:.3f}"
    print(
        f"NLCD Zion res {RES}: {report['n_labels']} labels in {report['n_blocks']} blocks, {report['counts']}; {scores}"
    )
    assert len(labels.classes) == 4 and report["n_blocks"] >= 10
    assert hist["macro_f1"] >= 0.9  # the histogram sees the composition that made the labels
    assert emb["macro_f1"] >= 0.7  # a one-minute encoder; the demo's training reaches 0.99 (benchmarks)
