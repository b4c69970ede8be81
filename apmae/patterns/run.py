"""Recurring-patterns stage: cluster every head's encodings, draw the families, fit the cluster-id probe.

    apmae patterns --encodings ENC.h5 --cache 'CACHE.rank*.h5' --out DIR
        [--reduction pca|umap|none] [--workers 1] [--run-id RUN --tracking-uri URI]

(``python -m apmae patterns ...`` is the same command; :func:`main` is its parser.)

Glossary: N scenarios, L layers, H heads, D encoder width, K clusters of one head.

Writes under ``out_dir`` (and, given an MLflow run id, logs as that run's artifacts):

- ``clusters/summary.csv``: one row per head: layer, head, n_clusters, noise_fraction,
  largest_cluster_share, task_purity, correct_purity, silhouette, stability_ari (the adjusted Rand
  index between this clustering and one with the reduction's seed + 1, :mod:`apmae.patterns.stability`;
  empty with ``--no-stability``);
- ``clusters/labels.npz``: ``labels`` (N, L, H) cluster ids (-1 noise), ``scenario_index`` (N,),
  and per head, padded to the largest K with -1 / 0: ``medoids``, ``sizes``,
  ``majority_task`` (L, H, K), ``task_names``;
- ``clusters/families_heatmap.png``: pattern families per head (L x H);
- ``clusters/montage_L<l>_H<h>.png``: medoid patterns of the heads with the most families
  and of the multi-family heads with the highest correctness purity;
- ``head_importance/cluster_probe_importance.csv`` (``layer,head,importance``, the
  signed mean SHAP on the evaluation rows) and ``cluster_probe_shap.csv`` (every SHAP summary);
- metrics ``test/cluster_probe/<task>/{accuracy,balanced_accuracy,auroc,f1,n}`` (with
  ``.../{balanced_accuracy,auroc}/{ci_low,ci_high}``: stratified bootstrap intervals) and
  ``clusters/{multi_family_heads,mean_families,mean_noise_fraction,seconds_per_head}``
  (and ``clusters/{mean,min}_stability_ari``).

The demo's reduction is PCA: at the demo's size its 32 heads cluster in ~1 s,
UMAP's in ~80 s or more (2 s per head plus 15-65 s of numba compilation, figures
in :mod:`apmae.patterns.clustering`); ``--reduction umap`` is the paper's setting.
"""

from __future__ import annotations

import argparse
import csv
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from apmae.cache.store import AttentionCache
from apmae.common.tracking import log_to_run
from apmae.encodings.store import EncodingSet, EncodingSubset
from apmae.mining.tasks import CONTROL_TASK
from apmae.patterns.cluster_probe import (ClusterProbeConfig, ClusterProbeResult, fit_cluster_probe,
                                          write_importance_csv, write_shap_csv)
from apmae.patterns.clustering import REDUCTIONS, ClusteringConfig, HeadClusters, PatternClusters, cluster_heads
from apmae.patterns.figures import families_heatmap, medoid_montage
from apmae.patterns.settings import DEMO_REDUCTION, KINDS, RANKINGS, PatternSettings, moved_to_patterns
from apmae.patterns.stability import family_stability

if TYPE_CHECKING:  # annotations only: the live reader imports torch
    from apmae.cache.live import LivePatterns

SUMMARY = "cluster every head's encodings, draw the pattern families, fit the cluster-id probe"
SUMMARY_COLUMNS = ("layer", "head", "n_clusters", "noise_fraction", "largest_cluster_share", "task_purity",
                   "correct_purity", "silhouette", "stability_ari")


