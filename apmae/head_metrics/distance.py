"""Windowed average attention distance (WAAD), future attention influence (FAI), local/global heads.

Glossary: N scenarios, S tokens (t query, s key), L layers, H heads, W window.

Per head and query t, ``WAAD_t = sum_{s<=t} A_ts * min(t - s, W)``: how far
back the query looks, each key's distance capped at W so that a few distant
keys do not dominate. A previous-token head has WAAD 1 at every t >= 1, a
head that only looks at the first token min(t, W).

Per head and key s, ``FAI_s = mean over t in (s, S) of A_ts``: how much the
later queries read key s (defined for s <= S - 2; the last key has no later
query). Its concentration over the keys says whether a head singles out a
few tokens: the Gini coefficient (0 = every key read equally, (n-1)/n = one
key only) and the share of the total held by the top 5 % of keys.

Local/global rule: a head is *locally focused* when its mean WAAD over the
queries t >= 1 and the scenarios is at most ``local_threshold * W`` (default
half the window: most of its attention within a few tokens), and *globally
focused* otherwise. Sink heads (attention parked on the first token) count as
global by this rule; the sink share of :mod:`apmae.target.contribution`
tells them apart. Anchor tokens of a scenario are the keys with the highest
FAI averaged over its global heads, searched from position 1 on because key 0
is the sink of most heads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DEFAULT_WINDOW = 10
DEFAULT_LOCAL_THRESHOLD = 0.5


def _check_window(window: int) -> None:
    if int(window) != window or window < 1:
        raise ValueError(f"window={window}; the WAAD window must be a whole number of tokens >= 1")


def waad(patterns: np.ndarray, *, window: int = DEFAULT_WINDOW) -> np.ndarray:
    """(..., S, S) causal patterns -> (..., S) windowed average attention distance per query.

    Raises:
        ValueError: ``window`` < 1 or patterns that are not square.
    """
    _check_window(window)
    _check_square(patterns)
    s = patterns.shape[-1]
    offset = np.arange(s)[:, None] - np.arange(s)[None, :]  # (S, S) t - s
    distance = np.clip(offset, 0, window).astype(patterns.dtype)  # 0 above the diagonal
    return (patterns * distance).sum(-1)


def fai(patterns: np.ndarray) -> np.ndarray:
    """(..., S, S) causal patterns -> (..., S - 1) future attention influence of keys 0 .. S-2."""
    _check_square(patterns)
    s = patterns.shape[-1]
    later = np.tril(np.ones((s, s), dtype=patterns.dtype), k=-1)  # (S, S) 1 where t > s
    received = (patterns * later).sum(-2)  # (..., S) sum over t > s
    n_later = np.arange(s - 1, 0, -1, dtype=patterns.dtype)  # (S - 1,) S - 1 - s
    return received[..., :-1] / n_later


def _check_square(patterns: np.ndarray) -> None:
    if patterns.ndim < 2 or patterns.shape[-1] != patterns.shape[-2] or patterns.shape[-1] < 2:
        raise ValueError(f"patterns of shape {patterns.shape}; expected (..., S, S) with S >= 2")


def gini(values: np.ndarray) -> np.ndarray:
    """(..., n) non-negative -> (...) Gini coefficient; 0 for all-equal (or all-zero) values."""
    x = np.sort(values, axis=-1)
    n = x.shape[-1]
    rank_weight = 2 * np.arange(1, n + 1) - n - 1  # (n,)
    total = x.sum(-1)
    return np.where(total > 0, (x * rank_weight).sum(-1) / (n * np.where(total > 0, total, 1)), 0.0)


def top_share(values: np.ndarray, fraction: float = 0.05) -> np.ndarray:
    """(..., n) non-negative -> (...) share of the sum held by the top ceil(fraction * n) values."""
    n = values.shape[-1]
    k = max(1, math.ceil(fraction * n))
    top = -np.sort(-values, axis=-1)[..., :k]
    total = values.sum(-1)
    return np.where(total > 0, top.sum(-1) / np.where(total > 0, total, 1), 0.0)


@dataclass
class ScenarioDistance:
    """WAAD/FAI figures of one scenario's heads."""

    mean_waad: np.ndarray  # (L, H) mean over queries t >= 1
    fai: np.ndarray  # (L, H, S - 1)
    fai_gini: np.ndarray  # (L, H)
    fai_top_share: np.ndarray  # (L, H) top 5 % of keys


def scenario_distance(patterns: np.ndarray, *, window: int = DEFAULT_WINDOW) -> ScenarioDistance:
    """WAAD and FAI summaries of one scenario's (L, H, S, S) patterns."""
    f = fai(patterns)
    return ScenarioDistance(mean_waad=waad(patterns, window=window)[..., 1:].mean(-1), fai=f,
                            fai_gini=gini(f), fai_top_share=top_share(f))


def local_heads(mean_waad: np.ndarray, *, window: int = DEFAULT_WINDOW,
                local_threshold: float = DEFAULT_LOCAL_THRESHOLD) -> np.ndarray:
    """(L, H) mean WAAD -> (L, H) bool, True for locally focused heads (mean WAAD <= threshold * W).

    Raises:
        ValueError: ``window`` < 1 or a threshold outside (0, 1].
    """
    _check_window(window)
    if not 0 < local_threshold <= 1:
        raise ValueError(f"local_threshold={local_threshold}; use a fraction of the window in (0, 1]")
    return mean_waad <= local_threshold * window


def anchor_positions(fai_heads: np.ndarray, heads: np.ndarray, *, top_k: int = 5,
                     first_position: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Keys with the highest FAI averaged over the chosen heads: (positions (k,), scores (k,)), best first.

    ``fai_heads`` is (L, H, S - 1), ``heads`` an (L, H) bool mask; keys before
    ``first_position`` are not candidates. Ties go to the earlier position.

    Raises:
        ValueError: no head chosen, or no candidate key.
    """
    if not heads.any():
        raise ValueError("no heads are chosen for anchor tokens; pass a mask with at least one head")
    score = fai_heads[heads].mean(0)[first_position:]  # (S - 1 - first_position,)
    if score.size == 0:
        raise ValueError(f"first_position={first_position} leaves no key of {fai_heads.shape[-1]} to rank")
    order = np.argsort(-score, kind="stable")[:top_k]
    return order + first_position, score[order]
