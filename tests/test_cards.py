import numpy as np
from metaflow.cards import Markdown, Table

from vectorgeo.cards import evaluation_card, pairs_card, stencil_card


def test_stencil_card_shows_the_headline_figures():
    heading, table = stencil_card({"key": "stencil/res7.parquet", "n_cells": 3987, "h3_resolution": 7})
    assert isinstance(heading, Markdown) and isinstance(table, Table)
    rendered = table.render()
    assert "3987" in str(rendered) and "stencil/res7.parquet" in str(rendered)


def test_pairs_card_leaves_out_the_shard_list():
    _, table = pairs_card({"n_pairs": 8, "shards": {"train/default/part-00000.npz": 4}})
    rendered = str(table.render())
    assert "n_pairs" in rendered and "part-00000" not in rendered


def test_tuning_card_shows_the_best_trial_and_every_score():
    from vectorgeo.cards import tuning_card

    summary = {
        "key": "models/t.tuning.json",
        "n_trials": 2,
        "best_trial": 1,
        "best_score": 2.5,
        "params": {"learning_rate": 0.001},
        "best_metrics": {"retrieval_jsd": 0.2},
        "trials": [
            {"number": 0, "state": "COMPLETE", "score": 3.1, "seconds": 20.0},
            {"number": 1, "state": "COMPLETE", "score": 2.5, "seconds": 21.0},
        ],
    }
    _, table, metrics, trials = tuning_card(summary)
    assert "learning_rate" in str(table.render()) and "models/t.tuning.json" in str(table.render())
    assert "3.1" in str(trials.render()) and "retrieval_jsd" in str(metrics.render())


def test_evaluation_card_shows_the_probe_split_and_warnings():
    report = {
        "model": "encoder-v1",
        "n_cells": 144,
        "methods": {"encoder": {"retrieval_jsd": 0.2}, "random": {"retrieval_jsd": 0.5}},
        "checks": {"halves_random_retrieval_jsd": True},
        "probe_split": {"grouping": "blocks", "n_train": 90, "n_test": 40, "block_km": 0.96},
        "warnings": ["only 144 held-out cells, fewer than 500: the scores are noisy", "the probe split is random"],
    }
    heading, table, checks, split, *warnings = evaluation_card(report)
    assert "encoder-v1" in str(heading.render()) and "0.5" in str(table.render())
    assert "halves_random_retrieval_jsd: True" in str(checks.render())
    assert all(isinstance(part, Markdown) for part in (split, *warnings))
    assert "Probe split: grouping: blocks, n_train: 90, n_test: 40, block_km: 0.96" in str(split.render())
    assert len(warnings) == 2
    for part, sentence in zip(warnings, report["warnings"], strict=True):
        assert f"**Warning:** {sentence}" in str(part.render())

    # a report written before the probe split and the warnings existed still renders, without them
    old = {k: v for k, v in report.items() if k not in ("probe_split", "warnings")}
    assert len(evaluation_card(old)) == 3
    assert len(evaluation_card({**report, "warnings": []})) == 4


def test_classification_card_puts_embeddings_and_histogram_side_by_side():
    from vectorgeo.cards import classification_card
    from vectorgeo.classify import score_predictions

    classes = ("forest", "water")
    scores = {name: {**score_predictions(np.array([0, 0, 1, 1]), np.array(pred), classes), "n_folds": 2}
              for name, pred in (("embeddings", [0, 0, 1, 1]), ("histogram", [0, 1, 1, 1]))}  # fmt: skip
    sidecar = {"name": "w", "classifier": "logistic", "classes": list(classes), "features": {"model": "demo"},
               "cv": {"features": scores, "n_labels": 4, "n_blocks": 4, "parent_res": 5,
                      "warnings": ["class 'water' lies in 1 block"]}}  # fmt: skip
    summary = {"n_cells": 10, "class_counts": {"forest": 6, "water": 4},
               "keys": {"geoparquet": "p/predictions.parquet", "cog": "p/classes.tif"}}  # fmt: skip
    parts = classification_card(sidecar, summary, None)
    text = " ".join(str(p.render()) for p in parts)
    assert "embeddings" in text and "histogram" in text and "0.7333" in text  # histogram's macro-F1
    assert "forest" in text and "p/classes.tif" in text and "lies in 1 block" in text
