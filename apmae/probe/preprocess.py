"""Inside one fold: standardise and reduce the feature blocks with statistics of the training rows only.

Glossary: n training rows, m test rows, F columns of a block, W columns of one head,
k principal components kept per head, A heads (L * H).

Every transform here is fitted on the fold's training rows and applied unchanged to its
test rows, so nothing about a test scenario reaches the model that scores it. The
per-head PCA is a seeded randomised SVD (one power iteration) batched over heads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from apmae.probe.features import FeatureBlock

_OVERSAMPLE = 5  # extra random directions of the randomised SVD


@dataclass(frozen=True)
class FoldDesign:
    """The fold's model inputs: standardised (and reduced) columns and the head of each."""

    train: np.ndarray  # (n, F') float64
    test: np.ndarray  # (m, F') float64
    head: np.ndarray  # (F',) int64, -1 for per-scenario columns


def standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both scaled by the training mean and std (a constant training column keeps scale 1)."""
    mean = train.mean(0)
    std = train.std(0)
    std = np.where(std > 1e-8, std, 1.0)
    return (train - mean) / std, (test - mean) / std


def head_components(train: np.ndarray, test: np.ndarray, heads: int, k: int,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(n, A * W), (m, A * W) centred columns -> (n, A * k), (m, A * k): each head's top-k PC scores."""
    n, m = len(train), len(test)
    x = train.reshape(n, heads, -1).transpose(1, 0, 2)  # (A, n, W)
    width = x.shape[-1]
    k = min(k, width, n)
    omega = rng.standard_normal((width, min(width, k + _OVERSAMPLE))).astype(x.dtype)
    q = np.linalg.qr(x @ omega)[0]  # (A, n, k + p)
    q = np.linalg.qr(x @ (x.transpose(0, 2, 1) @ q))[0]  # one power iteration
    vt = np.linalg.svd(q.transpose(0, 2, 1) @ x, full_matrices=False)[2][:, :k]  # (A, k, W)
    scores_train = (x @ vt.transpose(0, 2, 1)).transpose(1, 0, 2).reshape(n, -1)
    y = test.reshape(m, heads, -1).transpose(1, 0, 2)  # (A, m, W)
    scores_test = (y @ vt.transpose(0, 2, 1)).transpose(1, 0, 2).reshape(m, -1)
    return scores_train, scores_test


def fold_design(blocks: list[FeatureBlock], train: np.ndarray, test: np.ndarray, *, seed: int = 0) -> FoldDesign:
    """The standardised (and per-head reduced) columns of ``blocks`` for one fold's rows."""
    rng = np.random.default_rng(seed)
    parts_train, parts_test, heads = [], [], []
    for block in blocks:
        head = block.head
        if block.components is None:
            x_train, x_test = standardise(block.values[train].astype(np.float64),
                                          block.values[test].astype(np.float64))
        else:  # one head's encoding dimensions share a scale: centred only, then its PCs standardised
            mean = block.values[train].mean(0)
            ids = np.unique(head)
            x_train, x_test = head_components(block.values[train] - mean, block.values[test] - mean, len(ids),
                                              block.components, rng)
            head = np.repeat(ids, x_train.shape[1] // len(ids))
            x_train, x_test = standardise(x_train.astype(np.float64), x_test.astype(np.float64))
        parts_train.append(x_train)
        parts_test.append(x_test)
        heads.append(head)
    return FoldDesign(train=np.hstack(parts_train), test=np.hstack(parts_test), head=np.concatenate(heads))


def combine(designs: list[FoldDesign]) -> FoldDesign:
    """The designs of several blocks of one fold side by side (each was fitted on its own)."""
    if len(designs) == 1:
        return designs[0]
    return FoldDesign(train=np.hstack([d.train for d in designs]), test=np.hstack([d.test for d in designs]),
                      head=np.concatenate([d.head for d in designs]))


__all__ = ["FoldDesign", "combine", "fold_design", "head_components", "standardise"]
