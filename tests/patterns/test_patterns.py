"""Per-head clustering: planted families recovered, purities and medoids checked independently, seeds, edge cases."""

from __future__ import annotations

import sys
from collections import Counter

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from apmae.common.optional import MissingExtraError
from apmae.patterns.clustering import (ClusteringConfig, cluster_head, cluster_heads, jitter_duplicates, medoid,
                            reduce_encodings)
from tests.patterns.families import FAMILIES

FAMILY_HEADS = {(0, 0): 0, (1, 1): 1}  # as write_family_cache plants them


def _majority_share(values: np.ndarray, members: np.ndarray) -> float:
    return Counter(values[members].tolist()).most_common(1)[0][1] / len(members)


def _family_of_pattern(pattern: np.ndarray) -> str:
    """Which generator a raw (S, S) pattern follows, read off where its mass lies."""
    s = len(pattern)
    masses = {"diagonal": np.trace(pattern[1:, 1:]), "sink": pattern[1:, 0].sum(),
              "block": sum(pattern[i, (i // 8) * 8:i].sum() for i in range(1, s) if i % 8)}
    return max(masses, key=masses.get)


@pytest.mark.parametrize("reduction", ["pca", "none"])
def test_planted_families_recovered_with_pure_clusters(family_data, reduction) -> None:
    cache, enc, family = family_data
    result = cluster_heads(enc.array("cls"), task=enc.task, correct=enc.correct,
                           config=ClusteringConfig(reduction=reduction))
    for (layer, head), shift in FAMILY_HEADS.items():
        h = result.head(layer, head)
        assert h.n_clusters == 3 and h.noise_fraction <= 0.05
        planted = (family + shift) % 3
        for k in range(3):
            members = np.flatnonzero(h.labels == k)
            assert _majority_share(planted, members) >= 0.95
            # the medoid's raw pattern shows the generator of its cluster's majority
            majority = Counter(planted[members].tolist()).most_common(1)[0][0]
            assert _family_of_pattern(cache.pattern(int(h.medoids[k]), layer, head)) == FAMILIES[majority]
    for layer, head in [(0, 1), (1, 0)]:  # unstructured heads: no families
        assert result.head(layer, head).n_clusters <= 1
    assert (result.n_clusters() > 1).sum() == 2


def test_purities_and_sizes_match_a_direct_count(family_data) -> None:
    _, enc, _ = family_data
    h = cluster_head(enc.head(1, 1), task=enc.task, correct=enc.correct, config=ClusteringConfig(reduction="pca"))
    clustered = np.flatnonzero(h.labels >= 0)
    groups = [np.flatnonzero(h.labels == k) for k in range(h.n_clusters)]
    assert h.sizes.tolist() == [len(g) for g in groups]
    task_hits = sum(_majority_share(enc.task, g) * len(g) for g in groups)
    correct_hits = sum(_majority_share(enc.correct, g) * len(g) for g in groups)
    assert h.task_purity == pytest.approx(task_hits / len(clustered))
    assert h.correct_purity == pytest.approx(correct_hits / len(clustered))
    assert h.largest_cluster_share == pytest.approx(max(len(g) for g in groups) / len(h.labels))
    assert h.correct_share.tolist() == pytest.approx([enc.correct[g].mean() for g in groups])
    assert -1.0 <= h.silhouette <= 1.0
    # by hand, in the clustered space over the clustered rows: s_i = (b_i - a_i) / max(a_i, b_i), a_i the mean
    # distance to the rest of i's cluster, b_i the smallest mean distance to another cluster
    points = reduce_encodings(enc.head(1, 1), ClusteringConfig(reduction="pca"))[clustered]
    labels = h.labels[clustered]
    d = cdist(points, points)
    same = labels[:, None] == labels[None, :]
    a = (d * same).sum(1) / (same.sum(1) - 1)
    to_cluster = np.stack([d[:, labels == k].mean(1) for k in range(h.n_clusters)])  # (K, N)
    to_cluster[labels, np.arange(len(labels))] = np.inf  # a row's own cluster is not "another"
    b = to_cluster.min(0)
    assert h.silhouette == pytest.approx(float(np.mean((b - a) / np.maximum(a, b))), rel=1e-4)
    assert h.silhouette > 0.5  # three well-separated planted families


def test_fixed_seed_gives_identical_labels(family_data) -> None:
    _, enc, _ = family_data
    config = ClusteringConfig(reduction="pca", seed=3)
    a = cluster_heads(enc.array("cls"), task=enc.task, correct=enc.correct, config=config)
    b = cluster_heads(enc.array("cls"), task=enc.task, correct=enc.correct, config=config)
    np.testing.assert_array_equal(a.labels(), b.labels())
    assert a.labels().shape == (len(enc), 2, 2)


@pytest.mark.parametrize("reduction", ["pca", "none"])
def test_head_with_identical_encodings_is_one_family_or_noise(reduction) -> None:
    x = np.ones((60, 16), dtype=np.float16)
    task, correct = np.arange(60) % 3, np.arange(60) % 2 == 0
    h = cluster_head(x, task=task, correct=correct, config=ClusteringConfig(reduction=reduction))
    if h.n_clusters:
        assert h.n_clusters == 1 and h.sizes.tolist() == [60] and h.noise_fraction == 0.0
    else:
        assert h.noise_fraction == 1.0 and np.isnan(h.task_purity)
    assert np.isnan(h.silhouette)
    assert h.summary_row()["n_clusters"] == h.n_clusters


def test_medoid_by_hand_and_against_the_full_distance_matrix() -> None:
    points = np.array([[0.0], [1.0], [2.0], [3.0], [10.0]])  # total distances 16, 13, 12, 13, 34
    assert medoid(points) == 2
    many = np.random.default_rng(0).normal(size=(1500, 3))  # more rows than one distance block
    assert medoid(many) == int(np.argmin(cdist(many, many).sum(axis=1)))


def test_jitter_moves_only_repeated_rows() -> None:
    x = np.array([[1.0, 2.0], [1.0, 2.0], [3.0, 4.0], [1.0, 2.0]])
    y = jitter_duplicates(x, scale=1e-3, seed=0)
    np.testing.assert_array_equal(y[[0, 2]], x[[0, 2]])
    assert np.all(y[[1, 3]] != x[[1, 3]]) and np.abs(y - x).max() < 1e-2
    assert len(np.unique(y, axis=0)) == 4


def test_too_few_rows_and_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="min_cluster_size"):
        cluster_head(np.ones((10, 4)), task=np.zeros(10), correct=np.zeros(10), config=ClusteringConfig(
            reduction="pca"))
    with pytest.raises(ValueError, match="reduction must be one of"):
        ClusteringConfig(reduction="tsne")
    with pytest.raises(ValueError, match="encodings must be"):
        cluster_heads(np.ones((10, 4)), task=np.zeros(10), correct=np.zeros(10))


def test_missing_umap_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "umap", None)  # import umap -> ModuleNotFoundError
    with pytest.raises(MissingExtraError, match=r"pip install 'apmae\[analysis\]'.*") as info:
        reduce_encodings(np.ones((30, 4)), ClusteringConfig(reduction="umap"))
    assert "umap-learn" in str(info.value)


@pytest.mark.slow
def test_umap_recovers_the_planted_families(family_data) -> None:
    _, enc, family = family_data
    h = cluster_head(enc.head(0, 0), task=enc.task, correct=enc.correct, config=ClusteringConfig(reduction="umap"))
    assert h.n_clusters == 3 and h.noise_fraction <= 0.05
    for k in range(3):
        assert _majority_share(family, np.flatnonzero(h.labels == k)) >= 0.95


@pytest.mark.slow
def test_parallel_workers_give_the_serial_labels(family_data) -> None:
    _, enc, _ = family_data
    config = ClusteringConfig(reduction="pca")
    serial = cluster_heads(enc.array("cls"), task=enc.task, correct=enc.correct, config=config)
    parallel = cluster_heads(enc.array("cls"), task=enc.task, correct=enc.correct, config=config, workers=2)
    np.testing.assert_array_equal(serial.labels(), parallel.labels())
    assert [h.medoids.tolist() for h in serial.heads] == [h.medoids.tolist() for h in parallel.heads]


def test_a_progress_bar_over_the_heads_changes_no_family(family_data, capsys) -> None:
    _, enc, _ = family_data
    config = ClusteringConfig(reduction="pca", min_samples=10, min_cluster_size=15)
    quiet = cluster_heads(enc.array("cls"), task=enc.task, correct=enc.correct, config=config)
    shown = cluster_heads(enc.array("cls"), task=enc.task, correct=enc.correct, config=config, progress=True)
    assert [h.labels.tolist() for h in shown.heads] == [h.labels.tolist() for h in quiet.heads]
    assert "pattern families (pca + HDBSCAN)" in capsys.readouterr().err
