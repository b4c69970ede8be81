"""Attention caches whose heads follow planted pattern families, and their AP-MAE encodings.

Three generators of causal patterns: ``diagonal`` (each token attends to
itself), ``sink`` (every token attends to the first), ``block`` (tokens attend
within their block of 8). At each family head every scenario draws one family;
the other heads are unstructured random softmax patterns. The encoder is
a freshly initialised (seeded) tiny AP-MAE, so what is tested is the
clustering, not training: at :data:`NOISE` = 0.3 the families lie well apart in
its CLS space; at 1.0 they overlap and HDBSCAN calls them one family.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from apmae.cache.store import AttentionCache
from apmae.encodings.store import EncodingSet, ensure_encodings
from tests.probe.synthetic_cache import scenario_set, write_patterns_cache

FAMILIES = ("diagonal", "sink", "block")
NOISE = 0.3  # std of the random logits: families stay apart under a randomly initialised encoder


def family_scores(seq_len: int) -> torch.Tensor:
    """(3, S, S) logits added to random scores for each family, in :data:`FAMILIES` order."""
    q, k = torch.arange(seq_len).view(-1, 1), torch.arange(seq_len).view(1, -1)
    diagonal = torch.where(q == k, 6.0, 0.0)
    sink = torch.where(k == 0, 6.0, 0.0).expand(seq_len, seq_len)
    block = torch.where(q // 8 == k // 8, 4.0, 0.0)
    return torch.stack([diagonal, sink, block])


def family_patterns(family: np.ndarray, *, layers: int, heads: int, seq_len: int,
                    family_heads: dict[tuple[int, int], int], seed: int) -> torch.Tensor:
    """(N, L, H, S, S) softmax patterns; head (l, h) in ``family_heads`` follows ``(family + shift) % 3``.

    ``family`` (N,) holds each scenario's family index; the value of a head in
    ``family_heads`` shifts it, so two family heads group the same scenarios
    under different generators.
    """
    g = torch.Generator().manual_seed(seed)
    n = len(family)
    scores = NOISE * torch.randn(n, layers, heads, seq_len, seq_len, generator=g)
    planted = family_scores(seq_len)
    for (layer, head), shift in family_heads.items():
        scores[:, layer, head] += planted[torch.as_tensor((family + shift) % 3)]
    causal = torch.ones(seq_len, seq_len, dtype=torch.bool).tril()
    return scores.masked_fill(~causal, float("-inf")).softmax(-1)


def write_family_cache(cache_dir: Path, *, n: int = 150, layers: int = 2, heads: int = 2, seq_len: int = 32,
                       family_heads: dict[tuple[int, int], int] | None = None,
                       seed: int = 0) -> tuple[AttentionCache, np.ndarray]:
    """A cache whose ``family_heads`` (default (0, 0) and (1, 1)) follow planted families; also (N,) families.

    ``correct`` is the scenario's family being ``diagonal``, so a probe over the
    family heads' cluster ids can predict it.
    """
    family_heads = {(0, 0): 0, (1, 1): 1} if family_heads is None else family_heads
    family = np.random.default_rng(seed).permutation(np.arange(n) % 3)
    patterns = family_patterns(family, layers=layers, heads=heads, seq_len=seq_len, family_heads=family_heads,
                               seed=seed)
    correct = family == 0
    files = write_patterns_cache(cache_dir, name="families", scenarios=scenario_set(n, seq_len, seed=seed),
                                 patterns=patterns, correct=correct,
                                 probability=np.where(correct, 0.7, 0.3).astype(np.float32))
    return AttentionCache(files), family


def random_encoder_encodings(cache: AttentionCache, path: Path, *, seed: int = 0) -> EncodingSet:
    """Encodings of ``cache`` under a freshly initialised tiny AP-MAE (fixed seed)."""
    from apmae.model.net import APMAE

    torch.manual_seed(seed)
    net = APMAE.from_preset("tiny", seq_len=cache.seq_len, patch_size=8)
    return ensure_encodings(net, cache, path, progress=False, batch_size=16)
