"""Classifiers on cell features: blocked cross-validation that cannot leak, scores, safe model files."""

from __future__ import annotations

import h3.api.numpy_int as h3n
import numpy as np
import pytest

from vectorgeo.classifier_files import load_classifier, save_classifier
from vectorgeo.classifiers import CLASSIFIERS, classifier_params, make_classifier
from vectorgeo.classify import (
    blocked_groups,
    cross_validate,
    cross_validate_features,
    score_predictions,
    spatial_folds,
)
from vectorgeo.derived_labels import labels_from_fractions
from vectorgeo.errors import InvalidInputError

RES = 8


def _cells(n_parents: int = 30, res: int = RES, parent_res: int = RES - 2) -> np.ndarray:
    """Every res-``res`` child of ``n_parents`` neighbouring parents near the Oregon coast."""
    origin = h3n.latlng_to_cell(44.6, -123.9, parent_res)
    parents = h3n.grid_disk(origin, 4)[:n_parents]
    return np.sort(np.concatenate([h3n.cell_to_children(p, res) for p in parents]).astype(np.uint64))


def test_blocked_groups_pick_the_coarsest_parents_that_give_enough_blocks():
    cells = _cells()
    groups, parent_res = blocked_groups(cells)
    assert parent_res == RES - 2 and np.unique(groups).size == 30
    assert groups.tolist() == [h3n.cell_to_parent(c, RES - 2) for c in cells.tolist()]
    few = cells[: 49 * 3]  # three parents at RES - 2: too few blocks there, so finer ones
    _, finer = blocked_groups(few)
    assert finer > RES - 2
    with pytest.raises(InvalidInputError, match="parent_res must lie in"):
        blocked_groups(cells, parent_res=RES)  # a cell is never its own block: neighbours would straddle folds
    three = np.sort(
        np.concatenate([h3n.grid_disk(h3n.latlng_to_cell(44.6 + d, -123.9, RES), 1) for d in (0, 0.1, 0.2)])
    )
    assert blocked_groups(three.astype(np.uint64))[1] == RES - 1  # few blocks: R-1 at the finest, never R


def test_no_training_cell_touches_a_test_cell():
    cells = _cells()
    y = np.arange(cells.size) % 2
    groups, _ = blocked_groups(cells, parent_res=RES - 2)
    for train, test in spatial_folds(cells, y, groups, n_folds=5):
        test_set = set(cells[test].tolist())
        assert not any(set(h3n.grid_disk(int(c), 1).tolist()) & test_set for c in cells[train].tolist())
        assert len(train) + len(test) < cells.size  # the buffer dropped the cells along the block edges


def test_a_fold_that_trains_on_one_class_does_not_crash():
    cells = _cells()
    groups, _ = blocked_groups(cells)
    y = np.zeros(cells.size, int)
    y[groups == groups[0]] = 1  # class "b" lives in one block only
    features = np.eye(2)[y] + np.random.default_rng(0).normal(0, 0.05, (cells.size, 2))
    for kind in CLASSIFIERS:
        scores = cross_validate(features, y, groups, ("a", "b"), h3=cells, kind=kind)
        assert scores["per_class"]["b"]["recall"] == 0.0  # its fold never trained on it


def test_separable_features_score_perfectly_and_noise_scores_at_chance():
    cells = _cells()
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, cells.size)
    good = np.eye(3)[y] + rng.normal(0, 0.05, (cells.size, 3))
    noise = rng.normal(0, 1, (cells.size, 8))
    groups, _ = blocked_groups(cells)
    for kind in CLASSIFIERS:
        assert cross_validate(good, y, groups, ("a", "b", "c"), h3=cells, kind=kind)["macro_f1"] > 0.98
    assert cross_validate(noise, y, groups, ("a", "b", "c"), h3=cells, kind="logistic")["macro_f1"] < 0.45


def test_blocked_folds_do_not_leak_neighbourhoods():
    """Labels are random per neighbourhood and the features name the neighbourhood: a random split would
    score near 1 (k-NN finds the same neighbourhood in training); blocked folds must score at chance."""
    cells = _cells(n_parents=61)
    hood, _ = blocked_groups(cells, parent_res=RES - 2)
    uniq, inverse = np.unique(hood, return_inverse=True)
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, uniq.size)[inverse]
    features = rng.normal(0, 1, (uniq.size, 16))[inverse] + rng.normal(0, 0.01, (cells.size, 16))
    from sklearn.model_selection import KFold, cross_val_predict

    leaky = cross_val_predict(make_classifier("knn"), features, y, cv=KFold(5, shuffle=True, random_state=0))
    assert score_predictions(y, leaky, ("a", "b"))["macro_f1"] > 0.95
    blocked = cross_validate(features, y, blocked_groups(cells)[0], ("a", "b"), h3=cells, kind="knn")
    assert blocked["macro_f1"] < 0.7


