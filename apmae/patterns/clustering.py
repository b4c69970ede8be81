"""Recurring attention patterns: per-head clustering of AP-MAE encodings into pattern families.

Glossary: N scenarios (rows), L layers, H heads, D encoder width, C reduced
components, K clusters of one head (label -1 = noise, not a cluster).

For every (layer, head) separately, the (N, D) encodings of that head over all
scenarios are reduced to C dimensions and clustered with HDBSCAN, as in the
AP-MAE paper's analysis. Reductions:

- ``umap``: the paper's settings (C = 8, 20 neighbours, min_dist 0.05, cosine
  metric); duplicate rows are jittered by 1e-3 first, since UMAP's neighbour
  graph breaks on exact duplicates.
- ``pca``: rows scaled to unit length (so Euclidean distance orders pairs as the
  cosine metric does), then the C leading principal components.
- ``none``: HDBSCAN directly on the unit-length D-dimensional rows.

Measured on a 2-core CPU, one thread (``benchmarks/bench_patterns.py``, drawn
encodings with 1-4 Gaussian families per head): at 1,000 x 128 (the demo's
size) UMAP costs 2.0 s per head plus 15-65 s of numba compilation in the first
call of each process (the range is the machine's load), PCA 0.02 s and
``none`` 0.18 s per head; PCA found the planted number of families at all 31
timed heads, ``none`` one family at 30 of them (density in 128 dimensions is
too flat). At 11,000 x 512 (paper-like, machine under load): UMAP 16.7 s + HDBSCAN 2.2 s per head
(first call 211 s), PCA 0.5 s + 3.2 s, ``none`` 398 s for one family.

HDBSCAN's defaults are the paper's (min_samples 20, min_cluster_size 25,
single cluster allowed). A cluster's medoid is its member with the least total
Euclidean distance to the other members in the space HDBSCAN clustered; its
raw attention pattern is what a "pattern family" looks like.
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from apmae.common.optional import require

REDUCTIONS = ("umap", "pca", "none")
_SILHOUETTE_ROWS = 2000  # silhouette is quadratic in rows: score a fixed-seed sample beyond this
_MEDOID_CHUNK = 1024  # rows of the pairwise distance block held at once


@dataclass(frozen=True)
class ClusteringConfig:
    """How one head's encodings are reduced and clustered (defaults: the paper's analysis)."""

    reduction: str = "umap"  # one of REDUCTIONS
    n_components: int = 8  # C, output width of umap / pca (capped by N and D for pca)
    n_neighbors: int = 20  # UMAP neighbourhood size
    min_dist: float = 0.05  # UMAP minimum distance between embedded points
    jitter: float = 1e-3  # std of the Gaussian noise added to duplicate rows before UMAP
    min_samples: int = 20  # HDBSCAN: neighbours that make a point a core point
    min_cluster_size: int = 25  # HDBSCAN: smallest group reported as a cluster
    allow_single_cluster: bool = True  # HDBSCAN may call all rows one family
    seed: int = 0  # UMAP / PCA / jitter / silhouette-sample seed

    def __post_init__(self) -> None:
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {self.reduction!r}")
        for name in ("n_components", "n_neighbors", "min_samples", "min_cluster_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.min_cluster_size < 2:
            raise ValueError(f"min_cluster_size must be at least 2, got {self.min_cluster_size}")
        if self.jitter < 0 or self.min_dist < 0:
            raise ValueError(f"jitter and min_dist must be >= 0, got {self.jitter} and {self.min_dist}")

    def check_rows(self, n_rows: int) -> None:
        """Raise ValueError when ``n_rows`` scenarios are too few for these settings."""
        need = {"min_samples": self.min_samples, "min_cluster_size": self.min_cluster_size}
        if self.reduction == "umap":
            need["n_neighbors"] = self.n_neighbors + 1
        short = {k: v for k, v in need.items() if v > n_rows}
        if short:
            raise ValueError(f"{n_rows} scenarios are too few for {short}: lower those settings "
                             "or cluster more scenarios")


@dataclass
class HeadClusters:
    """The pattern families of one head; per-cluster arrays are indexed by cluster id 0..K-1."""

    layer: int
    head: int
    labels: np.ndarray  # (N,) int, -1 = noise
    sizes: np.ndarray  # (K,) members per cluster
    medoids: np.ndarray  # (K,) row index of each cluster's medoid
    majority_task: np.ndarray  # (K,) most frequent task index among the members
    cluster_task_purity: np.ndarray  # (K,) share of members of the majority task
    correct_share: np.ndarray  # (K,) share of members whose completion is correct
    silhouette: float  # over the clustered rows, in the clustered space; NaN with fewer than 2 clusters
    seconds: float  # reduction + clustering + statistics

    @property
    def n_clusters(self) -> int:
        return len(self.sizes)

    @property
    def noise_fraction(self) -> float:
        return float(np.mean(self.labels < 0)) if len(self.labels) else float("nan")

    @property
    def largest_cluster_share(self) -> float:
        return float(self.sizes.max() / len(self.labels)) if self.n_clusters else 0.0

    @property
    def task_purity(self) -> float:
        """Share of clustered rows whose task is their cluster's majority task (NaN: no cluster)."""
        return _weighted(self.cluster_task_purity, self.sizes)

    @property
    def correct_purity(self) -> float:
        """Share of clustered rows whose correctness is their cluster's majority (NaN: no cluster)."""
        return _weighted(np.maximum(self.correct_share, 1.0 - self.correct_share), self.sizes)

    def summary_row(self) -> dict[str, Any]:
        """One row of ``clusters/summary.csv``."""
        return {"layer": self.layer, "head": self.head, "n_clusters": self.n_clusters,
                "noise_fraction": self.noise_fraction, "largest_cluster_share": self.largest_cluster_share,
                "task_purity": self.task_purity, "correct_purity": self.correct_purity,
                "silhouette": self.silhouette}


