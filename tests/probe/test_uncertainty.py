"""Intervals and paired tests of the probe and its baselines: the values they rest on, and their repeatability."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal, stats

from apmae.probe.metrics import per_task_scores
from apmae.probe.uncertainty import BootstrapSettings, score_uncertainty, uncertainty_metric_dict

NAMES = ["ident", "ops", "eol"]


def _data(seed: int = 0, n: int = 120):
    rng = np.random.default_rng(seed)
    y = np.tile([True, False], n // 2)
    task = rng.integers(0, 3, n)
    probs = {"probe": np.clip(0.35 + 0.3 * y + 0.4 * rng.random(n) - 0.2, 0, 1),
             "stats_probe": rng.random(n), "confidence": np.clip(0.2 * y + rng.random(n) * 0.8, 0, 1),
             "probe_confidence": np.clip(0.4 * y + rng.random(n) * 0.6, 0, 1), "majority": np.full(n, 0.5)}
    return probs, y, task


def test_estimates_are_the_reported_scores():
    probs, y, task = _data()
    u = score_uncertainty(probs, y, task, NAMES, thresholds={"confidence": 0.41})
    for name, p in probs.items():
        scores = per_task_scores(p, y, task, NAMES, threshold=0.41 if name == "confidence" else 0.5)
        for t, s in scores.items():
            assert u[name][t].estimates["balanced_accuracy"] == pytest.approx(s.balanced_accuracy, abs=1e-6)
            assert u[name][t].estimates["auroc"] == pytest.approx(s.auroc, abs=1e-6)
            ci = u[name][t].intervals["balanced_accuracy"]
            assert ci.low <= s.balanced_accuracy + 1e-9 <= ci.high + 2e-9
    diff = u["probe"]["all"].tests["confidence"]["auroc"].difference
    assert diff == pytest.approx(u["probe"]["all"].estimates["auroc"] - u["confidence"]["all"].estimates["auroc"])


def test_balanced_accuracy_interval_is_that_of_two_binomials_resampled_per_class():
    # 20 correct scenarios with recall 0.7 and 20 incorrect with specificity 0.6: a class-stratified
    # bootstrap draws (X + Y) / 40 with X ~ Bin(20, 0.7), Y ~ Bin(20, 0.6), whose quantiles are exact
    y = np.array([True] * 20 + [False] * 20)
    p = np.array([0.9] * 14 + [0.1] * 6 + [0.1] * 12 + [0.9] * 8)
    u = score_uncertainty({"probe": p}, y, np.zeros(40, dtype=int), ["t"],
                          settings=BootstrapSettings(n_resamples=20000, seed=1))
    pmf = signal.convolve(stats.binom(20, 0.7).pmf(np.arange(21)), stats.binom(20, 0.6).pmf(np.arange(21)))
    cdf = np.cumsum(pmf)  # of X + Y = 0..40
    low, high = np.searchsorted(cdf, 0.025) / 40, np.searchsorted(cdf, 0.975) / 40
    ci = u["probe"]["t"].intervals["balanced_accuracy"]
    assert u["probe"]["t"].estimates["balanced_accuracy"] == pytest.approx(0.65)
    assert ci.low == pytest.approx(low, abs=1 / 40 + 1e-9) and ci.high == pytest.approx(high, abs=1 / 40 + 1e-9)


def test_a_predictor_against_itself_and_a_perfect_one():
    y = np.array([True, False] * 30)
    p = np.where(y, 0.8, 0.2)
    u = score_uncertainty({"probe": p, "confidence": p.copy()}, y, np.zeros(60, dtype=int), ["t"],
                          comparisons=[("probe", "confidence")])
    test = u["probe"]["all"].tests["confidence"]
    assert test["balanced_accuracy"].p_value == 1.0 and test["auroc"].difference == 0.0
    assert str(u["probe"]["t"].intervals["auroc"]) == "[1.00, 1.00]"


def test_a_clear_difference_is_significant_and_seeded_runs_repeat():
    probs, y, task = _data(seed=2, n=200)
    probs["probe"] = np.where(y, 0.9, 0.1) * 0.8 + 0.2 * probs["stats_probe"]
    a = score_uncertainty(probs, y, task, NAMES, settings=BootstrapSettings(seed=5))
    b = score_uncertainty(probs, y, task, NAMES, settings=BootstrapSettings(seed=5))
    assert a["probe"]["all"].tests["stats_probe"]["auroc"].p_value < 0.01
    assert uncertainty_metric_dict("test/probe", a["probe"]) == uncertainty_metric_dict("test/probe", b["probe"])
    keys = uncertainty_metric_dict("test/probe", a["probe"])
    assert {"test/probe/all/auroc/ci_low", "test/probe/ident/balanced_accuracy/ci_high",
            "test/probe/all/balanced_accuracy/p_vs_confidence", "test/probe/eol/auroc/p_vs_stats_probe"} <= set(keys)
    assert "majority" not in {k for t in a["probe"].values() for k in t.tests}