@dataclass
class PatternsReport:
    """What the recurring-patterns stage found and wrote."""

    clusters: PatternClusters
    probe: ClusterProbeResult | None
    montage_heads: list[tuple[int, int]]
    artifacts: dict[str, Path]  # artifact path (relative to out_dir) -> file
    seconds: dict[str, float] = field(default_factory=dict)  # clustering, stability, probe, figures, total
    stability: np.ndarray | None = None  # (L, H) ARI between the clustering and one with the next seed
    control_task: int | None = None  # index of the noise-control task (random token ids), when the data has it

    @property
    def multi_family_heads(self) -> int:
        """Heads with more than one recurring pattern (cluster)."""
        return int((self.clusters.n_clusters() > 1).sum())

    def families_beyond_control(self) -> np.ndarray:
        """(L, H) families per head, not counting a family made only of noise-control scenarios.

        Random token ids make patterns of their own; a head whose second family is just those
        separates the control from code, not two ways of attending to code.
        """
        if self.control_task is None:
            return self.clusters.n_clusters()
        only_control = [int(((h.majority_task == self.control_task) & (h.cluster_task_purity >= 1.0)).sum())
                        for h in self.clusters.heads]
        return self.clusters.n_clusters() - np.array(only_control).reshape(self.clusters.n_layers,
                                                                            self.clusters.n_heads)

    def metrics(self) -> dict[str, float]:
        n_clusters = self.clusters.n_clusters()
        noise = np.array([h.noise_fraction for h in self.clusters.heads])
        out = {"clusters/multi_family_heads": float(self.multi_family_heads),
               "clusters/multi_family_heads_beyond_control": float((self.families_beyond_control() > 1).sum()),
               "clusters/mean_families": float(n_clusters.mean()),
               "clusters/mean_noise_fraction": float(noise.mean()),
               "clusters/seconds_per_head": self.clusters.seconds / max(len(self.clusters.heads), 1)}
        if self.stability is not None:
            out |= {"clusters/mean_stability_ari": float(self.stability.mean()),
                    "clusters/min_stability_ari": float(self.stability.min())}
        probe = {**self.probe.metrics, **self.probe.interval_metrics} if self.probe else {}
        return {**out, **probe}

    def lines(self) -> list[str]:
        c = self.clusters
        total = c.n_layers * c.n_heads
        out = [f"Recurring patterns ({c.config.reduction} + HDBSCAN, {len(c.heads[0].labels)} scenarios): "
               f"{self.multi_family_heads} of {total} heads show more than one recurring pattern "
               f"(families per head: max {c.n_clusters().max()}, mean {c.n_clusters().mean():.2f}); "
               f"clustering {self.seconds.get('clustering', 0.0):.1f} s"]
        if self.probe is not None:
            pooled, u = self.probe.scores["all"], (self.probe.uncertainty or {}).get("all")
            ci = {m: f" {u.intervals[m]}" if u else "" for m in ("balanced_accuracy", "auroc")}
            out.append(f"  cluster-id probe (CatBoost over per-head cluster ids), test: balanced accuracy "
                       f"{pooled.balanced_accuracy:.3f}{ci['balanced_accuracy']}, AUROC {pooled.auroc:.3f}"
                       f"{ci['auroc']} (n={pooled.n}, "
                       f"{'class-balanced, ' if self.probe.balanced else ''}{self.probe.seconds:.1f} s)")
        if self.stability is not None:
            out.append(f"  family stability (adjusted Rand index against seed {self.clusters.config.seed + 1}, per "
                       f"head): mean {self.stability.mean():.2f}, min {self.stability.min():.2f}, "
                       f"{int((self.stability >= 0.9).sum())} of {self.stability.size} heads >= 0.90 "
                       f"({self.seconds.get('stability', 0.0):.1f} s)")
        if self.control_task is not None:
            beyond = self.families_beyond_control()
            out.append(f"  not counting a family made only of the noise control: {int((beyond > 1).sum())} of {total} "
                       f"heads show more than one (mean {beyond.mean():.2f} families per head)")
        out.append(f"  montages of heads {', '.join(f'L{l}H{h}' for l, h in self.montage_heads) or 'none'}")
        return out


# ---------------------------------------------------------------- tables


def write_summary(path: Path, clusters: PatternClusters, stability: np.ndarray | None = None) -> Path:
    """``clusters/summary.csv``: one row per head, columns :data:`SUMMARY_COLUMNS` (stability empty without it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS)
        writer.writeheader()
        for row, head in zip(clusters.summary_rows(), clusters.heads):
            row["stability_ari"] = None if stability is None else float(stability[head.layer, head.head])
            writer.writerow({k: (repr(float(v)) if isinstance(v, float) else v) for k, v in row.items()})
    return path


def _padded(heads: list[HeadClusters], n_layers: int, n_heads: int, name: str, fill: int) -> np.ndarray:
    k = max([h.n_clusters for h in heads] + [1])
    out = np.full((n_layers, n_heads, k), fill, dtype=np.int64)  # (L, H, K)
    for h in heads:
        out[h.layer, h.head, : h.n_clusters] = getattr(h, name)
    return out


def write_labels(path: Path, clusters: PatternClusters, scenario_index: np.ndarray,
                 task_names: Sequence[str]) -> Path:
    """``clusters/labels.npz`` (see the module docstring)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    padded = {name: _padded(clusters.heads, clusters.n_layers, clusters.n_heads, name, fill)
              for name, fill in (("medoids", -1), ("sizes", 0), ("majority_task", -1))}
    np.savez(path, labels=clusters.labels().astype(np.int32), scenario_index=np.asarray(scenario_index),
             task_names=np.array(list(task_names)), **padded)
    return path


# ---------------------------------------------------------------- figures


