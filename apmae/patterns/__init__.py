"""Stage 8, recurring patterns: per-head families of AP-MAE encodings (``apmae patterns``).

- :mod:`apmae.patterns.clustering`: reduction (PCA / UMAP) and HDBSCAN per head;
- :mod:`apmae.patterns.cluster_probe`: the cluster-id probe (CatBoost) and its SHAP ranking;
- :mod:`apmae.patterns.stability`: per-head agreement of the families under another seed (ARI);
- :mod:`apmae.patterns.figures`: families per head and medoid montages;
- :mod:`apmae.patterns.run`: the stage, from an encodings file to figures and tables.
"""

from apmae.patterns.clustering import ClusteringConfig, cluster_heads

__all__ = ["ClusteringConfig", "cluster_heads"]