def test_scores_are_the_textbook_ones():
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 1, 0])
    s = score_predictions(y_true, y_pred, ("a", "b", "c"))
    assert s["accuracy"] == round(4 / 6, 4)
    assert s["per_class"]["a"] == {"precision": round(2 / 3, 4), "recall": round(2 / 3, 4), "f1": round(2 / 3, 4),
                                   "support": 3}  # fmt: skip
    assert s["per_class"]["c"]["recall"] == 0.0
    assert s["confusion"] == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert s["macro_f1"] == round((2 / 3 + 0.8 + 0) / 3, 4)


def test_side_by_side_report_and_single_block_class_warning():
    cells = _cells()
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, cells.size)
    y[: 49 * 1] = 2  # class "c" lives in the first block (parent) only
    feats = {
        "embeddings": np.eye(3)[y] + rng.normal(0, 0.05, (cells.size, 3)),
        "histogram": rng.normal(0, 1, (cells.size, 4)),
    }
    report = cross_validate_features(feats, y, cells, ("a", "b", "c"), kind="logistic")
    assert set(report["features"]) == {"embeddings", "histogram"}
    assert report["features"]["embeddings"]["macro_f1"] > report["features"]["histogram"]["macro_f1"]
    assert report["counts"]["c"] == 49 and report["n_blocks"] == 30
    assert any("'c' lies in 1 block" in w for w in report["warnings"])
    with pytest.raises(InvalidInputError, match="one block"):
        cross_validate_features(feats, y, np.full(cells.size, cells[0]), ("a", "b", "c"), kind="logistic")


def test_classifier_factory_checks_names_and_params():
    assert classifier_params("random_forest", {"n_estimators": 50}, seed=3)["random_state"] == 3
    with pytest.raises(InvalidInputError, match="unknown classifier 'svm'"):
        make_classifier("svm")
    with pytest.raises(InvalidInputError, match="takes C, max_iter, not depth"):
        make_classifier("logistic", {"depth": 3})
    assert make_classifier("knn", min_class_size=2).n_neighbors == 2


@pytest.mark.parametrize("kind", CLASSIFIERS)
def test_saved_classifiers_load_back_and_predict_the_same(tmp_path, kind):
    rng = np.random.default_rng(0)
    x, y = rng.normal(0, 1, (60, 8)), np.arange(60) % 3
    model = make_classifier(kind, min_class_size=20).fit(x, y)
    again = load_classifier(save_classifier(model, tmp_path / "m.skops"))
    np.testing.assert_allclose(again.predict_proba(x), model.predict_proba(x), atol=1e-9)


class Sneaky:
    """Stands for any type a tampered file could ask the loader to build."""


def test_a_file_with_untrusted_types_is_refused_unrun(tmp_path):
    import skops.io as sio

    path = tmp_path / "bad.skops"
    sio.dump({"model": Sneaky()}, path)
    with pytest.raises(InvalidInputError, match=r"types VectorGeo does not trust: \['test_classify.Sneaky'\]"):
        load_classifier(path)
    junk = tmp_path / "junk.skops"
    junk.write_bytes(b"\x80\x04K\x01.")  # a pickle, not a skops file
    with pytest.raises(InvalidInputError, match="not a readable skops classifier file"):
        load_classifier(junk)


def test_derived_labels_take_pure_cells_of_the_commonest_classes():
    rng = np.random.default_rng(0)
    n = 400
    fractions = rng.dirichlet(np.ones(4) * 0.2, n)  # mostly near-pure patches
    h3 = np.arange(n, dtype=np.uint64) + 0x8828308281FFFFF
    doc = labels_from_fractions(h3, np.zeros(n), np.zeros(n), fractions, ["w", "x", "y", "z"], per_class=10,
                                max_classes=3)  # fmt: skip
    classes = [f["properties"]["class"] for f in doc["features"]]
    assert len(set(classes)) == 3 and all(classes.count(c) == 10 for c in set(classes))
    for f in doc["features"]:
        i = int(f["properties"]["h3"], 16) - 0x8828308281FFFFF
        assert fractions[i].max() >= 0.6 and ["w", "x", "y", "z"][fractions[i].argmax()] == f["properties"]["class"]
    with pytest.raises(InvalidInputError, match="fewer than 2 classes"):
        labels_from_fractions(h3, np.zeros(n), np.zeros(n), fractions, ["w", "x", "y", "z"], min_fraction=1.01)
