"""Intervals and paired tests for the correctness probe and its baselines, per task and pooled.

Glossary: N scenarios, B bootstrap resamples. ``probs`` maps a predictor to its probabilities
(N,), ``y`` (N,) is the truth, ``task`` (N,) an index into ``task_names``; as in
:mod:`apmae.probe.metrics`, whose ``balanced_accuracy`` and ``auroc`` are what is bootstrapped.

The bootstrap is stratified: a task's scenarios are resampled within each class (pooled: within
each task x class), so every resample keeps the test split's balance and task mix. All predictors
are scored on the same resamples, so a comparison (``probe`` against ``confidence``, ...) is a
paired bootstrap of their difference on the same scenarios; its p-value is
:func:`apmae.common.stats.paired_p_value`. AUROC on a resample is exact: the Mann-Whitney count
over the resampled (correct, incorrect) pairs, read from the pair matrix of the observed scenarios.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from apmae.common.stats import (CONFIDENCE, N_RESAMPLES, NAN_INTERVAL, BootstrapResult, Interval, paired_p_value,
                                stratified_bootstrap)
from apmae.probe.metrics import POOLED, BinaryScores

# (predictor, the baseline it is tested against): does the probe add to what the target knows,
# to what plain pattern statistics know, and does it add to confidence when given both
COMPARISONS = (("probe", "confidence"), ("probe", "stats_probe"), ("probe_confidence", "confidence"))
INTERVAL_METRICS = ("balanced_accuracy", "auroc")


@dataclass(frozen=True)
class BootstrapSettings:
    """How the intervals are drawn."""

    n_resamples: int = N_RESAMPLES  # resamples per task (and pooled)
    seed: int = 0  # the same seed gives the same intervals
    confidence: float = CONFIDENCE  # two-sided interval level; tests are called significant at 1 - confidence


@dataclass(frozen=True)
class PairedTest:
    """One predictor against another on the same scenarios."""

    difference: float  # predictor - other, on the observed scenarios
    interval: Interval  # bootstrap interval of the difference
    p_value: float  # two-sided, paired bootstrap


@dataclass(frozen=True)
class ScoreUncertainty:
    """Intervals of one predictor on one task's scenarios, and its paired tests."""

    estimates: dict[str, float]  # metric -> value on the observed scenarios (as apmae.probe.metrics scores it)
    intervals: dict[str, Interval]  # metric -> interval
    tests: dict[str, dict[str, PairedTest]] = field(default_factory=dict)  # other predictor -> metric -> test


def score_uncertainty(probs: Mapping[str, np.ndarray], y: np.ndarray, task: np.ndarray, task_names: Sequence[str],
                      *, thresholds: Mapping[str, float] | None = None,
                      comparisons: Sequence[tuple[str, str]] = COMPARISONS,
                      settings: BootstrapSettings = BootstrapSettings()) -> dict[str, dict[str, ScoreUncertainty]]:
    """``{predictor: {task: ScoreUncertainty}}`` for every task present and pooled (``all``).

    ``thresholds`` per predictor as the scores used them (default 0.5). Comparisons of a predictor
    that is absent are left out. Each task draws with its own seed (``settings.seed`` + its index).
    """
    y, task = np.asarray(y, dtype=bool), np.asarray(task)
    thresholds = dict(thresholds or {})
    names = list(probs)
    pairs = [(a, b) for a, b in comparisons if a in probs and b in probs]
    predicted = {k: np.asarray(probs[k], dtype=np.float64) >= thresholds.get(k, 0.5) for k in names}
    groups = [(task_names[int(t)], task == t) for t in np.unique(task)] + [(POOLED, np.ones(len(y), dtype=bool))]
    out: dict[str, dict[str, ScoreUncertainty]] = {k: {} for k in names}
    for offset, (group, keep) in enumerate(groups):
        result = _group(probs, predicted, y, task, keep, names, pairs, settings, seed=settings.seed + offset)
        for k in names:
            out[k][group] = result[k]
    return out


