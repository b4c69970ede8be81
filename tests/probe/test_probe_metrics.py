"""Probe scores: hand-computed values, the AUROC against pairwise counting, thresholds fitted on val."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from apmae.probe.metrics import auroc, best_threshold, binary_scores, metric_dict, per_task_scores


def test_binary_scores_by_hand() -> None:
    p = np.array([0.9, 0.8, 0.3, 0.6, 0.1])
    y = np.array([True, True, True, False, False])
    s = binary_scores(p, y)
    # predicted correct: rows 0, 1, 3 -> tp 2, fp 1, fn 1, tn 1
    assert s.accuracy == pytest.approx(3 / 5)
    assert s.balanced_accuracy == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert s.f1 == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    # pairs (pos, neg): (0.9,0.6) (0.9,0.1) (0.8,0.6) (0.8,0.1) (0.3,0.6)x (0.3,0.1) -> 5 of 6
    assert s.auroc == pytest.approx(5 / 6)
    assert s.n == 5


def test_auroc_equals_pairwise_counting_with_ties() -> None:
    rng = np.random.default_rng(0)
    p = rng.integers(0, 5, 40) / 4.0  # many ties
    y = rng.random(40) < 0.4
    pairs = [(a, b) for a, b in itertools.product(p[y], p[~y])]
    expected = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)
    assert auroc(p, y) == pytest.approx(expected)


def test_constant_predictor_has_balanced_accuracy_one_half() -> None:
    y = np.array([True] * 7 + [False] * 3)
    s = binary_scores(np.ones(10), y)
    assert s.accuracy == pytest.approx(0.7) and s.balanced_accuracy == pytest.approx(0.5)
    assert s.auroc == pytest.approx(0.5)


def test_one_class_gives_nan_auroc_not_an_error() -> None:
    assert math.isnan(binary_scores(np.array([0.2, 0.7]), np.array([True, True])).auroc)


def test_per_task_names_and_pooled_metric_keys() -> None:
    p = np.array([0.9, 0.2, 0.7, 0.4])
    y = np.array([True, False, False, True])
    scores = per_task_scores(p, y, np.array([0, 0, 2, 2]), ["eol", "keywords", "random"])
    assert set(scores) == {"eol", "random", "all"}
    assert scores["eol"].accuracy == 1.0 and scores["random"].accuracy == 0.0
    keys = metric_dict("test/probe", scores)
    assert keys["test/probe/eol/accuracy"] == 1.0 and keys["test/probe/all/n"] == 4.0


def test_best_threshold_separates_when_possible() -> None:
    p = np.array([0.10, 0.20, 0.25, 0.30, 0.35])
    y = np.array([False, False, True, True, True])
    t = best_threshold(p, y)
    assert 0.20 < t <= 0.25
    assert binary_scores(p, y, threshold=t).balanced_accuracy == 1.0


def test_mismatched_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="matching 1-D"):
        binary_scores(np.zeros(3), np.zeros(4, dtype=bool))


def test_torchmetrics_scores_agree_with_direct_counts_on_random_predictions() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        p = np.round(rng.random(200), 1)  # coarse values: many ties, some exactly at the threshold
        y = rng.random(200) < 0.4
        s = binary_scores(p, y, threshold=0.5)
        pred = p >= 0.5
        tp, tn, fp, fn = (pred & y).sum(), (~pred & ~y).sum(), (pred & ~y).sum(), (~pred & y).sum()
        assert s.accuracy == pytest.approx((tp + tn) / 200)
        assert s.balanced_accuracy == pytest.approx((tp / (tp + fn) + tn / (tn + fp)) / 2)
        assert s.f1 == pytest.approx(2 * tp / (2 * tp + fp + fn))
        assert s.auroc == pytest.approx(auroc(p, y), abs=1e-6)  # Mann-Whitney, ties half; torchmetrics sums in float32
