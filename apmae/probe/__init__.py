"""Stage 6, the correctness probe: P(correct) from per-head features, and head importance.

- :mod:`apmae.probe.net`: the probe network and its exact head importance;
- :mod:`apmae.probe.metrics`: scores per task and pooled, for the probe and every baseline;
- :mod:`apmae.probe.stage` and :mod:`apmae.probe.export`: what LitProbe trains beside the probe (its baselines,
  head importance) and the files a probe run writes, in plain PyTorch;
- the cross-fitted protocol (``apmae crossfit``): :mod:`~apmae.probe.folds` (grouped, stratified,
  repeated folds), :mod:`~apmae.probe.features` (registered feature sets), :mod:`~apmae.probe.preprocess`
  (what is fitted inside a fold), :mod:`~apmae.probe.linear` and :mod:`~apmae.probe.models` (the models),
  :mod:`~apmae.probe.crossfit` (out-of-fold scores, selection, permutation tests),
  :mod:`~apmae.probe.importance` (cross-fitted head ranking), :mod:`~apmae.probe.report` (the plan and its
  claims), :mod:`~apmae.probe.summary` (table, files, figures), :mod:`~apmae.probe.run` (the command).
"""

from apmae.probe.net import HeadProbe, integrated_gradients_importance, mean_replacement_importance

__all__ = ["HeadProbe", "integrated_gradients_importance", "mean_replacement_importance"]
