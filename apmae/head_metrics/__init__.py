"""Per-head metrics of related work, computed on the same scenarios as AP-MAE.

Each module is one method, plain torch/numpy, usable without Lightning:

- :mod:`apmae.target.layout`: where a model keeps each head's value and
  output projections (grouped-query attention mapped to query heads);
- :mod:`apmae.target.contribution` (in the target stage, since the cache can store them too):
  value-aware contribution weights (signed and norm-based) captured in the forward pass that
  yields the attentions;
- :mod:`apmae.head_metrics.distance`: windowed average attention distance (WAAD),
  future attention influence (FAI), the local/global head rule and anchor tokens;
- :mod:`apmae.head_metrics.relations` and :mod:`apmae.head_metrics.maps`: MAPS,
  what a head's OV circuit maps tokens to, from its parameters alone;
- :mod:`apmae.head_metrics.report`: plain CSV tables and head names (per-head tables and
  L x H heatmaps are :mod:`apmae.common.head_tables`);
- :mod:`apmae.head_metrics.types`: head-type detectors (previous-token, duplicate-token,
  induction, sink, self, local) with their thresholds;
- :mod:`apmae.head_metrics.suite`: all of them on a target and a cache's rows.
"""