def _weighted(values: np.ndarray, sizes: np.ndarray) -> float:
    return float((values * sizes).sum() / sizes.sum()) if len(sizes) else float("nan")


@dataclass
class PatternClusters:
    """The pattern families of every head of an encodings array."""

    heads: list[HeadClusters]  # in (layer, head) order
    n_layers: int
    n_heads: int
    config: ClusteringConfig
    seconds: float = 0.0  # wall time of the whole clustering
    workers: int = 1

    def head(self, layer: int, head: int) -> HeadClusters:
        return self.heads[layer * self.n_heads + head]

    def labels(self) -> np.ndarray:
        """(N, L, H) cluster id of every row at every head (-1 = noise)."""
        return np.stack([h.labels for h in self.heads], axis=1).reshape(-1, self.n_layers, self.n_heads)

    def n_clusters(self) -> np.ndarray:
        """(L, H) number of pattern families per head."""
        return np.array([h.n_clusters for h in self.heads]).reshape(self.n_layers, self.n_heads)

    def summary_rows(self) -> list[dict[str, Any]]:
        return [h.summary_row() for h in self.heads]


# ---------------------------------------------------------------- one head


def _sklearn(module: str) -> Any:
    return require(f"sklearn.{module}", extra="analysis", purpose="pattern clustering", package="scikit-learn")


def unit_rows(x: np.ndarray) -> np.ndarray:
    """(N, D) rows scaled to unit length (all-zero rows stay zero), float64."""
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)  # (N, 1)
    return x / np.where(norm > 0, norm, 1.0)


def jitter_duplicates(x: np.ndarray, *, scale: float, seed: int) -> np.ndarray:
    """Copy of (N, D) ``x`` whose repeated rows (all but each row's first occurrence) get N(0, scale²) noise."""
    x = np.array(x, dtype=np.float64)
    _, first = np.unique(x, axis=0, return_index=True)
    repeated = np.setdiff1d(np.arange(len(x)), first)
    if len(repeated) and scale > 0:
        x[repeated] += np.random.default_rng(seed).normal(0.0, scale, size=(len(repeated), x.shape[1]))
    return x


def reduce_encodings(x: np.ndarray, config: ClusteringConfig) -> np.ndarray:
    """(N, D) encodings of one head -> (N, C) points HDBSCAN clusters (C = D for ``none``)."""
    if config.reduction == "umap":
        umap = require("umap", extra="analysis", purpose="the UMAP reduction of pattern clustering",
                       package="umap-learn")
        points = jitter_duplicates(x, scale=config.jitter, seed=config.seed)
        reducer = umap.UMAP(n_components=config.n_components, n_neighbors=config.n_neighbors,
                            min_dist=config.min_dist, metric="cosine", random_state=config.seed, n_jobs=1)
        return np.asarray(reducer.fit_transform(points), dtype=np.float64)
    unit = unit_rows(x)
    if config.reduction == "none":
        return unit
    pca = _sklearn("decomposition").PCA(n_components=min(config.n_components, *unit.shape), random_state=config.seed)
    return pca.fit_transform(unit)


def hdbscan_labels(points: np.ndarray, config: ClusteringConfig) -> np.ndarray:
    """(N, C) -> (N,) HDBSCAN labels, -1 = noise."""
    model = _sklearn("cluster").HDBSCAN(min_samples=config.min_samples, min_cluster_size=config.min_cluster_size,
                                        allow_single_cluster=config.allow_single_cluster, copy=True)
    return model.fit_predict(points).astype(np.int64)


def medoid(points: np.ndarray) -> int:
    """Index of the row of (M, C) ``points`` with the least total Euclidean distance to the others."""
    from scipy.spatial.distance import cdist  # optional: scipy comes with the `analysis` extra

    totals = np.concatenate([cdist(points[lo:lo + _MEDOID_CHUNK], points).sum(axis=1)
                             for lo in range(0, len(points), _MEDOID_CHUNK)])  # (M,)
    return int(np.argmin(totals))


