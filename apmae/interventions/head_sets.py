"""Which heads to zero: signed head importance, selection strategies and the k sweep.

Glossary: L layers, H heads per layer, n = L * H heads in all, k heads zeroed.

A head importance is a signed (L, H) array (positive = the head pushes the
probe toward "correct"). It comes from a module in memory or from an
``importance.csv`` file with columns ``layer,head,importance``, one row per
head (a head table, :mod:`apmae.common.head_tables`, as the probe writes it). From it, for each k:

- ``positive``: the k heads of highest importance;
- ``negative``: the k heads of lowest importance;
- ``neutral``: the k heads whose |importance| is closest to 0;
- ``random``: k heads drawn uniformly (seeded), independent of the ranking.

Ties are broken by the flat head index ``layer * H + head`` (lower first).
Every strategy is nested in k: the heads zeroed at k are among those zeroed
at any larger k (random: the first k of one seeded permutation), so a curve
over k shows the effect of adding heads, not of drawing new sets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from apmae.common.head_tables import read_head_table

STRATEGIES = ("positive", "negative", "neutral", "random")
RANKED_STRATEGIES = ("positive", "negative", "neutral")
# Shares of all heads in the default sweep (the paper's "a few" up to "all").
DEFAULT_FRACTIONS = (0.01, 0.02, 0.05, 0.10, 0.20, 0.50, 1.0)


@dataclass(frozen=True)
class HeadSet:
    """One set of heads to zero, and how it was chosen."""

    strategy: str  # one of STRATEGIES, or "none" for the unmodified target
    k: int
    seed: int | None  # random strategy only
    heads: tuple[tuple[int, int], ...]  # sorted (layer, head) pairs

    def as_mapping(self) -> dict[int, list[int]]:
        """``{layer: [heads]}``, the form :func:`apmae.target.access.zero_heads` takes."""
        out: dict[int, list[int]] = {}
        for layer, head in self.heads:
            out.setdefault(layer, []).append(head)
        return out

    def label(self) -> str:
        """The heads as ``L.H;L.H;...`` (empty for no heads)."""
        return ";".join(f"{layer}.{head}" for layer, head in self.heads)


def check_importance(importance: Any, *, n_layers: int, n_heads: int, source: str = "head importance") -> np.ndarray:
    """The importance as a float64 (L, H) numpy array (tensors are detached and copied to CPU).

    Raises:
        ValueError: not (L, H) or not finite.
    """
    if hasattr(importance, "detach"):
        importance = importance.detach().float().cpu().numpy()
    array = np.asarray(importance, dtype=np.float64)
    if array.shape != (n_layers, n_heads):
        raise ValueError(f"{source} has shape {array.shape} but the target has {n_layers} layers x {n_heads} heads: "
                         "the ranking was made for another model; compute it for this target")
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise ValueError(f"{source} has {bad} non-finite values; every head needs a number")
    return array


def read_importance_csv(path: str | Path, *, n_layers: int, n_heads: int) -> np.ndarray:
    """Read ``importance.csv`` (columns ``layer,head,importance``, one row per head) into (L, H).

    Raises:
        ValueError: unreadable file, missing columns, unparsable or non-finite values, heads
            outside the target's L x H grid (a ranking of another model), repeated or missing heads.
    """
    grid = read_head_table(path, "importance", n_layers=n_layers, n_heads=n_heads)
    return check_importance(grid, n_layers=n_layers, n_heads=n_heads, source=str(path))


def sweep_ks(n_total: int, *, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> list[int]:
    """Head counts for shares of ``n_total`` heads: rounded, at least 1, capped at n, deduplicated, ascending.

    Raises:
        ValueError: a fraction outside (0, 1].
    """
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad:
        raise ValueError(f"fractions {bad} must lie in (0, 1] (shares of all {n_total} heads)")
    return sorted({min(n_total, max(1, round(f * n_total))) for f in fractions})


def check_ks(ks: Sequence[int], n_total: int) -> list[int]:
    """Explicit head counts, ascending and deduplicated.

    Raises:
        ValueError: a count outside 1..n_total.
    """
    bad = [k for k in ks if not 1 <= int(k) <= n_total]
    if bad or not ks:
        raise ValueError(f"head counts {bad or 'empty'} must lie in 1..{n_total} (the target's heads); "
                         "use fractions to write a sweep that fits any model")
    return sorted({int(k) for k in ks})


def order_heads(strategy: str, importance: np.ndarray | None, *, n_total: int, seed: int | None = None) -> np.ndarray:
    """Flat head indices (n,) in the order a strategy zeroes them; the first k form its k-set.

    Raises:
        ValueError: unknown strategy, a ranked strategy without importance, random without a seed.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; use one of {STRATEGIES}")
    if strategy == "random":
        if seed is None:
            raise ValueError("the random strategy needs a seed")
        return np.random.default_rng(seed).permutation(n_total)
    if importance is None:
        raise ValueError(f"strategy {strategy!r} needs a head importance; give one or use only 'random'")
    flat = importance.reshape(-1)  # (n,)
    key = {"positive": -flat, "negative": flat, "neutral": np.abs(flat)}[strategy]
    return np.argsort(key, kind="stable")


def head_sets(strategy: str, importance: np.ndarray | None, ks: Sequence[int], *, n_layers: int, n_heads: int,
              seed: int | None = None) -> list[HeadSet]:
    """One :class:`HeadSet` per k of one strategy (and seed, for random)."""
    n_total = n_layers * n_heads
    order = order_heads(strategy, importance, n_total=n_total, seed=seed)
    out = []
    for k in check_ks(ks, n_total):
        heads = tuple(sorted(divmod(int(i), n_heads) for i in order[:k]))
        out.append(HeadSet(strategy=strategy, k=k, seed=seed if strategy == "random" else None, heads=heads))
    return out


def sweep_head_sets(importance: np.ndarray | None, ks: Sequence[int], *, n_layers: int, n_heads: int,
                    strategies: Sequence[str] = STRATEGIES, seeds: Sequence[int] = (0, 1, 2)) -> list[HeadSet]:
    """Every head set of a sweep: each strategy x k, random once per seed."""
    out: list[HeadSet] = []
    for strategy in strategies:
        for seed in (seeds if strategy == "random" else [None]):
            out += head_sets(strategy, importance, ks, n_layers=n_layers, n_heads=n_heads, seed=seed)
    return out
