"""Intervals and tests of intervention settings against hand computations on a hand-made sweep."""

from __future__ import annotations

import numpy as np
import pytest

from apmae.common.stats import wilson_interval
from apmae.interventions.head_sets import HeadSet
from apmae.interventions.report import RESULT_FIELDS, curve_figure, key_numbers, result_rows
from apmae.interventions.significance import setting_tests, significance_metric_values
from apmae.interventions.sweep import InterventionScenarios, Outcome, SettingResult, SweepResult, score

N = 20
BASE = np.arange(N) < 10  # the first 10 scenarios right without intervention


def _outcome(correct: np.ndarray) -> Outcome:
    return Outcome(prediction=np.zeros(N, dtype=np.int64), correct=correct, loss=np.ones(N, dtype=np.float32),
                   generated=np.zeros((N, 1), dtype=np.int64), token_hits=correct.astype(int), exact=correct.copy())


def _sweep(scope: str = "all") -> SweepResult:
    positive = BASE.copy()
    positive[10:19] = True  # 9 incorrect -> correct
    positive[0] = False  # 1 correct -> incorrect
    settings = {("positive", None): positive, ("negative", None): BASE.copy()}
    for seed, right in enumerate([10, 9, 11, 10, 8]):  # random accuracies 0.50 0.45 0.55 0.50 0.40
        settings[("random", seed)] = np.arange(N) < right
    scenarios = InterventionScenarios(input_ids=np.zeros((N, 3), np.int64), label_ids=np.ones((N, 1), np.int64),
                                      label_len=np.ones(N, int), task=np.zeros(N, int), task_names=["eol"],
                                      scenario_index=np.arange(N))
    baseline = _outcome(BASE)
    results = [SettingResult(HeadSet(strategy, 1, seed, ((0, 0),)), _outcome(c), score(_outcome(c), baseline,
                                                                                      scenarios.label_len))
               for (strategy, seed), c in settings.items()]
    return SweepResult(scenarios=scenarios, baseline=baseline, settings=results, n_heads_total=4, scope=scope)


def test_each_setting_gets_wilson_mcnemar_and_its_rank_among_random_heads():
    tests = setting_tests([_sweep()])
    pos = tests[("all", "positive", 1, None)]
    assert pos.accuracy_ci == wilson_interval(18, 20)
    assert pos.p_mcnemar == pytest.approx(2 * 11 / 1024)  # i2c = 9, c2i = 1: 2 * P(Bin(10, 1/2) <= 1)
    assert pos.p_vs_random == pytest.approx(2 / 6) and pos.n_random == 5  # above all 5 random sets
    assert tests[("all", "negative", 1, None)].p_mcnemar == 1.0
    # BH over the two ranked settings: 2 * 22/1024 for the smaller, 1 for the other
    assert pos.p_mcnemar_bh == pytest.approx(2 * 22 / 1024)
    assert tests[("all", "negative", 1, None)].p_mcnemar_bh == 1.0
    assert np.isnan(tests[("all", "random", 1, 3)].p_mcnemar_bh)


def test_the_family_spans_every_sweep_of_the_evaluation():
    tests = setting_tests([_sweep(), _sweep("eol")])
    # four ranked settings: p = 22/1024 twice and 1 twice -> the two small ones (ranks 1, 2) times 4 / 2
    assert tests[("eol", "positive", 1, None)].p_mcnemar_bh == pytest.approx(22 / 1024 * 4 / 2)
    values = significance_metric_values(tests, prefix="test/interventions")
    assert values["test/interventions/positive/k1/p_mcnemar"] == pytest.approx(22 / 1024)
    assert values["test/interventions/per_task/eol/positive/k1/accuracy/ci_low"] == pytest.approx(
        wilson_interval(18, 20).low)
    assert not any("/random/" in k for k in values)


def test_tables_curve_and_key_numbers_carry_the_tests():
    sweep = _sweep()
    tests = setting_tests([sweep])
    rows = result_rows([sweep], tests)
    assert set(rows[0]) == set(RESULT_FIELDS)
    assert rows[0]["p_mcnemar"] == pytest.approx(22 / 1024)
    assert rows[0]["accuracy_ci_high"] == wilson_interval(18, 20).high
    assert result_rows([sweep])[0]["p_mcnemar"] is None
    assert key_numbers(sweep, tests).lines()[0].endswith(f"no intervention accuracy 0.500 {wilson_interval(10, 20)}"
                                                         ", exact match 0.500")
    line = key_numbers(sweep, tests).lines()[1]
    assert line.endswith(f"| 95 % {wilson_interval(18, 20)}, McNemar p 0.021 (BH 0.043), vs 5 random sets p 0.33")
    fig = curve_figure(sweep, title="t", tests=tests)
    bars = [c for c in fig.axes[0].containers if type(c).__name__ == "ErrorbarContainer"]
    assert len(bars) == 2  # positive and negative; random keeps its band
    segments = bars[0].lines[2][0].get_segments()
    np.testing.assert_allclose(segments[0][:, 1], [wilson_interval(18, 20).low, wilson_interval(18, 20).high])
