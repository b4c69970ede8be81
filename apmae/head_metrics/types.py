"""Head-type detectors: a score in [0, 1] per head for each of six known head types.

Glossary: N scenarios, S tokens (t query, s key), L layers, H query heads,
n length of one random block, W WAAD window.

Scores on the scenarios' own patterns, each a mean over the queries t >= 1
(query 0 can only attend to itself) and the scenarios:

- ``previous_token``: ``A[t, t-1]``, attention on the token just before;
- ``sink``: ``A[t, 0]``, attention parked on the first token;
- ``self``: ``A[t, t]``, attention on the query's own position (the diagonal);
- ``local``: ``1 - mean WAAD / W`` (:mod:`apmae.head_metrics.distance`): 1 for a
  head that only reads its own position, 0 for one that reads W or more back.

Scores on the standard repeated-random-tokens test (Olsson et al., 2022):
``[first, r_0 .. r_{n-1}, r_0 .. r_{n-1}]`` with n distinct random tokens,
``first`` the token every scenario starts with. A query in the second block
at p, holding ``r_i``, has seen ``r_i`` once before, at p - n:

- ``duplicate_token``: ``A[p, p-n]``, attention on the earlier copy of its token;
- ``induction``: ``A[p, p-n+1]``, attention on the token that followed the
  earlier copy (the next token, if the pattern repeats);

each a mean over the n second-block queries and the sequences. Random
tokens make both zero in expectation for any head that does not match
tokens by content, so the scores do not reward heads for positional habits.

A head *is* of a type when its score is at least the type's threshold
(:data:`DEFAULT_THRESHOLDS`): half its attention on the one key that
defines the type (0.4 for induction, the cut-off Olsson et al. and
TransformerLens use), and for ``local`` the WAAD rule of
:func:`apmae.head_metrics.distance.local_heads` (mean WAAD at most half the
window). A head may have several types; its ``head_type`` is the one whose
score passes its threshold by the widest margin (``none`` when none does).

Grouped-query attention: scores are per query head (the model's attentions
already expand key/value heads), and the table names each head's key/value
head (``kv_head``), so heads that share keys and values can be compared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence, TYPE_CHECKING

import numpy as np
import torch

from apmae.head_metrics.distance import DEFAULT_LOCAL_THRESHOLD, DEFAULT_WINDOW, waad
from apmae.target.access import run_batch

if TYPE_CHECKING:  # annotations only: the classes' modules import torch or transformers
    from apmae.target.access import Target

PATTERN_TYPES = ("previous_token", "sink", "self", "local")
REPEAT_TYPES = ("duplicate_token", "induction")
TYPES = ("previous_token", "duplicate_token", "induction", "sink", "self", "local")
DEFAULT_THRESHOLDS = {"previous_token": 0.5, "duplicate_token": 0.5, "induction": 0.4, "sink": 0.5, "self": 0.5,
                      "local": 1.0 - DEFAULT_LOCAL_THRESHOLD}
NO_TYPE = "none"


def check_thresholds(thresholds: Mapping[str, float]) -> dict[str, float]:
    """:data:`DEFAULT_THRESHOLDS` updated by ``thresholds``.

    Raises:
        ValueError: an unknown type or a threshold outside (0, 1].
    """
    unknown = sorted(set(thresholds) - set(TYPES))
    if unknown:
        raise ValueError(f"unknown head types {unknown}; thresholds are set for {list(TYPES)}")
    bad = {k: v for k, v in thresholds.items() if not 0 < v <= 1}
    if bad:
        raise ValueError(f"head-type thresholds {bad} must be in (0, 1]: a score is a share of attention")
    return {**DEFAULT_THRESHOLDS, **thresholds}


def pattern_scores(patterns: np.ndarray, *, window: int = DEFAULT_WINDOW) -> dict[str, np.ndarray]:
    """(N, L, H, S, S) causal patterns -> ``previous_token``, ``sink``, ``self``, ``local``: (L, H) each.

    Raises:
        ValueError: patterns that are not (N, L, H, S, S) with S >= 2.
    """
    if patterns.ndim != 5 or patterns.shape[-1] != patterns.shape[-2] or patterns.shape[-1] < 2:
        raise ValueError(f"patterns of shape {patterns.shape}; expected (N, L, H, S, S) with S >= 2")
    s = patterns.shape[-1]
    t = np.arange(1, s)
    return {"previous_token": patterns[..., t, t - 1].mean((0, -1)),
            "sink": patterns[..., 1:, 0].mean((0, -1)),
            "self": patterns[..., t, t].mean((0, -1)),
            "local": 1.0 - waad(patterns, window=window)[..., 1:].mean((0, -1)) / window}


def repeated_tokens(candidates: np.ndarray, *, first: int, length: int, n_sequences: int,
                    seed: int = 0) -> np.ndarray:
    """(n_sequences, 1 + 2n) sequences ``[first, r, r]`` of n = ``length`` distinct tokens drawn from ``candidates``.

    Raises:
        ValueError: fewer than 2 candidates, or ``length`` outside [2, number of candidates].
    """
    candidates = np.unique(np.asarray(candidates))
    if not 2 <= length <= len(candidates):
        raise ValueError(f"a repeated block of {length} distinct tokens needs 2 <= length <= {len(candidates)} "
                         "(the distinct ordinary tokens available): lower repeat_length or give more scenarios")
    rng = np.random.default_rng(seed)
    block = np.stack([rng.choice(candidates, size=length, replace=False) for _ in range(n_sequences)])
    return np.concatenate([np.full((n_sequences, 1), first), block, block], axis=1).astype(np.int64)


def repeat_scores(attentions: np.ndarray, length: int) -> dict[str, np.ndarray]:
    """(B, L, H, 1 + 2n, 1 + 2n) patterns of :func:`repeated_tokens` -> ``duplicate_token``, ``induction``: (L, H)."""
    p = np.arange(1 + length, 1 + 2 * length)  # (n,) second-block queries
    return {"duplicate_token": attentions[..., p, p - length].mean((0, -1)),
            "induction": attentions[..., p, p - length + 1].mean((0, -1))}


@torch.no_grad()
def model_repeat_scores(target: Target, candidates: np.ndarray, *, first: int, length: int = 32, n_sequences: int = 4,
                        seed: int = 0) -> dict[str, np.ndarray]:
    """:func:`repeat_scores` of ``target`` (an :class:`apmae.target.access.Target`) on its own forward pass."""
    ids = torch.as_tensor(repeated_tokens(candidates, first=first, length=length, n_sequences=n_sequences, seed=seed))
    out = run_batch(target, ids, ids[:, -1])  # the label is unused: only the attentions are read
    return repeat_scores(out.attentions.float().cpu().numpy(), length)


@dataclass
class HeadTypes:
    """Each head's score for every type, the types it passes and its main one."""

    scores: dict[str, np.ndarray]  # type -> (L, H) in [0, 1], the keys of TYPES
    thresholds: dict[str, float]
    kv_head: np.ndarray  # (L, H) int, the key/value head each query head reads

    def passes(self) -> dict[str, np.ndarray]:
        """type -> (L, H) bool, True where the score reaches the type's threshold."""
        return {k: self.scores[k] >= self.thresholds[k] for k in TYPES}

    def main_type(self) -> np.ndarray:
        """(L, H) labels: the passed type of widest margin over its threshold, or ``none``."""
        margins = np.stack([self.scores[k] - self.thresholds[k] for k in TYPES])  # (types, L, H)
        best = margins.argmax(0)
        return np.where(margins.max(0) >= 0, np.array(TYPES)[best], NO_TYPE)

    def all_types(self) -> np.ndarray:
        """(L, H) labels: every passed type joined by ``+`` (``none`` when none)."""
        passed = self.passes()
        shape = self.kv_head.shape
        out = np.empty(shape, dtype=object)
        for index in np.ndindex(shape):
            out[index] = "+".join(k for k in TYPES if passed[k][index]) or NO_TYPE
        return out

    def columns(self) -> dict[str, np.ndarray]:
        """The head table's columns: one score per type, ``kv_head``, ``head_type`` and ``types``."""
        return {**{k: self.scores[k] for k in TYPES}, "kv_head": self.kv_head, "head_type": self.main_type(),
                "types": self.all_types()}