def select_montage_heads(clusters: PatternClusters, n: int) -> list[tuple[int, int]]:
    """The ``n`` heads with the most families, then the ``n`` multi-family heads of highest correctness purity."""
    def purity(h: HeadClusters) -> float:
        return -1.0 if np.isnan(h.correct_purity) else h.correct_purity

    by_families = sorted((h for h in clusters.heads if h.n_clusters >= 1),
                         key=lambda h: (-h.n_clusters, -purity(h)))[:n]
    by_correct = sorted((h for h in clusters.heads if h.n_clusters >= 2), key=lambda h: -purity(h))[:n]
    chosen: list[tuple[int, int]] = []
    for h in by_families + by_correct:
        if (h.layer, h.head) not in chosen:
            chosen.append((h.layer, h.head))
    return chosen


def head_montage(head: HeadClusters, cache: AttentionCache | LivePatterns, task_names: Sequence[str], *,
                 max_clusters: int) -> Any:
    """Montage of the medoid raw patterns of ``head``'s largest ``max_clusters`` clusters."""
    order = np.argsort(-head.sizes, kind="stable")[:max_clusters]
    patterns = [cache.pattern(int(head.medoids[k]), head.layer, head.head) for k in order]
    titles = [f"c{k}: n={head.sizes[k]} | {task_names[head.majority_task[k]]} "
              f"{head.cluster_task_purity[k]:.0%}\ncorrect {head.correct_share[k]:.0%}" for k in order]
    title = (f"layer {head.layer} head {head.head}: {head.n_clusters} families, noise {head.noise_fraction:.0%}, "
             f"task purity {head.task_purity:.2f}, correct purity {head.correct_purity:.2f}")
    return medoid_montage(patterns, titles, title=title)


def write_figures(out: Path, clusters: PatternClusters, cache: AttentionCache | LivePatterns,
                  task_names: Sequence[str], *, heads: list[tuple[int, int]], max_clusters: int) -> dict[str, Path]:
    """The families heatmap and one montage per chosen head, as PNGs under ``out/clusters``."""
    # pyplot only after apmae.patterns.figures chose its non-interactive backend
    import matplotlib.pyplot as plt

    figures = {"clusters/families_heatmap.png": families_heatmap(
        clusters.n_clusters(), title=f"pattern families per head ({clusters.config.reduction} + HDBSCAN)")}
    for layer, head in heads:
        figures[f"clusters/montage_L{layer}_H{head}.png"] = head_montage(
            clusters.head(layer, head), cache, task_names, max_clusters=max_clusters)
    written = {}
    for name, fig in figures.items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written[name] = path
    return written


# ---------------------------------------------------------------- the stage


def check_aligned(encodings: EncodingSet | EncodingSubset, cache: AttentionCache | LivePatterns) -> None:
    """Raise ValueError unless row i of ``encodings`` is row i of ``cache`` (same scenarios, same heads)."""
    same_rows = len(encodings) == len(cache) and np.array_equal(
        encodings.columns["scenario_index"], cache.columns["scenario_index"])
    if not same_rows or (encodings.n_layers, encodings.n_heads) != (cache.n_layers, cache.n_heads):
        raise ValueError(f"encodings {encodings.path} ({len(encodings)} rows, {encodings.n_layers}x{encodings.n_heads} "
                         f"heads) were not computed from this cache ({len(cache)} rows, {cache.n_layers}x"
                         f"{cache.n_heads}): pass the cache the encodings file was built from")


