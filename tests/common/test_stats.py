"""The shared statistics against hand computations and textbook values, and their seeded repeatability."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from apmae.common.stats import (benjamini_hochberg, mcnemar_exact, paired_p_value, rank_p_value, ratio_intervals,
                                stratified_bootstrap, wilson_interval)


def _mean_of(values: np.ndarray):
    def statistic(resampled):
        return values[resampled[0]].mean(axis=1)[None, :]  # (1, B)
    return statistic


def test_mcnemar_exact_matches_the_textbook_table():
    # Fagerland, Lydersen & Laake (2013), BMC Med Res Methodol 13:91: b = 1, c = 7 discordant pairs,
    # exact conditional McNemar p = 0.070 = 2 * (C(8,0) + C(8,1)) / 2^8
    assert mcnemar_exact(1, 7) == pytest.approx(18 / 256, abs=1e-12)
    assert mcnemar_exact(7, 1) == pytest.approx(18 / 256, abs=1e-12)
    assert mcnemar_exact(1, 9) == pytest.approx(22 / 1024, abs=1e-12)
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(4, 4) == 1.0


def test_wilson_interval_matches_the_formula():
    z = stats.norm.ppf(0.975)
    for k, n in [(3, 10), (0, 12), (128, 128), (61, 128)]:
        p = k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        ci = wilson_interval(k, n)
        assert ci.low == pytest.approx(centre - half, abs=1e-9) and ci.high == pytest.approx(centre + half, abs=1e-9)
    assert (round(wilson_interval(3, 10).low, 3), round(wilson_interval(3, 10).high, 3)) == (0.108, 0.603)
    assert math.isnan(wilson_interval(0, 0).low)


def test_rank_and_paired_p_values_by_hand():
    assert rank_p_value(0.9, [0.5, 0.6, 0.7, 0.8, 0.85]) == pytest.approx(2 / 6)  # the smallest 5 draws allow
    assert rank_p_value(0.7, [0.5, 0.6, 0.7, 0.8, 0.85]) == pytest.approx(1.0)
    assert paired_p_value(np.array([-1.0, 1.0, 2.0, 3.0])) == pytest.approx(2 * 2 / 5)
    assert paired_p_value(np.zeros(50)) == 1.0
    assert paired_p_value(np.ones(999)) == pytest.approx(2 / 1000)


def test_benjamini_hochberg_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4 / rank = 0.02, 0.02, 0.04, 0.04 (then monotone from the top)
    adjusted = benjamini_hochberg([0.01, 0.04, 0.03, 0.005, float("nan")])
    np.testing.assert_allclose(adjusted[:4], [0.02, 0.04, 0.04, 0.02])
    assert math.isnan(adjusted[4])


def test_bootstrap_of_a_proportion_matches_its_exact_binomial_distribution():
    # resampling 40 observations with 12 ones: the bootstrap mean is exactly Binomial(40, 0.3) / 40
    values = np.array([1.0] * 12 + [0.0] * 28)
    boot = stratified_bootstrap(_mean_of(values), [40], n_resamples=20000, seed=3)
    exact = stats.binom(40, 0.3)
    assert boot.estimate[0] == pytest.approx(0.3)
    assert boot.low[0] == pytest.approx(exact.ppf(0.025) / 40, abs=1 / 40 + 1e-9)
    assert boot.high[0] == pytest.approx(exact.ppf(0.975) / 40, abs=1 / 40 + 1e-9)
    assert boot.distribution.mean() == pytest.approx(0.3, abs=0.003)
    assert boot.distribution.var() == pytest.approx(0.3 * 0.7 / 40, rel=0.05)


def test_bootstrap_resamples_within_strata_and_repeats_with_its_seed():
    # two strata: a share of ones per stratum stays a share of that stratum (the first is all ones)
    values = [np.ones(10), np.array([0.0, 1.0] * 5)]

    def statistic(resampled):
        return np.stack([values[0][resampled[0]].mean(1), values[1][resampled[1]].mean(1)])

    a = stratified_bootstrap(statistic, [10, 10], n_resamples=500, seed=7)
    b = stratified_bootstrap(statistic, [10, 10], n_resamples=500, seed=7)
    c = stratified_bootstrap(statistic, [10, 10], n_resamples=500, seed=8)
    assert (a.low[0], a.high[0]) == (1.0, 1.0)
    np.testing.assert_array_equal(a.distribution, b.distribution)
    assert not np.array_equal(a.distribution, c.distribution)
    single = stratified_bootstrap(lambda r: np.stack([r[0].mean(1) + 5.0]), [1], n_resamples=100)
    assert (single.low[0], single.high[0]) == (5.0, 5.0)


def test_bootstrap_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="resamples"):
        stratified_bootstrap(_mean_of(np.ones(5)), [5], n_resamples=10)
    with pytest.raises(ValueError, match="stratum"):
        stratified_bootstrap(_mean_of(np.ones(5)), [5, 0])


def test_ratio_intervals_of_proportional_units_are_the_proportion():
    den = np.array([1.0, 4.0, 2.0, 8.0, 5.0])
    twice, varied = ratio_intervals(2 * den, np.stack([den, den * np.array([1, 2, 1, 2, 1])]), n_resamples=200)
    assert (twice.low, twice.high) == (pytest.approx(2.0), pytest.approx(2.0))
    assert 2 / 2 <= varied.low < 2 * 20 / 32 < varied.high <= 2.0  # observed ratio 40 / 32 lies inside
    with pytest.raises(ValueError, match="unit axis"):
        ratio_intervals(den, np.ones((2, 4)))
