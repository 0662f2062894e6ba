"""Metaflow card contents for each flow's headline step.

Flows call one helper here and extend ``current.card`` with what it returns,
so a card's content is library code that tests can call.
"""

from __future__ import annotations

__all__ = ["pairs_card", "stencil_card", "summary_table"]


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
