"""How stable each head's pattern families are: the same clustering under another seed of the reduction.

Glossary: N scenarios, L layers, H heads.

A family that exists in the encodings, not in one draw of UMAP, should come back when the
reduction is run again with another seed. Per head, the adjusted Rand index (scikit-learn's
``adjusted_rand_score``) between the two labelings says how far it does: 1 = the same partition,
about 0 = no more agreement than chance. HDBSCAN's noise (-1) counts as one more group. A head
with a single family under both seeds scores 1. Reductions that do not use the seed
(PCA with an exact solver, ``none``) score 1 by construction; the check speaks for UMAP.
"""

from __future__ import annotations

import numpy as np

from apmae.common.optional import require
from apmae.patterns.clustering import PatternClusters


def family_stability(first: PatternClusters, second: PatternClusters) -> np.ndarray:
    """(L, H) adjusted Rand index between two clusterings of the same encodings (other seeds)."""
    if (first.n_layers, first.n_heads) != (second.n_layers, second.n_heads) or len(first.heads) != len(second.heads):
        raise ValueError("the two clusterings must cover the same heads")
    metrics = require("sklearn.metrics", extra="analysis", purpose="family stability", package="scikit-learn")
    scores = [metrics.adjusted_rand_score(a.labels, b.labels) for a, b in zip(first.heads, second.heads)]
    return np.array(scores, dtype=np.float64).reshape(first.n_layers, first.n_heads)


__all__ = ["family_stability"]
