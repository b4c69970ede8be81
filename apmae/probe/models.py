"""The probe's models, fitted inside one outer fold: L2 / L1 logistic regression, CatBoost, the head probe.

Glossary: n training rows, m test rows, F columns, r rank of the training design.

Each model takes a :class:`PreparedFold` (the fold's standardised design, its inner grouped
folds for choosing C, and the label-free reductions :mod:`apmae.probe.linear` reuses) and
the training labels, and returns a :class:`FoldScore`: P(correct) of the test rows, the
inner-CV AUROC it chose its setting by (what picks an AP-MAE readout per fold, never the
outer scores), and for linear models the fitted weights (what head importance reads).

Registered (:data:`MODELS`): ``l2``, ``l1`` (C from :data:`apmae.probe.linear.C_GRID`
by inner grouped CV, class-weighted), ``catboost`` (the AP-MAE reference's choice,
class-weighted, fixed settings), ``neural`` (:class:`apmae.probe.net.HeadProbe`, the
network of ``LitProbe``, class-weighted, fixed settings).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from apmae.common.optional import require
from apmae.probe.linear import C_GRID, Basis, LinearFit, balanced_weights, l2_path
from apmae.probe.metrics import auroc
from apmae.probe.preprocess import FoldDesign

L1_GRID = (1e-3, 1e-2, 1e-1, 1.0)


@dataclass(frozen=True)
class Reduced:
    """A design split in its training-row basis: what every C and every label permutation reuses."""

    z: np.ndarray  # (n, r) training rows in the basis
    test: np.ndarray  # (m, r) test rows in the basis
    to_weights: np.ndarray | None  # (F, r): beta = to_weights @ gamma (kept for the outer fit only)

    @classmethod
    def of(cls, train: np.ndarray, test: np.ndarray, *, keep_weights: bool = True) -> "Reduced":
        basis = Basis.of(train)
        return cls(z=basis.z, test=np.asarray(test, dtype=np.float64) @ basis.to_weights,
                   to_weights=basis.to_weights if keep_weights else None)


@dataclass(frozen=True)
class PreparedFold:
    """One outer fold's design, its inner folds (positions into the fold's training rows) and their
    label-free reductions, computed once and shared by every model, C and permutation."""

    design: FoldDesign
    inner: list[tuple[np.ndarray, np.ndarray]]
    reduced: Reduced
    inner_reduced: list[Reduced]

    @classmethod
    def of(cls, design: FoldDesign, inner: list[tuple[np.ndarray, np.ndarray]]) -> "PreparedFold":
        x = design.train
        return cls(design=design, inner=inner, reduced=Reduced.of(x, design.test),
                   inner_reduced=[Reduced.of(x[tr], x[te], keep_weights=False) for tr, te in inner])


@dataclass(frozen=True)
class FoldScore:
    """A model's scores of one outer fold's test rows."""

    p: np.ndarray  # (m,) P(correct)
    inner_auroc: float  # the inner-CV AUROC of the chosen setting (NaN without inner CV)
    linear: LinearFit | None = None  # the fitted weights, for linear models


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))


def _inner_choice(fold: PreparedFold, y: np.ndarray, grid: tuple[float, ...],
                  predict: Callable[[int, np.ndarray], list[np.ndarray]]) -> tuple[float, float]:
    """(C, inner AUROC) with the best pooled inner out-of-fold AUROC (ties: the smaller C)."""
    pooled = np.zeros((len(grid), len(y)))
    for i, (tr, te) in enumerate(fold.inner):
        for j, logit in enumerate(predict(i, y[tr])):
            pooled[j, te] = logit
    scores = np.array([auroc(pooled[j], y) for j in range(len(grid))])
    scores = np.where(np.isfinite(scores), scores, -np.inf)
    best = int(np.argmax(scores))
    return grid[best], float(scores[best])


def l2(fold: PreparedFold, y: np.ndarray, *, seed: int = 0, grid: tuple[float, ...] = C_GRID) -> FoldScore:
    """Class-weighted L2 logistic regression, C by inner grouped CV."""
    grid = tuple(sorted(grid))
    inner = fold.inner_reduced

    def predict(i: int, y_inner: np.ndarray) -> list[np.ndarray]:
        return [inner[i].test @ theta[:-1] + theta[-1] for theta in l2_path(inner[i].z, y_inner, grid)]

    c, score = _inner_choice(fold, y, grid, predict) if fold.inner else (grid[len(grid) // 2], float("nan"))
    reduced = fold.reduced
    theta = l2_path(reduced.z, y, grid[:grid.index(c) + 1])[-1]  # warm-started path up to the chosen C
    fit = LinearFit(beta=reduced.to_weights @ theta[:-1], intercept=float(theta[-1]), c=c)
    return FoldScore(p=_sigmoid(reduced.test @ theta[:-1] + theta[-1]), inner_auroc=score, linear=fit)


def l1(fold: PreparedFold, y: np.ndarray, *, seed: int = 0, grid: tuple[float, ...] = L1_GRID) -> FoldScore:
    """Class-weighted L1 logistic regression (liblinear), C by inner grouped CV."""
    linear_model = require("sklearn.linear_model", extra="analysis", purpose="the L1 probe", package="scikit-learn")
    x = fold.design.train

    def model(c: float):
        return linear_model.LogisticRegression(l1_ratio=1.0, solver="liblinear", C=c, class_weight="balanced",
                                               max_iter=200, random_state=seed)

    def predict(i: int, y_inner: np.ndarray) -> list[np.ndarray]:
        tr, te = fold.inner[i]
        return [model(c).fit(x[tr], y_inner).decision_function(x[te]) for c in grid]

    c, score = _inner_choice(fold, y, grid, predict) if fold.inner else (grid[len(grid) // 2], float("nan"))
    fitted = model(c).fit(x, y)
    linear = LinearFit(beta=fitted.coef_[0].astype(np.float64), intercept=float(fitted.intercept_[0]), c=c)
    return FoldScore(p=_sigmoid(linear.logit(fold.design.test)), inner_auroc=score, linear=linear)


def catboost(fold: PreparedFold, y: np.ndarray, *, seed: int = 0, iterations: int = 200) -> FoldScore:
    """Gradient-boosted trees (CatBoost), balanced class weights, fixed settings (no inner CV)."""
    cb = require("catboost", extra="analysis", purpose="the CatBoost probe")
    model = cb.CatBoostClassifier(iterations=iterations, depth=4, learning_rate=0.1, auto_class_weights="Balanced",
                                  random_seed=seed, verbose=False, allow_writing_files=False, thread_count=1)
    model.fit(fold.design.train, y.astype(int))
    return FoldScore(p=model.predict_proba(fold.design.test)[:, 1], inner_auroc=float("nan"))


def neural(fold: PreparedFold, y: np.ndarray, *, seed: int = 0, steps: int = 300) -> FoldScore:
    """LitProbe's network (:class:`apmae.probe.net.HeadProbe`) over the per-head columns, full-batch AdamW.

    Per-scenario columns (confidence, task) enter as its linear ``extra`` features.
    """
    import torch  # import cost ~1.4 s: the linear models need only numpy

    from apmae.probe.net import HeadProbe  # imports torch, as above

    head = fold.design.head
    per_head = head >= 0
    ids = np.unique(head[per_head])
    width = int(per_head.sum()) // max(len(ids), 1)
    if not len(ids) or np.any(np.bincount(head[per_head] - ids.min())[ids - ids.min()] != width):
        raise ValueError("the neural probe needs per-head columns of one width (e.g. row, stats, apmae)")

    def tensors(x: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.from_numpy(x[:, per_head]).float().reshape(len(x), 1, len(ids), width),
                torch.from_numpy(x[:, ~per_head]).float())

    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = HeadProbe(n_layers=1, n_heads=len(ids), in_dim=width, hidden=16, extra_dim=int((~per_head).sum()),
                        dropout=0.1, norm=False)
    features, extra = tensors(fold.design.train)
    target = torch.from_numpy(y.astype(np.float32))
    weight = torch.from_numpy(balanced_weights(y).astype(np.float32))
    optimiser = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=0.05)
    net.train()
    for _ in range(steps):
        optimiser.zero_grad()
        keep = torch.rand(len(target), generator=generator) < 0.8  # a fresh 80 % each step: some noise
        logit = net(features[keep], extra[keep] if extra.shape[1] else None)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, target[keep], weight=weight[keep])
        loss.backward()
        optimiser.step()
    net.eval()
    test, test_extra = tensors(fold.design.test)
    with torch.no_grad():
        p = torch.sigmoid(net(test, test_extra if test_extra.shape[1] else None)).numpy()
    return FoldScore(p=p.astype(np.float64), inner_auroc=float("nan"))


Model = Callable[..., FoldScore]
MODELS: dict[str, Model] = {"l2": l2, "l1": l1, "catboost": catboost, "neural": neural}

__all__ = ["FoldScore", "L1_GRID", "MODELS", "Model", "PreparedFold", "Reduced", "catboost", "l1", "l2", "neural"]
