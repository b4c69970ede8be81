"""Tables, metrics, the collapse curve and key numbers of an intervention sweep.

Glossary: N scenarios, k heads zeroed, n = L * H heads in all.

Random head sets are drawn with several seeds; wherever one number per
(strategy, k) is reported, random's is the mean over its seeds and its spread
the standard deviation over seeds (``<metric>_std``, the shaded band of the curve).
Given the :func:`apmae.interventions.significance.setting_tests` of the sweeps, the tables,
the curve (Wilson error bars) and the key numbers also carry each setting's intervals and tests.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from apmae.common.plotting import pyplot
from apmae.common.stats import Interval, wilson_interval
from apmae.interventions.significance import TEST_FIELDS, SettingKey, SettingTest
from apmae.interventions.sweep import InterventionMetrics, SweepResult

METRICS = ("accuracy", "delta_accuracy", "i2c", "c2i", "label_loss", "exact_match", "token_accuracy")
RESULT_FIELDS = ("scope", "strategy", "k", "seed", *(f.name for f in fields(InterventionMetrics)), *TEST_FIELDS,
                 "heads")
Tests = dict[SettingKey, SettingTest]
TASK_FIELDS = ("scope", "task", "strategy", "k", "seed", *(f.name for f in fields(InterventionMetrics)))
SCENARIO_FIELDS = ("scenario_index", "task", "source_id", "label_len", "label_ids", "cached_correct",
                   "baseline_prediction", "baseline_correct", "baseline_loss", "baseline_generated",
                   "baseline_token_hits", "baseline_exact")


@dataclass
class CurvePoint:
    """One (strategy, k) of a sweep: metric means over seeds (one seed for ranked strategies) and their spread."""

    strategy: str
    k: int
    n_seeds: int
    mean: dict[str, float]
    std: dict[str, float]  # 0 for ranked strategies


def curve(sweep: SweepResult) -> list[CurvePoint]:
    """Every (strategy, k) of ``sweep``, in the sweep's order."""
    groups: dict[tuple[str, int], list[InterventionMetrics]] = {}
    for result in sweep.settings:
        groups.setdefault((result.head_set.strategy, result.head_set.k), []).append(result.metrics)
    points = []
    for (strategy, k), group in groups.items():
        values = {m: np.array([getattr(g, m) for g in group], dtype=np.float64) for m in METRICS}
        points.append(CurvePoint(strategy=strategy, k=k, n_seeds=len(group),
                                 mean={m: float(v.mean()) for m, v in values.items()},
                                 std={m: float(v.std()) for m, v in values.items()}))
    return points


def metric_values(sweep: SweepResult, *, prefix: str = "interventions") -> dict[str, float]:
    """MLflow metrics ``<prefix>/<strategy>/k<k>/<metric>`` (random: mean, plus ``<metric>_std``).

    A sweep with a per-task ranking is named ``<prefix>/per_task/<task>/<strategy>/k<k>/<metric>``.
    The baseline is ``<prefix>/baseline/{accuracy,label_loss,exact_match,token_accuracy}``.
    """
    root = prefix if sweep.scope == "all" else f"{prefix}/per_task/{sweep.scope}"
    base = sweep.baseline_metrics()
    values = {f"{root}/baseline/{m}": getattr(base, m) for m in ("accuracy", "label_loss", "exact_match",
                                                                 "token_accuracy")}
    for point in curve(sweep):
        for m in METRICS:
            values[f"{root}/{point.strategy}/k{point.k}/{m}"] = point.mean[m]
            if point.strategy == "random":
                values[f"{root}/{point.strategy}/k{point.k}/{m}_std"] = point.std[m]
    return values


def result_rows(sweeps: Sequence[SweepResult], tests: Tests | None = None) -> list[dict[str, Any]]:
    """One row per (scope, strategy, k, seed): metrics, ``tests``' columns (empty without) and the zeroed heads
    as ``L.H;L.H;...``."""
    rows = []
    for sweep in sweeps:
        for r in sweep.settings:
            h = r.head_set
            test = (tests or {}).get((sweep.scope, h.strategy, h.k, h.seed))
            columns = test.row() if test is not None else dict.fromkeys(TEST_FIELDS)
            rows.append({"scope": sweep.scope, "strategy": h.strategy, "k": h.k, "seed": h.seed,
                         **asdict(r.metrics), **columns, "heads": h.label()})
    return rows


