"""Cluster-id probe: CatBoost's SHAP layout, a one-head classifier ranked first, splits, CSV round trip."""

from __future__ import annotations

import csv
import sys

import numpy as np
import pytest

from apmae.patterns.cluster_probe import (PREFIX, ClusterProbeConfig, evaluation_rows, feature_names, fit_cluster_probe,
                                 split_shap, write_importance_csv)
from apmae.common.optional import MissingExtraError
from apmae.probe.metrics import METRICS

TASK_NAMES = ["identifiers", "eol"]
PLANTED = (0, 1)  # neither the first nor the last feature, so an off-by-one column read moves it


def _one_head_data(n: int = 300, seed: int = 0) -> dict[str, np.ndarray]:
    """(N, 2, 3) random cluster ids; correct iff head ``PLANTED`` is in cluster 1; 60/20/20 splits."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(-1, 3, size=(n, 2, 3))
    return {"labels": labels, "correct": labels[:, PLANTED[0], PLANTED[1]] == 1,
            "split": np.select([np.arange(n) % 5 < 3, np.arange(n) % 5 == 3], [0, 1], 2),
            "task": np.arange(n) % 2}


def test_catboost_shap_matrix_ends_with_the_expected_value() -> None:
    from catboost import CatBoostClassifier, Pool

    d = _one_head_data()
    x = d["labels"].reshape(len(d["labels"]), -1)
    pool = Pool(x, d["correct"].astype(int), cat_features=list(range(6)), feature_names=feature_names(2, 3))
    model = CatBoostClassifier(iterations=60, depth=3, verbose=False, allow_writing_files=False, thread_count=1,
                               random_seed=0).fit(pool)
    values, expected = split_shap(model.get_feature_importance(pool, type="ShapValues"), 6)
    raw = model.predict(pool, prediction_type="RawFormulaVal")
    np.testing.assert_allclose(values.sum(1) + expected, raw, atol=1e-6)  # each row sums to its log-odds
    assert np.ptp(expected) == 0.0  # the last column is one constant: the expected value
    assert int(np.argmax(np.abs(values).mean(0))) == feature_names(2, 3).index("l0h1")


def test_probe_on_one_head_ranks_that_head_first_and_is_perfect_on_test() -> None:
    d = _one_head_data()
    result = fit_cluster_probe(d["labels"], correct=d["correct"], split=d["split"], task=d["task"],
                               task_names=TASK_NAMES, config=ClusterProbeConfig(iterations=200))
    assert np.unravel_index(np.argmax(result.shap.mean_abs), (2, 3)) == PLANTED
    others = np.delete(result.shap.mean_abs.ravel(), np.ravel_multi_index(PLANTED, (2, 3)))
    assert others.max() < 0.1 * result.shap.mean_abs[PLANTED]
    np.testing.assert_allclose(result.shap.mean_positive + result.shap.mean_negative, result.shap.mean)
    assert result.scores["all"].balanced_accuracy == 1.0 and result.n_test == 60
    assert result.eval_source == "val" and result.n_eval == 60 and result.n_train == 180
    assert set(result.metrics) == {f"{PREFIX}/{t}/{m}" for t in [*TASK_NAMES, "all"] for m in METRICS}
    assert result.metrics["test/cluster_probe/all/n"] == 60


def test_evaluation_rows_hold_out_a_stratified_tenth_of_train_without_val() -> None:
    split = np.array([0] * 100 + [2] * 20)
    correct = np.arange(120) % 4 == 0  # 25 correct, 75 incorrect among train
    train, held, test, source = evaluation_rows(split, correct, holdout=0.1, seed=0)
    assert source == "train holdout" and test.tolist() == list(range(100, 120))
    assert correct[held].sum() == 2 and (~correct[held]).sum() == 8  # round(2.5) = 2, round(7.5) = 8
    assert np.intersect1d(train, held).size == 0 and len(train) + len(held) == 100


def test_probe_refuses_missing_test_split_and_single_class_train() -> None:
    with pytest.raises(ValueError, match="test split, which is empty"):
        evaluation_rows(np.zeros(50), np.arange(50) % 2 == 0, holdout=0.1, seed=0)
    with pytest.raises(ValueError, match="all incorrect"):
        evaluation_rows(np.array([0] * 40 + [1] * 5 + [2] * 5), np.arange(50) >= 40, holdout=0.1, seed=0)


def test_importance_csv_round_trip_layer_major(tmp_path) -> None:
    importance = np.array([[0.5, -0.25, 0.0], [1e-9, -3.0, 2.0]])
    path = write_importance_csv(tmp_path / "head_importance" / "cluster_probe_importance.csv", importance)
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["layer", "head", "importance"]
    assert [(int(r["layer"]), int(r["head"])) for r in rows] == [(l, h) for l in range(2) for h in range(3)]
    assert [float(r["importance"]) for r in rows] == importance.ravel().tolist()


def test_missing_catboost_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "catboost", None)
    d = _one_head_data(50)
    with pytest.raises(MissingExtraError, match=r"probe needs .*'catboost'.*pip install 'apmae\[analysis\]'"):
        fit_cluster_probe(d["labels"], correct=d["correct"], split=d["split"], task=d["task"], task_names=TASK_NAMES)


def test_balanced_rows_are_the_probe_datamodules_rows(tmp_path) -> None:
    from apmae.cache.store import AttentionCache
    from apmae.encodings.rows import select_rows
    from tests.probe.synthetic_cache import write_planted_cache

    paths = write_planted_cache(tmp_path, n=200)
    cache = AttentionCache(paths)
    split, correct, task = cache.split, cache.correct, cache.task
    train, val, test, source = evaluation_rows(split, correct, holdout=0.1, seed=0, task=task, balance_seed=3)
    assert source == "val"
    for rows, name in ((train, "train"), (val, "val"), (test, "test")):
        np.testing.assert_array_equal(rows, select_rows(cache, name, balance=True, seed=3))
        for t in np.unique(task[rows]):  # balanced: as many correct as incorrect per task
            in_task = rows[task[rows] == t]
            assert correct[in_task].sum() * 2 == len(in_task)
    unbalanced = evaluation_rows(split, correct, holdout=0.1, seed=0)[2]
    assert set(test) < set(unbalanced)