def silhouette(points: np.ndarray, labels: np.ndarray, *, seed: int) -> float:
    """Silhouette of the clustered rows (noise left out); NaN unless 2 <= K < clustered rows."""
    keep = labels >= 0
    k = len(np.unique(labels[keep]))
    if k < 2 or k >= keep.sum():
        return float("nan")
    sample = min(int(keep.sum()), _SILHOUETTE_ROWS)
    score = _sklearn("metrics").silhouette_score
    return float(score(points[keep], labels[keep], sample_size=sample, random_state=seed))


def cluster_head(x: np.ndarray, *, task: np.ndarray, correct: np.ndarray, config: ClusteringConfig,
                 layer: int = 0, head: int = 0) -> HeadClusters:
    """Pattern families of one head: (N, D) encodings, task (N,) indices, correct (N,) bools."""
    start = time.perf_counter()
    x = np.asarray(x)
    if x.ndim != 2 or len(task) != len(x) or len(correct) != len(x):
        raise ValueError(f"encodings must be (N, D) with N task and correct values, got {x.shape}, "
                         f"{len(task)} and {len(correct)}")
    config.check_rows(len(x))
    points = reduce_encodings(x, config)  # (N, C)
    labels = hdbscan_labels(points, config)  # (N,)
    task, correct = np.asarray(task, dtype=np.int64), np.asarray(correct, dtype=bool)
    ids = np.arange(labels.max() + 1)
    members = [np.flatnonzero(labels == k) for k in ids]
    majority = np.array([np.bincount(task[m]).argmax() for m in members], dtype=np.int64)
    return HeadClusters(
        layer=layer, head=head, labels=labels, sizes=np.array([len(m) for m in members], dtype=np.int64),
        medoids=np.array([m[medoid(points[m])] for m in members], dtype=np.int64), majority_task=majority,
        cluster_task_purity=np.array([np.mean(task[m] == t) for m, t in zip(members, majority)]),
        correct_share=np.array([correct[m].mean() for m in members]),
        silhouette=silhouette(points, labels, seed=config.seed), seconds=time.perf_counter() - start)


# ---------------------------------------------------------------- every head


@dataclass(frozen=True)
class _HeadJob:
    x: np.ndarray  # (N, D)
    layer: int
    head: int
    task: np.ndarray = field(repr=False)
    correct: np.ndarray = field(repr=False)
    config: ClusteringConfig = field(default_factory=ClusteringConfig)


def _run_job(job: _HeadJob) -> HeadClusters:
    return cluster_head(job.x, task=job.task, correct=job.correct, config=job.config, layer=job.layer,
                        head=job.head)


def _one_thread() -> None:
    """Worker initializer: the processes are the parallelism, so each keeps to one BLAS/OpenMP thread."""
    from threadpoolctl import threadpool_limits  # optional: comes with the `analysis` extra

    threadpool_limits(1)


def cluster_heads(encodings: np.ndarray, *, task: np.ndarray, correct: np.ndarray,
                  config: ClusteringConfig | None = None, workers: int = 1, progress: bool = False) -> PatternClusters:
    """Cluster every head of (N, L, H, D) ``encodings``, ``workers`` heads at once in spawned processes
    (``progress``: a bar over the heads).

    ``workers=1`` runs in this process (no start-up cost); more workers pay
    their own imports (and, for UMAP, their own numba compilation) once each.
    """
    config = config or ClusteringConfig()
    if encodings.ndim != 4:
        raise ValueError(f"encodings must be (N, L, H, D), got shape {encodings.shape}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    n, n_layers, n_heads, _ = encodings.shape
    config.check_rows(n)
    jobs = [_HeadJob(encodings[:, layer, head], layer, head, task, correct, config)
            for layer in range(n_layers) for head in range(n_heads)]
    start = time.perf_counter()
    bar = tqdm(total=len(jobs), desc=f"pattern families ({config.reduction} + HDBSCAN)", unit="head",
               disable=not progress, leave=False)
    heads = []
    if workers == 1:
        for job in jobs:
            heads.append(_run_job(job))
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), initializer=_one_thread,
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            for head in pool.map(_run_job, jobs):
                heads.append(head)
                bar.update()
    bar.close()
    return PatternClusters(heads=heads, n_layers=n_layers, n_heads=n_heads, config=config,
                           seconds=time.perf_counter() - start, workers=workers)


__all__ = ["ClusteringConfig", "HeadClusters", "PatternClusters", "REDUCTIONS", "cluster_head", "cluster_heads",
           "hdbscan_labels", "jitter_duplicates", "medoid", "reduce_encodings", "silhouette", "unit_rows"]
