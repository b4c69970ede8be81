"""Whether an intervention changed anything: intervals, flip tests and the random-head null, per setting.

Glossary: N scenarios of a sweep, k heads zeroed, m random head sets (seeds) of the same k.

For every setting (scope, strategy, k, seed) of one evaluation's sweeps:

- ``accuracy_ci``, ``exact_match_ci``: Wilson 95 % intervals of the first-token accuracy and
  the exact-match share over the sweep's N scenarios;
- ``p_mcnemar``: exact McNemar test of the flips ``i2c`` against ``c2i`` (paired: the same
  scenarios with and without the heads zeroed), two-sided;
- ``p_mcnemar_bh``: that p-value adjusted by Benjamini-Hochberg over the ranked settings
  (positive, negative, neutral) of every sweep of the evaluation, the global ranking's and each
  task's together: the family a reader scans for "which setting changed the target";
- ``p_vs_random``: where a ranked setting's accuracy sits among the m random head sets of the
  same k (:func:`apmae.common.stats.rank_p_value`, two-sided); with m seeds it cannot go below
  2 / (m + 1), so it says "outside the random band" only with enough seeds (39 for 0.05).

Random settings get intervals and McNemar p-values per seed but no adjustment and no
``p_vs_random``: they are the null.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from apmae.common.stats import (NAN_INTERVAL, Interval, benjamini_hochberg, mcnemar_exact, rank_p_value,
                                wilson_interval)
from apmae.interventions.sweep import SweepResult

RANDOM = "random"
TEST_FIELDS = ("accuracy_ci_low", "accuracy_ci_high", "exact_match_ci_low", "exact_match_ci_high", "p_mcnemar",
               "p_mcnemar_bh", "p_vs_random", "n_random")
SettingKey = tuple[str, str, int, Optional[int]]  # (scope, strategy, k, seed)


@dataclass(frozen=True)
class SettingTest:
    """The uncertainty of one setting of a sweep."""

    accuracy_ci: Interval
    exact_match_ci: Interval
    p_mcnemar: float
    p_mcnemar_bh: float  # NaN for random settings
    p_vs_random: float  # NaN for random settings and without random head sets
    n_random: int  # random head sets of the same k that p_vs_random compares with

    def row(self) -> dict[str, float]:
        """The columns :data:`TEST_FIELDS` of a results table."""
        return {"accuracy_ci_low": self.accuracy_ci.low, "accuracy_ci_high": self.accuracy_ci.high,
                "exact_match_ci_low": self.exact_match_ci.low, "exact_match_ci_high": self.exact_match_ci.high,
                "p_mcnemar": self.p_mcnemar, "p_mcnemar_bh": self.p_mcnemar_bh, "p_vs_random": self.p_vs_random,
                "n_random": self.n_random}


def setting_tests(sweeps: Sequence[SweepResult]) -> dict[SettingKey, SettingTest]:
    """Every setting of ``sweeps`` (one evaluation), keyed by (scope, strategy, k, seed)."""
    raw: dict[SettingKey, dict[str, Any]] = {}
    for sweep in sweeps:
        randoms: dict[int, list[float]] = {}
        for r in sweep.settings:
            if r.head_set.strategy == RANDOM:
                randoms.setdefault(r.head_set.k, []).append(r.metrics.accuracy)
        for r in sweep.settings:
            h, m = r.head_set, r.metrics
            null = randoms.get(h.k, []) if h.strategy != RANDOM else []
            raw[(sweep.scope, h.strategy, h.k, h.seed)] = dict(
                accuracy_ci=wilson_interval(int(round(m.accuracy * m.n)), m.n) if m.n else NAN_INTERVAL,
                exact_match_ci=wilson_interval(int(round(m.exact_match * m.n)), m.n) if m.n else NAN_INTERVAL,
                p_mcnemar=mcnemar_exact(m.i2c, m.c2i), n_random=len(null),
                p_vs_random=rank_p_value(m.accuracy, null) if null else float("nan"))
    ranked = [key for key in raw if key[1] != RANDOM]
    adjusted = dict(zip(ranked, benjamini_hochberg([raw[key]["p_mcnemar"] for key in ranked])))
    return {key: SettingTest(**values, p_mcnemar_bh=float(adjusted.get(key, float("nan"))))
            for key, values in raw.items()}


def significance_metric_values(tests: dict[SettingKey, SettingTest], *,
                               prefix: str = "interventions") -> dict[str, float]:
    """MLflow metrics of the ranked settings, next to :func:`apmae.interventions.report.metric_values`' names:
    ``<root>/<strategy>/k<k>/accuracy/{ci_low,ci_high}``, ``.../p_mcnemar``, ``.../p_mcnemar_bh``,
    ``.../p_vs_random``; ``<root>`` is ``<prefix>`` or ``<prefix>/per_task/<task>``."""
    values = {}
    for (scope, strategy, k, _), t in tests.items():
        if strategy == RANDOM:
            continue
        root = f"{prefix if scope == 'all' else f'{prefix}/per_task/{scope}'}/{strategy}/k{k}"
        values.update({f"{root}/accuracy/ci_low": t.accuracy_ci.low, f"{root}/accuracy/ci_high": t.accuracy_ci.high,
                       f"{root}/p_mcnemar": t.p_mcnemar, f"{root}/p_mcnemar_bh": t.p_mcnemar_bh,
                       f"{root}/p_vs_random": t.p_vs_random})
    return {k: v for k, v in values.items() if np.isfinite(v)}


__all__ = ["SettingKey", "SettingTest", "TEST_FIELDS", "setting_tests", "significance_metric_values"]
