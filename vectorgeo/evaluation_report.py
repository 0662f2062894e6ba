"""Presenting an embedding evaluation: a plain-text table and a bar-chart PNG of a report.

The report is what :func:`vectorgeo.evaluate.evaluate_embeddings` returns (flow 05 stores it as
``reports/{name}/res{R}/evaluation.json``, :func:`vectorgeo.artifacts.report_keys`). Matplotlib is
imported inside :func:`report_figure` only.
"""

from __future__ import annotations

import logging
from pathlib import Path

__all__ = ["format_report", "report_figure"]

logger = logging.getLogger(__name__)

_METRICS = ("retrieval_jsd", "r2_class_fractions", "r2_edge_density", "r2_shannon")
_METRIC_LABELS = {
    "retrieval_jsd": "retrieval JSD@k (lower is better)",
    "r2_class_fractions": "R² class fractions",
    "r2_edge_density": "R² edge density",
    "r2_shannon": "R² Shannon diversity",
}


def format_report(report: dict) -> str:
    """Plain-text table of an :func:`evaluate_embeddings` report: metrics as rows, methods as columns.

    The probe split and any warnings follow the table and the checks, so
    numbers that cannot be trusted are never printed without saying so.
    """
    methods = list(report["methods"])
    label_width = max(len(_METRIC_LABELS[m]) for m in _METRICS)
    col_width = max(10, *(len(name) for name in methods))
    header = f"{'':<{label_width}}  " + "  ".join(f"{name:>{col_width}}" for name in methods)
    lines = [
        f"Embedding evaluation: {report['n_cells']} cells, D={report['embed_dim']}, k={report['k']}",
        header,
        "-" * len(header),
    ]
    for metric in _METRICS:
        values = [report["methods"][name].get(metric) for name in methods]
        cells = "  ".join(f"{'n/a' if v is None else f'{v:.4f}':>{col_width}}" for v in values)
        lines.append(f"{_METRIC_LABELS[metric]:<{label_width}}  {cells}")
    lines.append("")
    lines.extend(f"{name}: {'PASS' if ok else 'FAIL'}" for name, ok in report["checks"].items())
    split = report.get("probe_split")
    if split:
        blocks = f", {split['block_km']} km blocks" if split.get("block_km") is not None else ""
        lines += [
            "",
            f"probe split ({split['grouping']}{blocks}): {split['n_train']} train cells in "
            f"{split['n_groups_train']} groups, {split['n_test']} test cells in {split['n_groups_test']} groups, "
            f"{split['n_buffer_dropped']} dropped by the buffer",
        ]
    warnings = report.get("warnings") or []
    if warnings:
        lines.append("")
        lines.extend(f"WARNING: {warning}" for warning in warnings)
    return "\n".join(lines)


def report_figure(report: dict, path: str | Path) -> Path:
    """Write a PNG of grouped bars: one panel per metric, the methods side by side.

    Args:
        report: An :func:`evaluate_embeddings` report.
        path: Output ``.png`` path; parent directories are created.

    Returns:
        The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    methods = list(report["methods"])
    colors = ["#d62728", "#7f7f7f", "#1f77b4", "#2ca02c", "#9467bd", "#8c564b"]
    fig = Figure(figsize=(3.4 * len(_METRICS), 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(_METRICS))
    for ax, metric in zip(axes, _METRICS, strict=True):
        values = [report["methods"][name].get(metric) for name in methods]
        heights = [0.0 if v is None else v for v in values]
        bars = ax.bar(range(len(methods)), heights, color=[colors[i % len(colors)] for i in range(len(methods))])
        for bar, value in zip(bars, values, strict=True):
            label = "n/a" if value is None else f"{value:.3f}"
            y = max(bar.get_height(), 0.0)
            ax.annotate(label, (bar.get_x() + bar.get_width() / 2, y), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(methods)), methods, rotation=25, ha="right")
        ax.set_title(_METRIC_LABELS[metric].replace("retrieval JSD@k", f"retrieval JSD@{report['k']}"), fontsize=10)
        ax.axhline(0.0, color="black", linewidth=0.8)
        top = max(*heights, 0.0)
        bottom = min(*heights, 0.0)
        upper = top * 1.2 if metric == "retrieval_jsd" and top > 0 else 1.1  # room for the labels; R² tops at 1
        ax.set_ylim(bottom * 1.15 - 0.02 * (upper - bottom), upper)
        ax.grid(axis="y", alpha=0.3)
    passed = sum(bool(ok) for ok in report["checks"].values())
    title = f"{report['n_cells']} held-out cells, D={report['embed_dim']}: {passed}/{len(report['checks'])} checks pass"
    if report.get("warnings"):
        title += f" — {len(report['warnings'])} warning(s) in the report: do not trust these numbers alone"
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=120)
    logger.info("wrote evaluation figure %s", path)
    return path
