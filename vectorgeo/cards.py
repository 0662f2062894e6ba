"""Metaflow card contents for each flow's headline step.

Flows call one helper here and extend ``current.card`` with what it returns,
so a card's content is library code that tests can call.
"""

from __future__ import annotations

__all__ = [
    "classification_card",
    "evaluation_card",
    "inference_card",
    "pairs_card",
    "stencil_card",
    "summary_table",
    "training_card",
    "tuning_card",
    "upload_card",
]


def summary_table(title: str, rows: dict) -> list:
    """A heading and a two-column table of ``rows``."""
    from metaflow.cards import Markdown, Table

    return [Markdown(f"# {title}"), Table([[str(k), str(v)] for k, v in rows.items()], headers=["", "value"])]


def stencil_card(summary: dict) -> list:
    """Card for flow 00: cell count, resolution, raster, AOI."""
    keys = ("key", "n_cells", "h3_resolution", "raster", "legend", "aoi_bounds", "raster_bounds", "seconds")
    return summary_table("H3 land stencil", {k: summary.get(k) for k in keys})


def pairs_card(manifest: dict) -> list:
    """Card for flow 01: pairs written and the sampling settings."""
    rows = {k: v for k, v in manifest.items() if k != "shards"}
    return summary_table("Training pairs", rows)


def _image(png: bytes | None, label: str) -> list:
    from metaflow.cards import Image

    return [Image(src=png, label=label)] if png else []


def training_card(summary: dict, figure_png: bytes | None = None) -> list:
    """Card for flow 02: losses, pair counts, and the diagnostics figure."""
    return summary_table("Encoder training", summary) + _image(figure_png, "loss, held-out PCA, per-dimension std")


def tuning_card(summary: dict) -> list:
    """Card for the tuning flow: the best trial, its settings and metrics, then every trial's score."""
    from metaflow.cards import Markdown, Table

    head = {k: summary.get(k) for k in ("key", "study", "n_trials", "n_run", "best_trial", "best_score")}
    rows = [[t["number"], t["state"], t["score"], t["seconds"]] for t in summary.get("trials", [])]
    return [
        *summary_table("Hyper-parameter search", {**head, **summary.get("params", {})}),
        Markdown(f"Best trial on validation ground: {summary.get('best_metrics')}"),
        Table(rows, headers=["trial", "state", "score (lower is better)", "seconds"]),
    ]


def inference_card(manifest: dict) -> list:
    """Card for flow 03: cells embedded, invalid patches skipped, parts reused."""
    return summary_table("Inference", {k: v for k, v in manifest.items() if k != "parts"})


def evaluation_card(report: dict, figure_png: bytes | None = None) -> list:
    """Card for flow 05: each method's metrics side by side, the checks, the probe split, any warnings, the figure.

    ``probe_split`` and ``warnings`` are left out when the report lacks them
    (reports written before they existed), so old reports still render.
    """
    from metaflow.cards import Markdown, Table

    methods = report["methods"]
    metrics = list(next(iter(methods.values())))
    rows = [[metric, *(str(methods[m][metric]) for m in methods)] for metric in metrics]
    checks = ", ".join(f"{k}: {v}" for k, v in report["checks"].items())
    split = report.get("probe_split")
    split_line = [Markdown("Probe split: " + ", ".join(f"{k}: {v}" for k, v in split.items()))] if split else []
    return [
        Markdown(f"# Evaluation of {report.get('model')} on {report['n_cells']} held-out cells"),
        Table(rows, headers=["metric", *methods]),
        Markdown(f"Checks: {checks}"),
        *split_line,
        *(Markdown(f"**Warning:** {warning}") for warning in report.get("warnings") or []),
        *_image(figure_png, "methods side by side"),
    ]


def upload_card(counts: dict) -> list:
    """Card for flow 04: rows per store, parts loaded and reused."""
    from metaflow.cards import Markdown, Table

    rows = [[k, r["collection"], r["count"], r["parts_loaded"], r["parts_skipped"]] for k, r in counts.items()]
    return [Markdown("# Vector stores"), Table(rows, headers=["store", "collection", "rows", "parts loaded", "reused"])]


def classification_card(sidecar: dict, summary: dict, map_png: bytes | None = None) -> list:
    """Card for flow 06: blocked cross-validation on the embeddings and on the class histogram side by side,
    per-class precision and recall, the confusion matrix, the predicted class counts and a small map."""
    from metaflow.cards import Markdown, Table

    cv = sidecar["cv"]
    feats = cv["features"]
    names = list(feats)
    head = [[metric, *(str(feats[n][metric]) for n in names)] for metric in ("accuracy", "macro_f1", "n_folds")]
    classes = sidecar["classes"]
    per_class = [
        [c, *(f"{feats[n]['per_class'][c]['precision']} / {feats[n]['per_class'][c]['recall']}" for n in names),
         feats[names[0]]["per_class"][c]["support"], summary["class_counts"].get(c, 0)]
        for c in classes
    ]  # fmt: skip
    confusion = [[c, *row] for c, row in zip(classes, feats["embeddings"]["confusion"], strict=True)]
    return [
        Markdown(
            f"# Classifier {sidecar['name']} ({sidecar['classifier']}) on {sidecar['features']['model']} embeddings"
        ),
        Markdown(
            f"Blocked cross-validation: {cv['n_labels']} labelled cells in {cv['n_blocks']} blocks "
            f"(H3 parents at res {cv['parent_res']}), {feats['embeddings']['n_folds']} folds."
        ),
        Table(head, headers=["metric", *names]),
        Table(per_class, headers=["class", *(f"{n} precision / recall" for n in names), "labels", "cells mapped"]),
        Markdown("Confusion matrix of the embeddings (rows: true class, columns: predicted)"),
        Table(confusion, headers=["", *classes]),
        *(Markdown(f"**Warning:** {w}") for w in cv.get("warnings") or []),
        Markdown(f"Map: {summary['n_cells']} cells -> {summary['keys']['geoparquet']}, {summary['keys']['cog']}"),
        *_image(map_png, "predicted classes"),
    ]
