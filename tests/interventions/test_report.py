"""Report of a sweep from hand-made outcomes: metrics, random mean and spread, tables, key numbers."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from apmae.interventions.head_sets import HeadSet
from apmae.interventions.report import (RESULT_FIELDS, TASK_FIELDS, curve, key_numbers, metric_values, result_rows,
                                       task_rows, write_csv)
from apmae.interventions.sweep import InterventionScenarios, Outcome, SweepResult, SettingResult, score

LABEL_LEN = np.array([1, 2, 2, 1])
TASKS = np.array([0, 0, 1, 1])


def _outcome(correct, exact, hits):
    correct = np.array(correct, dtype=bool)
    return Outcome(prediction=np.zeros(4, dtype=np.int64), correct=correct, loss=np.array([1.0, 2.0, 3.0, 4.0]),
                   generated=np.zeros((4, 2), dtype=np.int64), token_hits=np.array(hits), exact=np.array(exact, bool))


BASELINE = _outcome([1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0])
SETTINGS = {  # (strategy, k, seed): correct per scenario
    ("positive", 1, None): [1, 1, 1, 0],
    ("positive", 4, None): [0, 0, 0, 0],
    ("negative", 1, None): [0, 1, 0, 0],
    ("negative", 4, None): [0, 0, 0, 0],
    ("random", 1, 0): [1, 1, 0, 1],
    ("random", 1, 1): [1, 0, 0, 0],
    ("random", 4, 0): [0, 0, 0, 0],
    ("random", 4, 1): [0, 0, 0, 0],
}


@pytest.fixture
def sweep():
    scenarios = InterventionScenarios(input_ids=np.zeros((4, 3), np.int64), label_ids=np.ones((4, 2), np.int64),
                                      label_len=LABEL_LEN, task=TASKS, task_names=["identifiers", "eol"],
                                      scenario_index=np.arange(10, 14))
    settings = []
    for (strategy, k, seed), correct in SETTINGS.items():
        out = _outcome(correct, correct, correct)
        heads = tuple((0, h) for h in range(k))
        settings.append(SettingResult(HeadSet(strategy, k, seed, heads), out, score(out, BASELINE, LABEL_LEN)))
    return SweepResult(scenarios=scenarios, baseline=BASELINE, settings=settings, n_heads_total=4)


def test_score_by_hand():
    m = score(_outcome([1, 0, 1, 1], [0, 0, 1, 1], [0, 1, 2, 1]), BASELINE, LABEL_LEN)
    assert (m.n, m.accuracy, m.baseline_accuracy, m.delta_accuracy, m.i2c, m.c2i) == (4, 0.75, 0.5, 0.25, 2, 1)
    assert (m.label_loss, m.exact_match, m.token_accuracy) == (2.5, 0.5, 4 / 6)


def test_random_is_reported_as_mean_and_spread_over_seeds(sweep):
    values = metric_values(sweep)
    assert values["interventions/random/k1/accuracy"] == pytest.approx((0.75 + 0.25) / 2)
    assert values["interventions/random/k1/accuracy_std"] == pytest.approx(0.25)
    assert values["interventions/random/k1/i2c"] == pytest.approx(0.5) and values["interventions/random/k1/c2i"] == 0.5
    assert values["interventions/positive/k1/delta_accuracy"] == pytest.approx(0.25)
    assert "interventions/positive/k1/accuracy_std" not in values
    assert values["interventions/baseline/accuracy"] == 0.5 and values["interventions/baseline/exact_match"] == 0.25
    assert [(p.strategy, p.k, p.n_seeds) for p in curve(sweep)] == [
        ("positive", 1, 1), ("positive", 4, 1), ("negative", 1, 1), ("negative", 4, 1), ("random", 1, 2),
        ("random", 4, 2)]
    sweep.scope = "eol"
    assert "test/interventions/per_task/eol/positive/k1/accuracy" in metric_values(sweep, prefix="test/interventions")


def test_key_numbers(sweep):
    key = key_numbers(sweep)
    (pos, neg) = key.peaks
    assert (pos.strategy, pos.k, pos.accuracy, pos.delta_accuracy) == ("positive", 1, 0.75, 0.25)
    assert (neg.k, neg.delta_accuracy) == (1, -0.25)  # the smaller loss of the two ks
    assert (pos.random_accuracy, pos.random_std) == (pytest.approx(0.5), pytest.approx(0.25))
    assert (key.all_heads_accuracy, key.all_heads_exact_match, key.random_mean_delta) == (0.0, 0.0, 0.0)
    lines = key.lines()
    assert "positive best k=1: accuracy 0.750 (+0.250) | random k=1: 0.500 +- 0.250" in lines[1]
    assert lines[3] == "  all 4 heads zeroed: accuracy 0.000, exact match 0.000"
    # baseline 0.5: negative k=1 (0.25) and random k=1 (mean 0.5) vs k=4 (0.0) reach half of it at different k
    assert key.collapse == {"positive": 4, "negative": 1, "random": 4}
    assert lines[-1] == "  collapse (accuracy at most half of no intervention's) from: positive k=4, negative k=1, random k=4"


def test_tables(sweep, tmp_path):
    rows = result_rows([sweep])
    assert len(rows) == len(SETTINGS) and rows[1]["heads"] == "0.0;0.1;0.2;0.3" and rows[4]["seed"] == 0
    path = write_csv(rows, tmp_path / "results.csv", RESULT_FIELDS)
    read = list(csv.DictReader(path.open()))
    assert read[0]["seed"] == "" and float(read[0]["accuracy"]) == 0.75 and read[0]["i2c"] == "1"
    by_task = task_rows([sweep])
    assert len(by_task) == 2 * len(SETTINGS) and set(by_task[0]) == set(TASK_FIELDS)
    first = {r["task"]: r for r in by_task[:2]}  # positive k=1: identifiers 2/2 (as before), eol 1/2 (was 0/2)
    assert (first["identifiers"]["accuracy"], first["identifiers"]["delta_accuracy"]) == (1.0, 0.0)
    assert (first["eol"]["accuracy"], first["eol"]["i2c"], first["eol"]["n"]) == (0.5, 1, 2)
