"""Stage 7, interventions: zero ranked heads and measure what the target then gets right.

- :mod:`apmae.interventions.head_sets`: signed importance, selection strategies, the k sweep;
- :mod:`apmae.interventions.sweep`: re-run and greedily generate with heads zeroed;
- :mod:`apmae.interventions.report`: tables, metrics, the collapse curve, key numbers;
- :mod:`apmae.interventions.significance`: Wilson intervals, exact McNemar tests, the random-head null, BH.
"""

from apmae.interventions.head_sets import HeadSet
from apmae.interventions.sweep import run_sweep

__all__ = ["HeadSet", "run_sweep"]
