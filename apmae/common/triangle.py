"""The causal lower triangle of a square grid: its size, its row-major order, gather and scatter.

Glossary: n side of the grid (S tokens of a pattern, or G patches of an
AP-MAE image), T = n (n + 1) / 2 cells of the lower triangle (diagonal included).

One order serves the whole project: row-major over the lower triangle,
(0, 0), (1, 0), (1, 1), (2, 0), ... (the order of ``numpy.tril_indices`` and
``torch.tril_indices``). The attention cache stores a head's pattern in it,
the target gathers it on the model's device, and AP-MAE numbers its
triangular patches by it. Plain numpy, so the cache reader needs no torch.
"""

from __future__ import annotations

import functools

import numpy as np


def triangle_size(n: int) -> int:
    """T, the cells of the lower triangle of an n x n grid (diagonal included)."""
    return n * (n + 1) // 2


@functools.lru_cache(maxsize=16)
def lower_triangle(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of every lower-triangle cell, each (T,) int64 in row-major order (read-only, shared)."""
    if n < 1:
        raise ValueError(f"the grid side must be at least 1, got {n}")
    rows, cols = np.tril_indices(n)
    rows.flags.writeable = cols.flags.writeable = False
    return rows, cols


@functools.lru_cache(maxsize=16)
def lower_triangle_index(n: int) -> np.ndarray:
    """Flat index ``row * n + col`` (T,) int64 of every lower-triangle cell of an n x n grid (read-only, shared)."""
    rows, cols = lower_triangle(n)
    index = rows * n + cols  # (T,)
    index.flags.writeable = False
    return index


def to_triangle(full: np.ndarray) -> np.ndarray:
    """(..., n, n) -> (..., T): the lower triangle, row-major."""
    n = full.shape[-1]
    return full.reshape(*full.shape[:-2], n * n)[..., lower_triangle_index(n)]


def from_triangle(triangle: np.ndarray, n: int) -> np.ndarray:
    """(..., T) -> (..., n, n) float32 with zeros above the diagonal (vectorised over leading dims)."""
    if triangle.shape[-1] != triangle_size(n):
        raise ValueError(f"a triangle of {triangle.shape[-1]} values does not match S={n} "
                         f"(expected {triangle_size(n)})")
    out = np.zeros((*triangle.shape[:-1], n * n), dtype=np.float32)
    out[..., lower_triangle_index(n)] = triangle
    return out.reshape(*triangle.shape[:-1], n, n)
