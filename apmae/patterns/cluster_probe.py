"""The cluster-id probe: gradient-boosted trees over each head's pattern family, with SHAP head ranking.

Glossary: N scenarios, L layers, H heads, F = L*H features (``l{layer}h{head}``,
layer-major), each the scenario's cluster id at that head (-1 = noise, its own
category).

The AP-MAE paper's second probe: a CatBoost classifier (1000 iterations,
depth 6, learning rate 0.1, Logloss, early stopping after 25 rounds) predicts
whether the target's completion is correct from the cluster ids alone, and
CatBoost's own SHAP values rank the heads. Here it is fitted on the train
split, stopped early and thresholded on the val split (a stratified tenth of
train when there is no val split), and scored on the test split only, with
the same scorer and metric names as the neural probe
(``test/cluster_probe/<task>/<metric>``), and the same stratified bootstrap intervals
(``.../balanced_accuracy/ci_low`` ..., :mod:`apmae.probe.uncertainty`).

CatBoost's ``ShapValues`` matrix is (rows, F + 1): one column per feature in
feature order, then the expected value (the model's mean raw prediction) as the
LAST column; each row sums to that row's raw log-odds. :func:`split_shap` is the
one place that reads that layout.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from apmae.common.head_tables import write_head_table
from apmae.common.optional import require
from apmae.mining.scenario_set import balance_per_task
from apmae.probe.metrics import BinaryScores, best_threshold, metric_dict, per_task_scores
from apmae.probe.uncertainty import BootstrapSettings, ScoreUncertainty, score_uncertainty, uncertainty_metric_dict

PREFIX = "test/cluster_probe"
SPLIT_TRAIN, SPLIT_VAL, SPLIT_TEST = 0, 1, 2


@dataclass(frozen=True)
class ClusterProbeConfig:
    """The classifier's settings (defaults: the paper's)."""

    iterations: int = 1000
    depth: int = 6
    learning_rate: float = 0.1
    early_stopping_rounds: int = 25
    holdout: float = 0.1  # share of train held out (per class) for early stopping when there is no val split
    balance: bool = False  # per task as many correct as incorrect rows in every split (the neural probe's rows)
    balance_seed: int = 0  # the neural probe DataModule's ``seed``: the same rows are drawn
    seed: int = 0
    threads: int = 1  # CatBoost threads

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.depth < 1 or self.early_stopping_rounds < 1 or self.threads < 1:
            raise ValueError("iterations, depth, early_stopping_rounds and threads must be positive integers")
        if not 0.0 < self.holdout < 1.0 or self.learning_rate <= 0:
            raise ValueError(f"holdout must be in (0, 1) and learning_rate > 0, got {self.holdout}, "
                             f"{self.learning_rate}")


@dataclass
class HeadShap:
    """Per-head summaries of SHAP values on the evaluation rows, each (L, H)."""

    mean: np.ndarray  # signed mean: > 0 pushes the prediction toward "correct"
    mean_positive: np.ndarray  # mean of max(SHAP, 0): the paper's "top" ranking
    mean_negative: np.ndarray  # mean of min(SHAP, 0): the paper's "bottom" ranking
    mean_abs: np.ndarray  # mean |SHAP|: how much the head moves the prediction at all


@dataclass
class ClusterProbeResult:
    """A fitted cluster-id probe's test scores and head ranking."""

    scores: dict[str, BinaryScores]  # per task name and "all", on the test split
    metrics: dict[str, float]  # test/cluster_probe/<task>/<metric>
    threshold: float  # fitted on the evaluation rows
    shap: HeadShap
    best_iteration: int
    n_train: int
    n_eval: int
    n_test: int
    eval_source: str  # "val" or "train holdout"
    seconds: float  # fit + SHAP
    balanced: bool = False  # every split class-balanced per task
    uncertainty: dict[str, ScoreUncertainty] | None = None  # per task and "all": 95 % intervals on the test split
    interval_metrics: dict[str, float] = field(default_factory=dict)  # test/cluster_probe/<task>/<metric>/ci_*
    bootstrap_seconds: float = 0.0


def feature_names(n_layers: int, n_heads: int) -> list[str]:
    """``l{layer}h{head}`` for every head, layer-major (the column order of the features)."""
    return [f"l{layer}h{head}" for layer in range(n_layers) for head in range(n_heads)]


