"""Stage 6, the correctness probe: P(correct) from per-head features, and head importance.

- :mod:`apmae.probe.net`: the probe network and its exact head importance;
- :mod:`apmae.probe.metrics`: scores per task and pooled, for the probe and every baseline.
"""

from apmae.probe.net import HeadProbe, integrated_gradients_importance, mean_replacement_importance

__all__ = ["HeadProbe", "integrated_gradients_importance", "mean_replacement_importance"]