def _group(probs: Mapping[str, np.ndarray], predicted: Mapping[str, np.ndarray], y: np.ndarray, task: np.ndarray,
           keep: np.ndarray, names: list[str], pairs: list[tuple[str, str]], settings: BootstrapSettings, *,
           seed: int) -> dict[str, ScoreUncertainty]:
    """Bootstrap one group of scenarios: 2 statistics per predictor, then 2 differences per comparison."""
    strata = [np.flatnonzero(keep & (task == t) & (y == c)) for t in np.unique(task[keep]) for c in (True, False)]
    strata = [s for s in strata if len(s)]
    is_pos = [bool(y[s[0]]) for s in strata]
    pos = np.concatenate([s for s, p in zip(strata, is_pos) if p] or [np.zeros(0, dtype=np.int64)])
    neg = np.concatenate([s for s, p in zip(strata, is_pos) if not p] or [np.zeros(0, dtype=np.int64)])
    # where each stratum's positions land in the concatenated pos / neg lists
    starts, seen = [], {True: 0, False: 0}
    for s, p in zip(strata, is_pos):
        starts.append(seen[p])
        seen[p] += len(s)
    pairs_matrix = {k: _pair_matrix(probs[k][pos], probs[k][neg]) for k in names}
    hits = {k: (predicted[k][pos].astype(np.float64), (~predicted[k][neg]).astype(np.float64)) for k in names}

    def statistic(resampled: list[np.ndarray]) -> np.ndarray:
        batch = resampled[0].shape[0]
        count_pos, count_neg = np.zeros((batch, len(pos))), np.zeros((batch, len(neg)))
        for positions, start, p in zip(resampled, starts, is_pos):
            counts = count_pos if p else count_neg
            np.add.at(counts, (np.arange(batch)[:, None], positions + start), 1.0)
        values = {}
        for k in names:
            recalls = [c @ h / len(h) for c, h in zip((count_pos, count_neg), hits[k]) if len(h)]
            values[k] = (np.mean(recalls, axis=0), _auroc(count_pos, pairs_matrix[k], count_neg))
        rows = [v for k in names for v in values[k]]
        rows += [values[a][i] - values[b][i] for a, b in pairs for i in range(len(INTERVAL_METRICS))]
        return np.stack(rows)

    boot = stratified_bootstrap(statistic, [len(s) for s in strata], n_resamples=settings.n_resamples,
                                seed=seed, confidence=settings.confidence)
    return _unpack(boot, names, pairs)


def _pair_matrix(p_pos: np.ndarray, p_neg: np.ndarray) -> np.ndarray:
    """(n_pos, n_neg): 1 where the correct scenario scores higher, 0.5 on ties, else 0."""
    return (p_pos[:, None] > p_neg[None, :]) + 0.5 * (p_pos[:, None] == p_neg[None, :])


def _auroc(count_pos: np.ndarray, pairs: np.ndarray, count_neg: np.ndarray) -> np.ndarray:
    """(B,) Mann-Whitney AUROC of resamples given as counts per scenario; NaN without both classes."""
    if not pairs.size:
        return np.full(len(count_pos), np.nan)
    return np.einsum("bi,ij,bj->b", count_pos, pairs, count_neg) / (count_pos.sum(1) * count_neg.sum(1))


def _unpack(boot: BootstrapResult, names: list[str], pairs: list[tuple[str, str]]) -> dict[str, ScoreUncertainty]:
    m = len(INTERVAL_METRICS)
    out = {}
    for i, k in enumerate(names):
        out[k] = ScoreUncertainty(
            estimates={metric: float(boot.estimate[i * m + j]) for j, metric in enumerate(INTERVAL_METRICS)},
            intervals={metric: _finite(boot, i * m + j) for j, metric in enumerate(INTERVAL_METRICS)})
    for c, (a, b) in enumerate(pairs):
        tests = {}
        for j, metric in enumerate(INTERVAL_METRICS):
            row = len(names) * m + c * m + j
            tests[metric] = PairedTest(difference=float(boot.estimate[row]), interval=_finite(boot, row),
                                       p_value=paired_p_value(boot.distribution[row]))
        out[a].tests[b] = tests
    return out


def _finite(boot: BootstrapResult, row: int) -> Interval:
    return boot.interval(row) if np.isfinite(boot.estimate[row]) else NAN_INTERVAL


def uncertainty_metric_dict(prefix: str, uncertainty: Mapping[str, ScoreUncertainty]) -> dict[str, float]:
    """``<prefix>/<task>/<metric>/{ci_low,ci_high,p_vs_<other>}`` for logging, e.g. prefix ``test/probe``."""
    out = {}
    for task, u in uncertainty.items():
        for metric, interval in u.intervals.items():
            out[f"{prefix}/{task}/{metric}/ci_low"] = interval.low
            out[f"{prefix}/{task}/{metric}/ci_high"] = interval.high
        for other, tests in u.tests.items():
            for metric, test in tests.items():
                out[f"{prefix}/{task}/{metric}/p_vs_{other}"] = test.p_value
    return out


@dataclass
class ProbeScores:
    """A probe's scores of one evaluation: every predictor on every task, and at test their uncertainty."""

    stage: str  # "val" or "test"
    scores: dict[str, dict[str, BinaryScores]]  # predictor -> task (and "all") -> scores
    uncertainty: dict[str, dict[str, ScoreUncertainty]] | None = None  # predictor -> task -> intervals, tests
    bootstrap_seconds: float = 0.0  # spent on the uncertainty


__all__ = ["BootstrapSettings", "COMPARISONS", "INTERVAL_METRICS", "PairedTest", "ProbeScores", "ScoreUncertainty",
           "score_uncertainty", "uncertainty_metric_dict"]