def task_rows(sweeps: Sequence[SweepResult]) -> list[dict[str, Any]]:
    """One row per (scope, task, strategy, k, seed): the metrics on that task's scenarios only."""
    rows = []
    for sweep in sweeps:
        for r in sweep.settings:
            h = r.head_set
            for task, metrics in sweep.by_task(r).items():
                rows.append({"scope": sweep.scope, "task": task, "strategy": h.strategy, "k": h.k, "seed": h.seed,
                             **asdict(metrics)})
    return rows


def scenario_rows(sweep: SweepResult, *, cached_correct: np.ndarray | None = None) -> list[dict[str, Any]]:
    """One row per scenario: what it is and the unmodified target's outcome (tokens as space-separated ids)."""
    s, b = sweep.scenarios, sweep.baseline
    rows = []
    for i in range(len(s)):
        n = int(s.label_len[i])
        rows.append({
            "scenario_index": int(s.scenario_index[i]), "task": s.task_names[int(s.task[i])],
            "source_id": str(s.source_id[i]) if len(s.source_id) else "", "label_len": n,
            "label_ids": " ".join(map(str, s.label_ids[i, :n])),
            "cached_correct": None if cached_correct is None else bool(cached_correct[i]),
            "baseline_prediction": int(b.prediction[i]), "baseline_correct": bool(b.correct[i]),
            "baseline_loss": float(b.loss[i]), "baseline_generated": " ".join(map(str, b.generated[i, :n])),
            "baseline_token_hits": int(b.token_hits[i]), "baseline_exact": bool(b.exact[i]),
        })
    return rows


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path, columns: Sequence[str]) -> Path:
    """Write ``rows`` with the given column order (None as an empty cell)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row[k] is None else row[k]) for k in columns})
    return path


_STYLE = {"positive": ("tab:green", "o"), "negative": ("tab:red", "v"), "neutral": ("tab:blue", "s"),
          "random": ("tab:gray", "D")}


def curve_figure(sweep: SweepResult, *, title: str, tests: Tests | None = None) -> Any:
    """First-token accuracy and exact match vs k per strategy; random's band is mean +- std over seeds.

    With ``tests``, every ranked point carries its Wilson 95 % interval as an error bar.
    """
    plt = pyplot()

    points = curve(sweep)
    base = sweep.baseline_metrics()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric, name in [(axes[0], "accuracy", "first-token accuracy"), (axes[1], "exact_match", "exact match")]:
        ax.axhline(getattr(base, metric), color="black", linestyle="--", linewidth=1, label="no intervention")
        for strategy in dict.fromkeys(p.strategy for p in points):
            mine = [p for p in points if p.strategy == strategy]
            ks = np.array([p.k for p in mine])
            mean = np.array([p.mean[metric] for p in mine])
            color, marker = _STYLE.get(strategy, ("tab:purple", "x"))
            ax.plot(ks, mean, marker=marker, color=color, label=strategy)
            if tests and strategy != "random":
                low, high = _interval_arrays(tests, sweep.scope, strategy, ks, metric)
                ax.errorbar(ks, mean, yerr=[mean - low, high - mean], fmt="none", ecolor=color, alpha=0.6, capsize=3)
            if strategy == "random":
                std = np.array([p.std[metric] for p in mine])
                ax.fill_between(ks, mean - std, mean + std, color=color, alpha=0.25, linewidth=0)
        ax.set_xscale("log")
        ticks = sorted({p.k for p in points})
        ax.set_xticks(ticks, [str(k) for k in ticks])
        ax.minorticks_off()
        ax.set_xlabel(f"heads zeroed k (of {sweep.n_heads_total})")
        ax.set_ylabel(name)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _interval_arrays(tests: Tests, scope: str, strategy: str, ks: np.ndarray, metric: str) -> tuple[np.ndarray, ...]:
    found = [getattr(tests[(scope, strategy, int(k), None)], f"{metric}_ci") for k in ks]
    return np.array([i.low for i in found]), np.array([i.high for i in found])


@dataclass
class StrategyPeak:
    """The k at which one strategy moves first-token accuracy most upward, and random at the same k."""

    strategy: str
    k: int
    accuracy: float
    delta_accuracy: float
    random_accuracy: float | None  # mean over seeds, None when random did not run
    random_std: float | None
    test: SettingTest | None = None  # its interval and tests, when computed

    def line(self) -> str:
        rand = ("" if self.random_accuracy is None
                else f" | random k={self.k}: {self.random_accuracy:.3f} +- {self.random_std:.3f}")
        out = f"  {self.strategy:8s} best k={self.k}: accuracy {self.accuracy:.3f} ({self.delta_accuracy:+.3f}){rand}"
        if self.test is not None:
            t = self.test
            out += f" | 95 % {t.accuracy_ci}, McNemar p {t.p_mcnemar:.3f} (BH {t.p_mcnemar_bh:.3f})"
            if t.n_random:
                out += f", vs {t.n_random} random sets p {t.p_vs_random:.2f}"
        return out


@dataclass
class KeyNumbers:
    """The numbers a run prints about its collapse curve."""

    scope: str
    n_scenarios: int
    baseline_accuracy: float
    baseline_exact_match: float
    peaks: list[StrategyPeak]
    all_heads_accuracy: float | None  # k = every head (None when the sweep stops earlier)
    all_heads_exact_match: float | None
    random_mean_delta: float | None  # random's delta, averaged over every k below all heads
    n_heads_total: int
    baseline_accuracy_ci: Interval | None = None  # Wilson 95 % over the n scenarios
    # strategy -> smallest k whose accuracy is at most half the baseline's (None: never below, up to the sweep's end)
    collapse: dict[str, int | None] = field(default_factory=dict)

    def lines(self) -> list[str]:
        ci = "" if self.baseline_accuracy_ci is None else f" {self.baseline_accuracy_ci}"
        out = [f"interventions [{self.scope}] on {self.n_scenarios} scenarios: no intervention accuracy "
               f"{self.baseline_accuracy:.3f}{ci}, exact match {self.baseline_exact_match:.3f}"]
        out += [p.line() for p in self.peaks]
        if self.all_heads_accuracy is not None:
            out.append(f"  all {self.n_heads_total} heads zeroed: accuracy {self.all_heads_accuracy:.3f}, "
                       f"exact match {self.all_heads_exact_match:.3f}")
        if self.random_mean_delta is not None:
            out.append(f"  random heads, mean accuracy change over k < {self.n_heads_total}: "
                       f"{self.random_mean_delta:+.3f}")
        if self.collapse:
            out.append("  collapse (accuracy at most half of no intervention's) from: " + ", ".join(
                f"{s} k={k}" if k is not None else f"{s} never" for s, k in self.collapse.items()))
        return out


def key_numbers(sweep: SweepResult, tests: Tests | None = None) -> KeyNumbers:
    """Best k of each ranked strategy (largest accuracy gain, smallest k on ties), k = all, random's mean.

    With ``tests``, each best k carries its interval and tests (the adjusted p-value reads the whole family).
    """
    points = curve(sweep)
    random = {p.k: p for p in points if p.strategy == "random"}
    peaks = []
    for strategy in dict.fromkeys(p.strategy for p in points if p.strategy != "random"):
        mine = sorted((p for p in points if p.strategy == strategy), key=lambda p: p.k)
        best = max(mine, key=lambda p: p.mean["delta_accuracy"])
        r = random.get(best.k)
        peaks.append(StrategyPeak(strategy=strategy, k=best.k, accuracy=best.mean["accuracy"],
                                  delta_accuracy=best.mean["delta_accuracy"],
                                  random_accuracy=None if r is None else r.mean["accuracy"],
                                  random_std=None if r is None else r.std["accuracy"],
                                  test=(tests or {}).get((sweep.scope, strategy, best.k, None))))
    full = next((p for p in points if p.k == sweep.n_heads_total), None)
    partial = [p.mean["delta_accuracy"] for p in random.values() if p.k < sweep.n_heads_total]
    base = sweep.baseline_metrics()
    collapse = {}
    for strategy in dict.fromkeys(p.strategy for p in points):
        below = [p.k for p in points if p.strategy == strategy and p.mean["accuracy"] <= base.accuracy / 2]
        collapse[strategy] = min(below) if below else None
    return KeyNumbers(scope=sweep.scope, n_scenarios=len(sweep.scenarios), baseline_accuracy=base.accuracy,
                      collapse=collapse if base.accuracy > 0 else {},
                      baseline_exact_match=base.exact_match, peaks=peaks,
                      all_heads_accuracy=None if full is None else full.mean["accuracy"],
                      all_heads_exact_match=None if full is None else full.mean["exact_match"],
                      random_mean_delta=float(np.mean(partial)) if partial else None,
                      n_heads_total=sweep.n_heads_total,
                      baseline_accuracy_ci=wilson_interval(int(round(base.accuracy * base.n)), base.n)
                      if tests is not None else None)