def run_recurring_patterns(
    encodings: EncodingSet | EncodingSubset,
    cache: AttentionCache | LivePatterns,
    out_dir: str | Path,
    settings: PatternSettings | Mapping[str, Any] | None = None,
    *,
    run_id: str | None = None,
    tracking_uri: str | None = None,
    **moved: Any,
) -> PatternsReport:
    """Cluster every head of an :class:`~apmae.encodings.EncodingSet`, draw, probe, write and log.

    Args:
        encodings: the AP-MAE encodings of ``cache`` (row i = cache row i).
        cache: the :class:`~apmae.cache.AttentionCache` the medoid patterns are read from (or any reader
            of patterns by row, such as :class:`apmae.cache.live.LivePatterns`).
        out_dir: folder receiving ``clusters/`` and ``head_importance/``.
        settings: how to cluster, draw and probe (:class:`apmae.patterns.settings.PatternSettings`, a dict of
            its fields, or None for its defaults).
        run_id, tracking_uri: MLflow run that receives the artifacts and metrics (None: files only).

    Raises:
        TypeError: a setting passed on its own (``reduction=...``) rather than inside ``settings``.
        ValueError: encodings not computed from ``cache``, or a bad setting (named).
    """
    moved_to_patterns("run_recurring_patterns", moved)
    p = PatternSettings.of(settings)
    check_aligned(encodings, cache)
    config = ClusteringConfig(reduction=p.reduction, min_samples=p.min_samples, min_cluster_size=p.min_cluster_size,
                              seed=p.seed)
    out, start = Path(out_dir), time.perf_counter()
    cluster = partial(cluster_heads, encodings.array(p.kind), task=encodings.task, correct=encodings.correct,
                      workers=p.workers, progress=p.progress)
    clusters = cluster(config=config)
    t_stability = time.perf_counter()
    ari = family_stability(clusters, cluster(config=replace(config, seed=p.seed + 1))) if p.stability else None
    seconds = {"clustering": clusters.seconds, "stability": time.perf_counter() - t_stability}
    artifacts = {"clusters/summary.csv": write_summary(out / "clusters/summary.csv", clusters, ari),
                 "clusters/labels.npz": write_labels(out / "clusters/labels.npz", clusters,
                                                     encodings.columns["scenario_index"], encodings.task_names)}
    t_figures = time.perf_counter()
    chosen = select_montage_heads(clusters, p.montage_heads)
    artifacts.update(write_figures(out, clusters, cache, encodings.task_names, heads=chosen,
                                   max_clusters=p.max_montage_clusters))
    t_probe = time.perf_counter()
    result = _probe(clusters, encodings, p.probe, p.ranking, out, artifacts) if p.probe is not None else None
    seconds |= {"figures": t_probe - t_figures, "probe": time.perf_counter() - t_probe,
                "total": time.perf_counter() - start}
    names = list(encodings.task_names)
    report = PatternsReport(clusters=clusters, probe=result, montage_heads=chosen, artifacts=artifacts,
                            seconds=seconds, stability=ari,
                            control_task=names.index(CONTROL_TASK) if CONTROL_TASK in names else None)
    if run_id is not None:
        log_to_mlflow(report, run_id=run_id, tracking_uri=tracking_uri)
    return report


def _probe(clusters: PatternClusters, encodings: EncodingSet | EncodingSubset, config: ClusterProbeConfig,
           ranking: str, out: Path, artifacts: dict[str, Path]) -> ClusterProbeResult:
    result = fit_cluster_probe(clusters.labels(), correct=encodings.correct, split=encodings.split,
                               task=encodings.task, task_names=encodings.task_names, config=config)
    for name, write, value in (("cluster_probe_importance.csv", write_importance_csv, getattr(result.shap, ranking)),
                               ("cluster_probe_shap.csv", write_shap_csv, result.shap)):
        artifacts[f"head_importance/{name}"] = write(out / "head_importance" / name, value)
    return result


def log_to_mlflow(report: PatternsReport, *, run_id: str, tracking_uri: str | None = None) -> None:
    """Log the report's artifacts (under their folders) and metrics into an existing MLflow run."""
    log_to_run(run_id, tracking_uri=tracking_uri, artifacts=report.artifacts, metrics=report.metrics())


# ---------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The arguments of ``apmae patterns``."""
    p = argparse.ArgumentParser(prog="apmae patterns", description=__doc__.split("\n\n")[0])
    p.add_argument("--encodings", required=True, help="encodings file (apmae.encodings.store) of the cache")
    p.add_argument("--cache", required=True, nargs="+", help="attention cache file(s) or a quoted glob")
    p.add_argument("--out", required=True, help="output folder (clusters/, head_importance/)")
    p.add_argument("--reduction", choices=REDUCTIONS, default=DEMO_REDUCTION)
    p.add_argument("--kind", choices=KINDS, default="cls")
    p.add_argument("--min-samples", type=int, default=20)
    p.add_argument("--min-cluster-size", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="heads clustered at once (processes)")
    p.add_argument("--no-probe", action="store_true", help="skip the cluster-id probe")
    p.add_argument("--balance", action="store_true",
                   help="class-balance every split per task, as the neural probe's DataModule does (its seed: --seed)")
    p.add_argument("--no-stability", action="store_true",
                   help="skip the second clustering (seed + 1) that measures each head's family stability")
    p.add_argument("--ranking", choices=RANKINGS, default="mean", help="SHAP summary written as importance")
    p.add_argument("--run-id", help="MLflow run to log into")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> PatternsReport:
    """``apmae patterns [arguments]``: run the stage on the files named in ``argv`` and print its report."""
    args = parse_args(argv)
    cache = AttentionCache(args.cache[0] if len(args.cache) == 1 else args.cache)
    settings = PatternSettings(
        reduction=args.reduction, kind=args.kind, min_samples=args.min_samples, min_cluster_size=args.min_cluster_size,
        seed=args.seed, workers=args.workers, ranking=args.ranking, stability=not args.no_stability,
        probe=None if args.no_probe else ClusterProbeConfig(seed=args.seed, balance=args.balance,
                                                            balance_seed=args.seed))
    report = run_recurring_patterns(EncodingSet(args.encodings), cache, args.out, settings, run_id=args.run_id,
                                    tracking_uri=args.tracking_uri)
    print("\n".join(report.lines()))
    return report
