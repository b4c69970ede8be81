"""Cost of the recurring-patterns stage: per-head reduction + HDBSCAN, and the cluster-id probe.

Prints one JSON object. For each reduction (umap, pca, none): the seconds of
the first head in this process (for UMAP that includes numba's compilation)
and the median of the following heads, split into reduction and HDBSCAN. Then
the CatBoost cluster-id probe (the paper's settings) on the PCA cluster ids of
every head.

Encodings come from an encodings file (``--encodings``) or are drawn
(``--rows --dim --heads``): a few Gaussian families per head plus noise,
float16, as AP-MAE CLS encodings are stored.

    python benchmarks/bench_patterns.py --rows 1000 --dim 128 --heads 32          # the demo's size
    python benchmarks/bench_patterns.py --rows 11000 --dim 512 --heads 1 --no-probe  # paper-like, one head
    python benchmarks/bench_patterns.py --encodings artifacts/demo/.../x.enc.h5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Any

import numpy as np

from apmae.patterns.cluster_probe import ClusterProbeConfig, fit_cluster_probe
from apmae.patterns.clustering import REDUCTIONS, ClusteringConfig, cluster_head, hdbscan_labels, reduce_encodings


def drawn_encodings(rows: int, dim: int, heads: int, seed: int) -> dict[str, np.ndarray]:
    """(N, 1, H, D) float16 encodings with 1-4 families per head, random tasks, correctness and splits."""
    rng = np.random.default_rng(seed)
    x = np.empty((rows, 1, heads, dim), dtype=np.float16)
    planted = rng.integers(1, 5, heads)
    for h in range(heads):
        centres = rng.normal(size=(planted[h], dim))
        x[:, 0, h] = centres[rng.integers(0, len(centres), rows)] + 0.6 * rng.normal(size=(rows, dim))
    return {"cls": x, "task": rng.integers(0, 14, rows), "correct": rng.random(rows) < 0.5,
            "split": rng.choice(3, size=rows, p=[0.6, 0.2, 0.2]), "planted": planted}


def file_encodings(path: str) -> dict[str, np.ndarray]:
    from apmae.encodings.store import EncodingSet

    enc = EncodingSet(path)
    return {"cls": enc.array("cls"), "task": enc.task, "correct": enc.correct, "split": enc.split,
            "task_names": enc.task_names}


def time_reduction(x: np.ndarray, config: ClusteringConfig, heads: int) -> dict[str, Any]:
    """Seconds of the first head and the median reduction / HDBSCAN seconds of the next ones."""
    flat = x.reshape(len(x), -1, x.shape[-1])  # (N, L*H, D)
    start = time.perf_counter()
    reduce_encodings(flat[:, 0], config)
    first = time.perf_counter() - start
    reduce_s, hdbscan_s, clusters = [], [], []
    for h in range(1, min(heads, flat.shape[1])):
        start = time.perf_counter()
        points = reduce_encodings(flat[:, h], config)
        mid = time.perf_counter()
        labels = hdbscan_labels(points, config)
        reduce_s.append(mid - start)
        hdbscan_s.append(time.perf_counter() - mid)
        clusters.append(int(labels.max() + 1))
    out = {"first_head_reduction_s": round(first, 3), "heads_timed": len(reduce_s)}
    if reduce_s:
        out.update(median_reduction_s=round(statistics.median(reduce_s), 4),
                   median_hdbscan_s=round(statistics.median(hdbscan_s), 4), clusters_per_head=clusters)
    return out


def time_probe(data: dict[str, np.ndarray], config: ClusteringConfig) -> dict[str, Any]:
    x = data["cls"]
    start = time.perf_counter()
    labels = np.stack([[cluster_head(x[:, l, h], task=data["task"], correct=data["correct"], config=config).labels
                        for h in range(x.shape[2])] for l in range(x.shape[1])], axis=-1)  # (L, N, H)
    clustering = time.perf_counter() - start
    names = data.get("task_names", [f"t{i}" for i in range(int(data["task"].max()) + 1)])
    result = fit_cluster_probe(labels.transpose(1, 0, 2), correct=data["correct"], split=data["split"],
                               task=data["task"], task_names=names, config=ClusterProbeConfig())
    pooled = result.scores["all"]
    return {"pca_clustering_all_heads_s": round(clustering, 2), "catboost_fit_and_shap_s": round(result.seconds, 2),
            "best_iteration": result.best_iteration, "test_balanced_accuracy": round(pooled.balanced_accuracy, 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--encodings", help="an encodings file; otherwise drawn encodings of --rows x --dim")
    p.add_argument("--rows", type=int, default=1000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--reductions", nargs="+", choices=REDUCTIONS, default=list(REDUCTIONS))
    p.add_argument("--umap-heads", type=int, default=4, help="heads timed with UMAP (seconds each)")
    p.add_argument("--min-samples", type=int, default=20)
    p.add_argument("--min-cluster-size", type=int, default=25)
    p.add_argument("--no-probe", action="store_true")
    args = p.parse_args()
    data = file_encodings(args.encodings) if args.encodings else drawn_encodings(args.rows, args.dim, args.heads, 0)
    n, n_layers, n_heads, dim = data["cls"].shape
    out: dict[str, Any] = {"rows": n, "dim": dim, "heads": n_layers * n_heads, "cpus": os.cpu_count(),
                           "omp_threads": os.environ.get("OMP_NUM_THREADS"), "machine": platform.machine()}
    if "planted" in data:  # the first head is the untimed warm-up
        out["planted_families_per_head"] = data["planted"][1:].tolist()
    for reduction in args.reductions:
        config = ClusteringConfig(reduction=reduction, min_samples=args.min_samples,
                                  min_cluster_size=args.min_cluster_size)
        heads = args.umap_heads if reduction == "umap" else n_layers * n_heads
        out[reduction] = time_reduction(data["cls"], config, heads)
    if not args.no_probe:
        out["probe"] = time_probe(data, ClusteringConfig(reduction="pca", min_samples=args.min_samples,
                                                         min_cluster_size=args.min_cluster_size))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