def split_shap(matrix: np.ndarray, n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """CatBoost ``ShapValues`` (rows, F + 1) -> per-feature values (rows, F) and expected value (rows,)."""
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[1] != n_features + 1:
        raise ValueError(f"expected a (rows, {n_features + 1}) SHAP matrix, got {matrix.shape}")
    return matrix[:, :n_features], matrix[:, n_features]


def head_shap(values: np.ndarray, n_layers: int, n_heads: int) -> HeadShap:
    """Per-head summaries of (rows, F) SHAP values."""
    shape = (n_layers, n_heads)
    return HeadShap(mean=values.mean(0).reshape(shape), mean_positive=np.maximum(values, 0).mean(0).reshape(shape),
                    mean_negative=np.minimum(values, 0).mean(0).reshape(shape),
                    mean_abs=np.abs(values).mean(0).reshape(shape))


def evaluation_rows(split: np.ndarray, correct: np.ndarray, *, holdout: float, seed: int,
                    task: np.ndarray | None = None, balance_seed: int | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Row indices (fit, early stopping, test) and where the early-stopping rows come from.

    Without a val split, ``holdout`` of each class of train (at least one row) is held out.
    Given ``task`` and ``balance_seed``, every split is first class-balanced per task exactly as
    the probe's DataModules do it (``apmae.mining.scenario_set.balance_per_task``, one generator per split).

    Raises:
        ValueError: no test rows, or the fitting rows hold only one class.
    """
    split, correct = np.asarray(split), np.asarray(correct, dtype=bool)
    train, val, test = (np.flatnonzero(split == s) for s in (SPLIT_TRAIN, SPLIT_VAL, SPLIT_TEST))
    if task is not None and balance_seed is not None:
        task = np.asarray(task)
        train, val, test = (balance_per_task(r, task[r], correct[r], np.random.default_rng(balance_seed))
                            for r in (train, val, test))
    if not len(test):
        raise ValueError("the cluster probe reports on the test split, which is empty: give the scenarios "
                         "a test share (e.g. splits [0.6, 0.2, 0.2])")
    source = "val"
    if not len(val):
        rng = np.random.default_rng(seed)
        held = [rng.permutation(rows)[: max(1, int(round(holdout * len(rows))))]
                for rows in (train[correct[train]], train[~correct[train]])]
        val = np.sort(np.concatenate(held))
        train, source = np.setdiff1d(train, val), "train holdout"
    if len(np.unique(correct[train])) < 2:
        raise ValueError(f"the cluster probe's {len(train)} fitting rows are all "
                         f"{'correct' if correct[train].all() else 'incorrect'}: it needs both classes to learn")
    return train, val, test, source


def fit_cluster_probe(labels: np.ndarray, *, correct: np.ndarray, split: np.ndarray, task: np.ndarray,
                      task_names: Sequence[str], config: ClusterProbeConfig | None = None) -> ClusterProbeResult:
    """Fit the cluster-id probe on (N, L, H) cluster ids and score it on the test split."""
    config = config or ClusterProbeConfig()
    start = time.perf_counter()
    labels = np.asarray(labels, dtype=np.int64)
    if labels.ndim != 3 or not len(labels) == len(correct) == len(split) == len(task):
        raise ValueError(f"labels must be (N, L, H) with N correct/split/task values, got {labels.shape}")
    n, n_layers, n_heads = labels.shape
    y = np.asarray(correct, dtype=bool)
    train, val, test, source = evaluation_rows(split, y, holdout=config.holdout, seed=config.seed, task=task,
                                               balance_seed=config.balance_seed if config.balance else None)
    catboost = require("catboost", extra="analysis", purpose="the cluster-id probe")
    x = labels.reshape(n, -1)  # (N, F) layer-major, as feature_names
    names = feature_names(n_layers, n_heads)

    def pool(rows: np.ndarray) -> Any:
        return catboost.Pool(x[rows], y[rows].astype(int), cat_features=list(range(x.shape[1])), feature_names=names)

    model = catboost.CatBoostClassifier(
        iterations=config.iterations, depth=config.depth, learning_rate=config.learning_rate,
        loss_function="Logloss", early_stopping_rounds=config.early_stopping_rounds, random_seed=config.seed,
        thread_count=config.threads, verbose=False, allow_writing_files=False)
    eval_pool = pool(val)
    model.fit(pool(train), eval_set=eval_pool, use_best_model=True)
    p_eval, p_test = (model.predict_proba(pool(rows))[:, 1] for rows in (val, test))
    threshold = best_threshold(p_eval, y[val])
    scores = per_task_scores(p_test, y[test], np.asarray(task)[test], task_names, threshold=threshold)
    values, _ = split_shap(model.get_feature_importance(eval_pool, type="ShapValues"), len(names))
    t_boot = time.perf_counter()
    uncertainty = score_uncertainty({"cluster_probe": p_test}, y[test], np.asarray(task)[test], task_names,
                                    thresholds={"cluster_probe": threshold}, comparisons=(),
                                    settings=BootstrapSettings(seed=config.seed))["cluster_probe"]
    return ClusterProbeResult(
        scores=scores, metrics=metric_dict(PREFIX, scores),
        interval_metrics=uncertainty_metric_dict(PREFIX, uncertainty),
        threshold=threshold, shap=head_shap(values, n_layers, n_heads),
        best_iteration=int(model.get_best_iteration() or 0), n_train=len(train), n_eval=len(val), n_test=len(test),
        eval_source=source, seconds=time.perf_counter() - start, balanced=config.balance, uncertainty=uncertainty,
        bootstrap_seconds=time.perf_counter() - t_boot)


def write_importance_csv(path: str | Path, importance: np.ndarray) -> Path:
    """Write (L, H) ``importance`` as a head table ``layer,head,importance``, one row per head, layer-major."""
    return write_head_table(path, {"importance": np.asarray(importance, dtype=np.float64)})


def write_shap_csv(path: str | Path, shap: HeadShap) -> Path:
    """Write every per-head SHAP summary as a head table: ``layer,head,mean,mean_positive,mean_negative,mean_abs``."""
    return write_head_table(path, {c: getattr(shap, c) for c in ("mean", "mean_positive", "mean_negative", "mean_abs")})


__all__ = ["ClusterProbeConfig", "ClusterProbeResult", "HeadShap", "PREFIX", "evaluation_rows", "feature_names",
           "fit_cluster_probe", "head_shap", "split_shap", "write_importance_csv", "write_shap_csv"]
