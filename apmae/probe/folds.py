"""Cross-fitting folds: every scenario is scored by a model that never saw its source file.

Glossary: N scenarios, K folds per repeat, R repeats.

The folds are grouped by source file (a file's scenarios share identifiers, style and
length, so a model that trained on one of them has seen part of the answer), stratified
by task x label (so every fold holds each task's correct and incorrect scenarios in about
the overall shares), repeated R times with a different seeded shuffle. Every predictor
of one protocol run uses the very same folds, so their out-of-fold scores are paired.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from apmae.common.optional import require


@dataclass(frozen=True)
class Fold:
    """One train / test partition of the scenarios (row positions, sorted)."""

    repeat: int  # which of the R repeats
    index: int  # which of the K folds of that repeat
    train: np.ndarray  # (N_train,) int64
    test: np.ndarray  # (N_test,) int64


def strata_of(task: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """(N,) int64 stratum of each scenario: task x label."""
    return np.asarray(task, dtype=np.int64) * 2 + np.asarray(correct, dtype=np.int64)


def grouped_folds(groups: np.ndarray, strata: np.ndarray, *, n_splits: int = 5, n_repeats: int = 5,
                  seed: int = 0) -> list[Fold]:
    """R x K folds grouped by ``groups`` (N,) and stratified by ``strata`` (N,), seeded.

    Raises:
        ValueError: fewer distinct groups than ``n_splits`` (say how many there are), or
            ``n_splits`` < 2 or ``n_repeats`` < 1.
    """
    model_selection = require("sklearn.model_selection", extra="analysis", purpose="cross-fitted probe folds",
                              package="scikit-learn")
    groups, strata = np.asarray(groups), np.asarray(strata)
    if groups.shape != strata.shape or groups.ndim != 1:
        raise ValueError(f"groups {groups.shape} and strata {strata.shape} must be matching 1-D arrays")
    if n_splits < 2 or n_repeats < 1:
        raise ValueError(f"n_splits={n_splits}, n_repeats={n_repeats}: use n_splits >= 2 and n_repeats >= 1")
    n_groups = len(np.unique(groups))
    if n_groups < n_splits:
        raise ValueError(f"{n_groups} source files cannot fill {n_splits} folds grouped by file: mine scenarios "
                         f"from at least {n_splits} files, or lower n_splits")
    folds = []
    for r in range(n_repeats):
        splitter = model_selection.StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed + r)
        with warnings.catch_warnings():
            # a task x label stratum smaller than n_splits (a rare correct completion) is spread as far as
            # it goes; scikit-learn warns each time, the folds are still grouped and as stratified as possible
            warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
            split = list(splitter.split(np.zeros(len(groups)), strata, groups))
        for k, (train, test) in enumerate(split):
            folds.append(Fold(repeat=r, index=k, train=np.sort(train), test=np.sort(test)))
    return folds


def check_grouped(folds: list[Fold], groups: np.ndarray) -> None:
    """Raise AssertionError when a fold has a group on both sides or a repeat does not score every row once."""
    groups = np.asarray(groups)
    by_repeat: dict[int, list[np.ndarray]] = {}
    for fold in folds:
        shared = np.intersect1d(groups[fold.train], groups[fold.test])
        assert not len(shared), f"fold {fold.repeat}/{fold.index} splits files {shared[:3].tolist()}"
        by_repeat.setdefault(fold.repeat, []).append(fold.test)
    for r, tests in by_repeat.items():
        rows = np.sort(np.concatenate(tests))
        assert np.array_equal(rows, np.arange(len(groups))), f"repeat {r} does not score every scenario once"


__all__ = ["Fold", "check_grouped", "grouped_folds", "strata_of"]
