from metaflow.cards import Markdown, Table

from vectorgeo.cards import pairs_card, stencil_card


def test_stencil_card_shows_the_headline_figures():
    heading, table = stencil_card({"key": "stencil/res7.parquet", "n_cells": 3987, "h3_resolution": 7})
    assert isinstance(heading, Markdown) and isinstance(table, Table)
    rendered = table.render()
    assert "3987" in str(rendered) and "stencil/res7.parquet" in str(rendered)


def test_pairs_card_leaves_out_the_shard_list():
    _, table = pairs_card({"n_pairs": 8, "shards": {"train/default/part-00000.npz": 4}})
    rendered = str(table.render())
    assert "n_pairs" in rendered and "part-00000" not in rendered
