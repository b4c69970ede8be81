"""Family stability: the adjusted Rand index per head, against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from apmae.patterns.clustering import ClusteringConfig, HeadClusters, PatternClusters
from apmae.patterns.stability import family_stability


def _clusters(labelings: list[list[int]]) -> PatternClusters:
    empty = np.zeros(0, dtype=np.int64)
    heads = [HeadClusters(layer=0, head=i, labels=np.array(labels), sizes=empty, medoids=empty, majority_task=empty,
                          cluster_task_purity=empty.astype(float), correct_share=empty.astype(float),
                          silhouette=float("nan"), seconds=0.0) for i, labels in enumerate(labelings)]
    return PatternClusters(heads=heads, n_layers=1, n_heads=len(heads), config=ClusteringConfig())


def test_adjusted_rand_index_per_head_by_hand():
    first = _clusters([[0, 0, 1, 1, -1, -1], [0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 0, 1]])
    second = _clusters([[1, 1, 0, 0, -1, -1], [0, 0, 1, 1, 2, 2], [0, 0, 0, 0, 0, 0]])
    ari = family_stability(first, second)
    assert ari.shape == (1, 3)
    assert ari[0, 0] == 1.0  # the same partition under other ids, noise as one group
    # contingency [[2, 1, 0], [0, 1, 2]]: (2 - 6 * 3 / 15) / ((6 + 3) / 2 - 6 * 3 / 15) = 0.8 / 3.3
    assert ari[0, 1] == pytest.approx(0.8 / 3.3)
    assert ari[0, 2] == 0.0  # one family against two: no agreement beyond chance
    with pytest.raises(ValueError, match="same heads"):
        family_stability(first, _clusters([[0, 0, 1, 1, 0, 0]]))