def head_types(scores: Mapping[str, np.ndarray], *, kv_heads: int | None = None,
               thresholds: Mapping[str, float] | None = None) -> HeadTypes:
    """:class:`HeadTypes` from every type's (L, H) scores; ``kv_heads`` per layer (None: no grouping).

    Raises:
        ValueError: a type's score missing, or a query-head count not a multiple of ``kv_heads``.
    """
    missing = [k for k in TYPES if k not in scores]
    if missing:
        raise ValueError(f"no scores for head types {missing}; give all of {list(TYPES)}")
    n_layers, n_heads = np.shape(scores[TYPES[0]])
    kv_heads = kv_heads or n_heads
    if n_heads % kv_heads:
        raise ValueError(f"{n_heads} query heads cannot share {kv_heads} key/value heads evenly")
    kv = np.broadcast_to(np.arange(n_heads) // (n_heads // kv_heads), (n_layers, n_heads)).copy()
    return HeadTypes(scores={k: np.clip(np.asarray(scores[k], dtype=np.float64), 0.0, 1.0) for k in TYPES},
                     thresholds=check_thresholds(thresholds or {}), kv_head=kv)


def type_counts(types: HeadTypes) -> dict[str, int]:
    """How many heads pass each type's threshold."""
    return {k: int(v.sum()) for k, v in types.passes().items()}


def ordinary_tokens(corpus_ids: np.ndarray, special_ids: Sequence[int] = ()) -> np.ndarray:
    """The distinct token ids of a corpus, special tokens left out: candidates of :func:`repeated_tokens`."""
    ids = np.unique(np.asarray(corpus_ids))
    return ids[~np.isin(ids, np.asarray(list(special_ids), dtype=ids.dtype))]


__all__ = ["DEFAULT_THRESHOLDS", "HeadTypes", "NO_TYPE", "PATTERN_TYPES", "REPEAT_TYPES", "TYPES",
           "check_thresholds", "head_types", "model_repeat_scores", "ordinary_tokens", "pattern_scores",
           "repeat_scores", "repeated_tokens", "type_counts"]
