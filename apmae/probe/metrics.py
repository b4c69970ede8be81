"""Scores of a correctness predictor, per task and pooled, for every probe and baseline.

Glossary: N scenarios. ``p`` (N,) is a predicted probability that the target's
completion is correct, ``y`` (N,) the truth (bool), ``task`` (N,) an index into
``task_names``.

One function computes every reported number, so the AP-MAE probe, its
baselines (majority, pattern statistics, target confidence) and the
cluster-id probe are scored identically and their metric names line up in the
MLflow UI: ``<stage>/<predictor>/<task>/<metric>``, ``<task>`` = ``all`` for
the pooled scenarios.

- ``accuracy``: share of scenarios with ``(p >= threshold) == y``;
- ``balanced_accuracy``: mean of the recall of correct and of incorrect scenarios
  (0.5 for any constant predictor, whatever the class balance);
- ``auroc``: probability that a random correct scenario gets a higher ``p`` than a
  random incorrect one (ties count half); NaN when one class is absent;
- ``f1``: F1 of the "correct" class; ``n``: scenarios scored.

The counts come from torchmetrics' functional binary metrics; :func:`auroc` is an
independent Mann-Whitney computation the tests hold torchmetrics' AUROC to.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch

METRICS = ("accuracy", "balanced_accuracy", "auroc", "f1", "n")
POOLED = "all"


@dataclass(frozen=True)
class BinaryScores:
    """The scores of one predictor on one set of scenarios."""

    accuracy: float
    balanced_accuracy: float
    auroc: float  # NaN when only one class is present
    f1: float
    n: int


def auroc(p: np.ndarray, y: np.ndarray) -> float:
    """Mann-Whitney AUROC of scores ``p`` for labels ``y``; ties count half; NaN with one class."""
    p, y = np.asarray(p, dtype=np.float64), np.asarray(y, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p), dtype=np.float64)
    sorted_p = p[order]
    # average ranks over tied scores (1-based)
    _, first, counts = np.unique(sorted_p, return_index=True, return_counts=True)
    mean_rank = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(mean_rank, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def binary_scores(p: np.ndarray, y: np.ndarray, *, threshold: float = 0.5) -> BinaryScores:
    """Scores of probabilities ``p`` (N,) against truth ``y`` (N,)."""
    p, y = np.asarray(p, dtype=np.float64), np.asarray(y, dtype=bool)
    if p.shape != y.shape or p.ndim != 1:
        raise ValueError(f"p and y must be matching 1-D arrays, got {p.shape} and {y.shape}")
    if len(p) == 0:
        nan = float("nan")
        return BinaryScores(nan, nan, nan, nan, 0)
    # import cost ~3 s (torchmetrics): paid by the stages that score, not by every importer
    from torchmetrics.functional.classification import binary_accuracy, binary_auroc, binary_f1_score

    pred, truth = _thresholded(p, y, threshold)
    one_class = y.all() or not y.any()
    return BinaryScores(accuracy=float(binary_accuracy(pred, truth)), balanced_accuracy=_balanced_accuracy(pred, truth),
                        auroc=float("nan") if one_class else float(binary_auroc(torch.from_numpy(p), truth)),
                        f1=float(binary_f1_score(pred, truth, zero_division=0.0)), n=len(p))


def _thresholded(p: np.ndarray, y: np.ndarray, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions (N,) 0/1 and truth (N,) as torchmetrics takes them.

    Thresholded here: torchmetrics counts p > threshold as positive, this module p >= threshold.
    """
    return torch.from_numpy((p >= threshold).astype(np.float64)), torch.from_numpy(y.astype(np.int64))


def _balanced_accuracy(pred: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean recall of the classes present in ``truth`` (0/1 predictions and labels)."""
    from torchmetrics.functional.classification import binary_recall, binary_specificity  # import cost, as above

    recalls = [float(binary_recall(pred, truth))] if bool(truth.any()) else []
    recalls += [float(binary_specificity(pred, truth))] if not bool(truth.all()) else []
    return float(np.mean(recalls))


def per_task_scores(p: np.ndarray, y: np.ndarray, task: np.ndarray, task_names: Sequence[str], *,
                    threshold: float = 0.5) -> dict[str, BinaryScores]:
    """Scores for every task present in ``task`` (by name) and for all scenarios pooled (``all``)."""
    p, y, task = np.asarray(p), np.asarray(y, dtype=bool), np.asarray(task)
    out = {}
    for t in np.unique(task):
        keep = task == t
        out[task_names[int(t)]] = binary_scores(p[keep], y[keep], threshold=threshold)
    out[POOLED] = binary_scores(p, y, threshold=threshold)
    return out


def metric_dict(prefix: str, scores: dict[str, BinaryScores]) -> dict[str, float]:
    """``{"<prefix>/<task>/<metric>": value}`` for logging, e.g. prefix ``test/probe``."""
    return {f"{prefix}/{task}/{name}": float(value)
            for task, s in scores.items() for name, value in asdict(s).items()}


def best_threshold(p: np.ndarray, y: np.ndarray) -> float:
    """The threshold on ``p`` with the highest balanced accuracy (ties: the one closest to 0.5).

    Fitted on validation scenarios only; the test split is then scored with it.
    """
    p, y = np.asarray(p, dtype=np.float64), np.asarray(y, dtype=bool)
    if len(p) == 0 or y.all() or not y.any():
        return 0.5
    values = np.unique(p)
    candidates = np.concatenate([[values[0] - 1e-9], (values[1:] + values[:-1]) / 2, [values[-1] + 1e-9]])
    scores = np.array([_balanced_accuracy(*_thresholded(p, y, c)) for c in candidates])  # AUROC and F1 not needed
    best = np.flatnonzero(scores >= scores.max() - 1e-12)
    return float(candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]])


__all__ = ["BinaryScores", "METRICS", "POOLED", "auroc", "best_threshold", "binary_scores", "metric_dict",
           "per_task_scores"]
