"""Uncertainty of the numbers a run reports: bootstrap intervals, exact tests, multiple-comparison control.

Glossary: N observations (scenarios), B bootstrap resamples, M statistics computed at once.

Every stage states its claims with these functions, so an interval or a p-value means the same
thing in the probe's table, the intervention curve, the reconstruction ratios and the pattern
families. Where scipy has the statistic it is used as is (``scipy.stats.bootstrap``,
``binomtest`` and its Wilson interval, ``false_discovery_control``); what is left here is how the
project's data is handed to them.

- :func:`stratified_bootstrap`: percentile intervals from resampling observations *within* strata
  (e.g. task x class, so each resample keeps the test split's balance); several statistics share
  the same resamples, which makes differences of two predictors paired.
- :func:`ratio_intervals`: a ratio of two sums (an error over a baseline's) with whole units resampled;
- :func:`paired_p_value`: two-sided p-value of "the difference is 0" from a paired bootstrap
  distribution of that difference; p < 1 - confidence exactly when the percentile interval of the
  difference excludes 0.
- :func:`wilson_interval`, :func:`mcnemar_exact`: an accuracy of n scenarios, and whether flips
  i2c against c2i are more lopsided than chance.
- :func:`rank_p_value`: where one value sits among values drawn under the null (random head sets).
- :func:`benjamini_hochberg`, :func:`holm`: adjusted p-values of a family of tests (false discovery rate,
  family-wise error);
- :func:`grouped_auroc_bootstrap`: AUROCs with intervals from resampling whole groups (source files),
  paired across predictors.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
N_RESAMPLES = 1000


@dataclass(frozen=True)
class Interval:
    """A two-sided confidence interval."""

    low: float
    high: float

    def __str__(self) -> str:
        return f"[{self.low:.2f}, {self.high:.2f}]"


NAN_INTERVAL = Interval(float("nan"), float("nan"))


@dataclass(frozen=True)
class BootstrapResult:
    """M statistics on the data and their bootstrap over the same B resamples."""

    estimate: np.ndarray  # (M,) the statistics on the data as observed
    low: np.ndarray  # (M,) percentile interval
    high: np.ndarray  # (M,)
    distribution: np.ndarray  # (M, B) the statistics on each resample (paired across the M)

    def interval(self, i: int) -> Interval:
        return Interval(float(self.low[i]), float(self.high[i]))


# statistic(resampled) -> (M, B): ``resampled`` holds, per stratum, (B, n_stratum) positions into that stratum
Statistic = Callable[[list[np.ndarray]], np.ndarray]


def stratified_bootstrap(statistic: Statistic, strata: Sequence[int], *, n_resamples: int = N_RESAMPLES,
                         seed: int = 0, confidence: float = CONFIDENCE) -> BootstrapResult:
    """Percentile intervals of ``statistic`` from resampling, with replacement, within each stratum.

    ``strata`` gives the size of each stratum; ``statistic`` receives one (B, size) integer array per
    stratum, the positions drawn in it (0..size-1), and returns an (M, B) array. A stratum of one
    observation always redraws itself (scipy resamples only strata of two or more). The same
    ``seed`` gives the same intervals, bit for bit.

    Raises:
        ValueError: no stratum, an empty stratum, fewer than 100 resamples, a confidence outside (0, 1).
    """
    sizes = [int(s) for s in strata]
    if not sizes or min(sizes) < 1:
        raise ValueError(f"stratum sizes {sizes}: give at least one stratum, each with an observation")
    if n_resamples < 100 or not 0 < confidence < 1:
        raise ValueError(f"n_resamples={n_resamples}, confidence={confidence}: use >= 100 resamples "
                         "(1000 or more for reported intervals) and a confidence in (0, 1)")
    drawn = [i for i, n in enumerate(sizes) if n >= 2]

    def full(resampled: Sequence[np.ndarray], batch: int) -> list[np.ndarray]:
        out = [np.zeros((batch, 1), dtype=np.int64) for _ in sizes]  # one-observation strata: position 0
        for i, positions in zip(drawn, resampled):
            out[i] = np.asarray(positions, dtype=np.int64).reshape(batch, -1)
        return out

    estimate = np.asarray(statistic([np.arange(n)[None, :] for n in sizes]), dtype=np.float64)[:, 0]
    if not drawn:  # nothing varies: the interval is the point
        dist = np.repeat(estimate[:, None], n_resamples, axis=1)
        return BootstrapResult(estimate, estimate.copy(), estimate.copy(), dist)

    def vectorized(*resampled: np.ndarray, axis: int = -1) -> np.ndarray:
        batch = int(np.prod(resampled[0].shape[:-1]))
        return np.asarray(statistic(full(resampled, batch)), dtype=np.float64)

    with warnings.catch_warnings():
        # a statistic that never varies (a constant predictor, a perfect one) is a valid answer here: its
        # percentile interval is the point, which scipy returns while warning as if it were an error
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        result = stats.bootstrap([np.arange(sizes[i]) for i in drawn], vectorized, n_resamples=n_resamples,
                                 confidence_level=confidence, method="percentile", vectorized=True,
                                 rng=np.random.default_rng(seed))
    low, high = np.atleast_1d(result.confidence_interval.low), np.atleast_1d(result.confidence_interval.high)
    return BootstrapResult(estimate, low, high, np.atleast_2d(result.bootstrap_distribution))


def ratio_intervals(numerator: np.ndarray, denominators: np.ndarray, *, n_resamples: int = N_RESAMPLES,
                    seed: int = 0, confidence: float = CONFIDENCE) -> list[Interval]:
    """Intervals of ``sum(numerator) / sum(denominator)`` for each row of ``denominators``, resampling units.

    ``numerator`` (N,) and ``denominators`` (M, N) hold one value per unit (e.g. the summed squared
    error of each validation scenario), so the bootstrap draws whole units, never their pixels;
    the M ratios share the resamples.
    """
    num = np.asarray(numerator, dtype=np.float64)
    den = np.atleast_2d(np.asarray(denominators, dtype=np.float64))
    if den.shape[1] != len(num) or not len(num):
        raise ValueError(f"numerator {num.shape} and denominators {den.shape} must share a non-empty unit axis")

    def statistic(resampled: list[np.ndarray]) -> np.ndarray:
        idx = resampled[0]  # (B, N)
        return num[idx].sum(1)[None, :] / den[:, idx].sum(2)  # (M, B)

    boot = stratified_bootstrap(statistic, [len(num)], n_resamples=n_resamples, seed=seed, confidence=confidence)
    return [boot.interval(i) for i in range(len(den))]


def percentile_interval(distribution: np.ndarray, *, confidence: float = CONFIDENCE) -> Interval:
    """The percentile interval at ``confidence`` of a bootstrap distribution (B,), NaNs ignored."""
    tail = 100 * (1 - confidence) / 2
    return Interval(*np.nanpercentile(distribution, [tail, 100 - tail]))


def paired_p_value(difference: np.ndarray) -> float:
    """Two-sided p-value of "no difference" from a paired bootstrap distribution (B,) of a difference.

    ``2 * min(P(d* <= 0), P(d* >= 0))``, each share counted as ``(1 + hits) / (1 + B)`` so that it
    is never 0 and a difference that sits exactly on 0 in every resample gives 1.
    """
    d = np.asarray(difference, dtype=np.float64)
    d = d[np.isfinite(d)]
    if not len(d):
        return float("nan")
    below, above = (1 + np.sum(d <= 0)) / (1 + len(d)), (1 + np.sum(d >= 0)) / (1 + len(d))
    return float(min(1.0, 2 * min(below, above)))


def wilson_interval(successes: int, n: int, *, confidence: float = CONFIDENCE) -> Interval:
    """Wilson score interval of a proportion ``successes / n`` (NaN for n = 0)."""
    if n == 0:
        return NAN_INTERVAL
    ci = stats.binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return Interval(float(ci.low), float(ci.high))


def mcnemar_exact(i2c: int, c2i: int) -> float:
    """Exact (binomial) McNemar p-value, two-sided, of discordant pairs ``i2c`` against ``c2i``; 1 without any."""
    if i2c + c2i == 0:
        return 1.0
    return float(stats.binomtest(int(i2c), int(i2c + c2i), 0.5).pvalue)


def prediction_p_value(value: float, null: Sequence[float], *, alternative: str = "two-sided") -> float:
    """p of ``value`` as one more draw of the distribution the ``null`` values come from: a t prediction
    interval (mean and spread of ``null``, ``len(null) - 1`` degrees of freedom), ``greater`` (``value``
    above the null) or ``two-sided``. NaN with fewer than two null values; a null without spread gives 0
    or 1. Unlike :func:`rank_p_value`, it can go below ``1 / (len(null) + 1)``.

    Raises:
        ValueError: an unknown ``alternative``.
    """
    if alternative not in ("greater", "two-sided"):
        raise ValueError(f"alternative={alternative!r}; use 'greater' or 'two-sided'")
    null = np.asarray(null, dtype=np.float64)
    m = len(null)
    if m < 2:
        return float("nan")
    mean, sd = float(null.mean()), float(null.std(ddof=1))
    if sd == 0.0:
        beyond = value > mean if alternative == "greater" else value != mean
        return 0.0 if beyond else 1.0
    t = (value - mean) / (sd * np.sqrt(1 + 1 / m))
    return float(stats.t.sf(t, df=m - 1) if alternative == "greater" else 2 * stats.t.sf(abs(t), df=m - 1))


def rank_p_value(observed: float, null: Sequence[float]) -> float:
    """Two-sided p-value of ``observed`` among ``null`` draws: ``2 * min(share >=, share <=)`` with +1 smoothing.

    With m draws the smallest possible value is ``2 / (m + 1)``: 5 random head sets can never reject at 0.05.
    """
    values = np.asarray(null, dtype=np.float64)
    if not len(values) or not np.isfinite(observed):
        return float("nan")
    above = (1 + np.sum(values >= observed)) / (1 + len(values))
    below = (1 + np.sum(values <= observed)) / (1 + len(values))
    return float(min(1.0, 2 * min(above, below)))


def benjamini_hochberg(p_values: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (false discovery rate); NaN entries stay NaN and are not counted."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = stats.false_discovery_control(p[ok], method="bh")
    return out


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (family-wise error); NaN entries stay NaN and are not counted."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    order = ok[np.argsort(p[ok], kind="mergesort")]
    m = len(order)
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order]) if m else np.array([])
    out[order] = np.minimum(adjusted, 1.0)
    return out


def grouped_auroc_bootstrap(scores: np.ndarray, y: np.ndarray, groups: np.ndarray, *,
                            n_resamples: int = N_RESAMPLES, seed: int = 0,
                            confidence: float = CONFIDENCE) -> BootstrapResult:
    """AUROC of each row of ``scores`` (M, N) against ``y`` (N,), with intervals from resampling whole groups.

    Each resample draws the G groups (source files) with replacement and weights every scenario by
    how often its group was drawn; all M rows share the draws, so differences are paired. A resample
    left with one class only gives NaN there (ignored by the percentiles).
    """
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    y = np.asarray(y, dtype=bool)
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    n_groups = int(inverse.max()) + 1 if len(inverse) else 0
    if n_resamples < 100 or not n_groups:
        raise ValueError(f"n_resamples={n_resamples} with {n_groups} groups: use >= 100 resamples and some data")
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_resamples, n_groups))
    np.add.at(counts, (np.arange(n_resamples)[:, None], rng.integers(0, n_groups, (n_resamples, n_groups))), 1.0)
    weights = np.vstack([np.ones((1, len(y))), counts[:, inverse]])  # row 0: the data as observed
    values = np.stack([_weighted_auroc(row, y, weights) for row in scores])  # (M, 1 + B)
    dist = values[:, 1:]
    tail = 100 * (1 - confidence) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: no interval
        low, high = np.nanpercentile(dist, tail, axis=1), np.nanpercentile(dist, 100 - tail, axis=1)
    return BootstrapResult(values[:, 0], low, high, dist)


def _weighted_auroc(score: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(K,) AUROC of one score vector under K weightings (K, N) of the scenarios; ties count half."""
    order = np.argsort(score, kind="mergesort")
    sorted_score = score[order]
    starts = np.flatnonzero(np.r_[True, sorted_score[1:] != sorted_score[:-1]])  # first of each tie block
    w = weights[:, order]
    pos = np.add.reduceat(w * y[order], starts, axis=1)  # (K, U) weight of correct scenarios per score value
    neg = np.add.reduceat(w * ~y[order], starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg  # negatives strictly below each value
    total = pos.sum(1) * neg.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (pos * (below + 0.5 * neg)).sum(1) / total, np.nan)


__all__ = ["BootstrapResult", "CONFIDENCE", "Interval", "NAN_INTERVAL", "N_RESAMPLES", "benjamini_hochberg",
           "grouped_auroc_bootstrap", "holm", "mcnemar_exact", "paired_p_value", "percentile_interval",
           "prediction_p_value", "rank_p_value", "ratio_intervals", "stratified_bootstrap", "wilson_interval"]
