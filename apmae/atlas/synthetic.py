"""A synthetic run of any size: every table the atlas reads, and a cache-like source of patterns.

Glossary: N scenarios, L layers, H heads, S tokens, K families of a head.

For the atlas's scale figures (StarCoder2-15B has 40 x 48 = 1,920 heads, S =
256) and its tests, without a target model: the values are random but every
file has the layout its stage writes, so the atlas reads them as it reads a
real run's. Patterns are causal mixtures of a previous-token, a first-token and
a uniform pattern, weighted per head and scenario.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from apmae.common.head_tables import write_head_table
from apmae.head_metrics.types import TYPES, head_types
from apmae.interventions.report import RESULT_FIELDS
from apmae.patterns.run import SUMMARY_COLUMNS


@dataclass
class SyntheticCache:
    """What the atlas reads from an attention cache: shapes, scenario indices and (L, H, S, S) patterns."""

    n_layers: int
    n_heads: int
    seq_len: int
    n_rows: int
    seed: int = 0

    def __len__(self) -> int:
        return self.n_rows

    @property
    def scenario_index(self) -> np.ndarray:
        return np.arange(self.n_rows) * 3  # scenario ids are not row numbers, as in a real cache

    def scenario(self, i: int) -> np.ndarray:
        """(L, H, S, S) float32 causal patterns of row ``i``."""
        s = self.seq_len
        previous = np.eye(s, k=-1, dtype=np.float32)
        previous[0, 0] = 1.0
        first = np.zeros((s, s), dtype=np.float32)
        first[:, 0] = 1.0
        causal = np.tril(np.ones((s, s), dtype=np.float32))
        base = np.stack([previous, first, causal / causal.sum(1, keepdims=True)])  # (3, S, S)
        weights = np.random.default_rng([self.seed, i]).dirichlet([0.5, 0.5, 0.5], (self.n_layers, self.n_heads))
        return np.einsum("lhk,kst->lhst", weights.astype(np.float32), base)


def write_synthetic_run(root: str | Path, *, n_layers: int, n_heads: int, n_rows: int = 8, max_families: int = 3,
                        target: str = "synthetic", seed: int = 0, stages: tuple[str, ...] = (
                            "probe", "patterns", "head_metrics", "interventions")) -> Path:
    """Write the artifact folders of a run with ``stages`` under ``root``; returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    shape = (n_layers, n_heads)
    if "probe" in stages:
        for name in ("importance", "integrated_gradients"):
            write_head_table(root / "head_importance" / f"{name}.csv", {"importance": rng.normal(0, 0.1, shape)})
        write_head_table(root / "probe-protocol" / "crossfit_importance.csv", {"importance": rng.normal(0, 0.01, shape)})
    if "patterns" in stages:
        _patterns(root, rng, shape, n_rows=n_rows, max_families=max_families)
    if "head_metrics" in stages:
        _head_metrics(root / "head_metrics" / target, rng, shape)
    if "interventions" in stages:
        _interventions(root / "interventions" / "test" / "results.csv", rng, shape)
    return root


def _patterns(root: Path, rng: np.random.Generator, shape: tuple[int, int], *, n_rows: int, max_families: int) -> None:
    families = rng.integers(1, max_families + 1, shape)
    write_head_table(root / "head_importance" / "cluster_probe_importance.csv", {"importance": rng.normal(0, .05, shape)})
    summary = {"n_clusters": families, **{c: rng.uniform(0, 1, shape) for c in SUMMARY_COLUMNS[3:]}}
    write_head_table(root / "clusters" / "summary.csv", summary)
    medoids = np.full((*shape, max_families), -1)
    sizes = np.zeros((*shape, max_families), dtype=np.int64)
    for index in np.ndindex(shape):
        k = families[index]
        medoids[index][:k] = rng.choice(n_rows, k, replace=False)
        sizes[index][:k] = rng.integers(2, 20, k)
    np.savez(root / "clusters" / "labels.npz", medoids=medoids, sizes=sizes, scenario_index=np.arange(n_rows) * 3)


def _head_metrics(folder: Path, rng: np.random.Generator, shape: tuple[int, int]) -> None:
    sink = rng.uniform(0, 1, shape)
    write_head_table(folder / "distance.csv", {"mean_waad": rng.uniform(0, 10, shape), "fai_gini": rng.uniform(0, 1, shape),
                                               "fai_top_share": rng.uniform(0, 1, shape),
                                               "focus": np.where(rng.uniform(size=shape) < .5, "local", "global")})
    write_head_table(folder / "contribution.csv", {"sink_attention": sink, "sink_norm": sink * rng.uniform(0, 1, shape),
                                                   "sink_signed": sink, "attention_vs_norm_l1": rng.uniform(0, 2, shape)})
    maps = {}
    for relation in ("copying", "brackets"):
        maps[relation], maps[f"{relation}_suppression"] = rng.uniform(0, 1, shape), rng.uniform(0, 1, shape)
    write_head_table(folder / "maps_scores.csv", maps)
    scores = {k: rng.beta(0.5, 2.0, shape) for k in TYPES}
    write_head_table(folder / "types.csv", head_types(scores).columns())


def _interventions(path: Path, rng: np.random.Generator, shape: tuple[int, int]) -> None:
    heads = [f"{l}.{h}" for l, h in np.ndindex(shape)]
    rows = []
    for strategy, seeds in (("positive", 1), ("negative", 1), ("random", 3)):
        for k in (1, 4, 16):
            for seed in range(seeds):
                chosen = rng.choice(len(heads), min(k, len(heads)), replace=False)
                rows.append({"scope": "all", "strategy": strategy, "k": k, "seed": seed,
                             "delta_accuracy": float(rng.normal(0, 0.05)), "heads": ";".join(heads[i] for i in chosen)})
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(RESULT_FIELDS), restval=0)
        writer.writeheader()
        writer.writerows(rows)


__all__ = ["SyntheticCache", "write_synthetic_run"]
