"""The recurring-patterns stage's settings, one object passed whole (:mod:`apmae.patterns.run`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from apmae.common.settings import check_choice, refuse_moved, settings_of
from apmae.patterns.cluster_probe import ClusterProbeConfig
from apmae.patterns.clustering import REDUCTIONS

DEMO_REDUCTION = "pca"
RANKINGS = ("mean", "mean_positive", "mean_negative", "mean_abs")
KINDS = ("cls", "mean")


@dataclass(frozen=True)
class PatternSettings:
    """How the recurring-patterns stage clusters every head, draws the families and fits the cluster-id probe.

    Args:
        reduction: ``pca`` (the demo's), ``umap`` (the paper's) or ``none``.
        kind: which encoding is clustered, ``cls`` (the paper's) or ``mean``.
        min_samples, min_cluster_size: HDBSCAN's settings (the paper's 20 / 25).
        seed: fixes UMAP, PCA, jitter, the silhouette sample and CatBoost.
        workers: heads clustered at once in separate processes.
        probe: the cluster-id probe's settings (a :class:`ClusterProbeConfig` or a dict of its fields);
            None skips the probe.
        ranking: which per-head SHAP summary is the ``importance`` column (one of :data:`RANKINGS`).
        montage_heads: heads per montage criterion (most families; highest correctness purity).
        max_montage_clusters: medoids shown per montage (the largest clusters).
        stability: cluster again with ``seed + 1`` and report each head's adjusted Rand index between the
            two (doubles the clustering time).
        progress: a progress bar over the heads while clustering.
    """

    reduction: str = DEMO_REDUCTION
    kind: str = "cls"
    min_samples: int = 20
    min_cluster_size: int = 25
    seed: int = 0
    workers: int = 1
    probe: Optional[ClusterProbeConfig] = field(default_factory=ClusterProbeConfig)
    ranking: str = "mean"
    montage_heads: int = 3
    max_montage_clusters: int = 12
    stability: bool = True
    progress: bool = False

    def __post_init__(self) -> None:
        """Raises ``ValueError`` naming the ``patterns.<field>`` to change."""
        check_choice("patterns.reduction", self.reduction, REDUCTIONS)
        check_choice("patterns.kind", self.kind, KINDS)
        check_choice("patterns.ranking", self.ranking, RANKINGS)
        if isinstance(self.probe, Mapping):
            object.__setattr__(self, "probe", ClusterProbeConfig(**self.probe))
        for name in ("min_samples", "min_cluster_size", "workers", "montage_heads", "max_montage_clusters"):
            if getattr(self, name) < 1:
                raise ValueError(f"patterns.{name}={getattr(self, name)} must be at least 1")

    @classmethod
    def of(cls, value: "PatternSettings | Mapping[str, Any] | None") -> "PatternSettings":
        """``value`` as PatternSettings: itself, one built from a mapping of its fields, or the defaults."""
        return settings_of(cls, value, "patterns")


def moved_to_patterns(owner: str, arguments: Mapping[str, Any]) -> None:
    """Refuse the settings ``owner`` once took one by one, naming ``settings=PatternSettings(...)``."""
    refuse_moved(owner, arguments, PatternSettings, "patterns", "settings")


__all__ = ["DEMO_REDUCTION", "KINDS", "PatternSettings", "RANKINGS", "moved_to_patterns"]
