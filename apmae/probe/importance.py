"""Head importance from the cross-fitted linear probe, measured on out-of-fold scenarios only.

Glossary: m test scenarios of a fold, A = L * H heads, F columns, P permutations per fold.

For every outer fold, the fitted linear probe scores its test scenarios; a head's
columns are then permuted among those scenarios (its contribution ``x_h . beta_h`` moved
to other scenarios, everything else kept) and the AUROC drop measured. A head's
importance is that drop averaged over folds, signed by the direction of its contribution
(+ when it is larger for correct scenarios: the head pushes toward "correct"), which is
what the Interventions callback's positive / negative head sets read. Stability is the
Spearman correlation of the drops between repeats (each repeat scores every scenario
once), so a ranking that only reflects one split shows up as unstable.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
from scipy import stats

from apmae.probe.crossfit import CrossFit, Protocol


@dataclass(frozen=True)
class HeadImportance:
    """Signed (L, H) importance of one cross-fitted probe, and how stable its ranking is."""

    importance: np.ndarray  # (L, H) drop x direction
    drop: np.ndarray  # (L, H) mean out-of-fold AUROC drop when the head's columns are permuted
    direction: np.ndarray  # (L, H) +1 / -1: sign of the head's mean contribution, correct minus incorrect
    stability: float  # mean Spearman correlation of the drops between repeats (or folds, with one repeat)
    stability_min: float
    source: str  # the feature set and model it comes from


def _auroc_rows(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(K,) AUROC of each row of ``logits`` (K, m) against ``y`` (m,); ties count half."""
    ranks = stats.rankdata(logits, axis=1)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if not n_pos or not n_neg:
        return np.full(len(logits), np.nan)
    return (ranks[:, y].sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _fold_drops(x: np.ndarray, head: np.ndarray, beta: np.ndarray, intercept: float, y: np.ndarray, n_heads: int,
                rng: np.random.Generator, permutations: int) -> tuple[np.ndarray, np.ndarray]:
    """(A,) AUROC drop and (A,) contribution difference (correct - incorrect) of every head in one fold."""
    per_head = head >= 0
    onehot = np.zeros((len(head), n_heads))
    onehot[np.flatnonzero(per_head), head[per_head]] = 1.0
    contrib = (x * beta) @ onehot  # (m, A)
    logit = x @ beta + intercept
    base = _auroc_rows(logit[None], y)[0]
    drops = np.zeros(n_heads)
    for _ in range(permutations):
        moved = contrib[rng.permutation(len(y))]
        drops += base - _auroc_rows(logit[None] - contrib.T + moved.T, y)
    diff = contrib[y].mean(0) - contrib[~y].mean(0) if y.any() and (~y).any() else np.zeros(n_heads)
    return drops / permutations, diff


def head_importance(protocol: Protocol, fit: CrossFit, *, permutations: int = 3) -> HeadImportance:
    """Permutation importance of every head under ``fit``'s linear probe (``l2`` or ``l1``), out of fold.

    Raises:
        ValueError: ``fit`` has no linear weights (CatBoost, the neural probe) or no per-head columns.
    """
    if any(s.linear is None for s in fit.fold_scores):
        raise ValueError(f"{fit.name} ({fit.model}) has no linear weights; rank heads with an l2 or l1 probe")
    data = protocol.data
    n_layers, n_heads = data.n_layers, data.n_heads
    specs = fit.chosen or [fit.feature_set] * len(fit.folds)
    rng = np.random.default_rng(protocol.settings.seed + 31)
    drops, diffs, repeats = [], [], []
    for i, (fold, score) in enumerate(zip(fit.folds, fit.fold_scores)):
        design = protocol.prepared(specs[i])[i].design
        if not np.any(design.head >= 0):
            raise ValueError(f"feature set {specs[i]!r} has no per-head columns to rank heads by")
        drop, diff = _fold_drops(design.test, design.head, score.linear.beta, score.linear.intercept,
                                 protocol.y[fold.test], n_layers * n_heads, rng, permutations)
        drops.append(drop)
        diffs.append(diff)
        repeats.append(fold.repeat)
    drops, repeats = np.asarray(drops), np.asarray(repeats)
    units = [drops[repeats == r].mean(0) for r in np.unique(repeats)] if len(np.unique(repeats)) > 1 else list(drops)
    rhos = [stats.spearmanr(a, b).statistic for a, b in combinations(units, 2)]
    drop = drops.mean(0).reshape(n_layers, n_heads)
    direction = np.where(np.mean(diffs, axis=0) >= 0, 1.0, -1.0).reshape(n_layers, n_heads)
    return HeadImportance(importance=drop * direction, drop=drop, direction=direction,
                          stability=float(np.nanmean(rhos)) if rhos else float("nan"),
                          stability_min=float(np.nanmin(rhos)) if rhos else float("nan"),
                          source=f"{fit.name} ({fit.model})")


__all__ = ["HeadImportance", "head_importance"]
