"""Cost of the intervals and tests a run reports, on inputs of the demo's size; prints JSON.

    python benchmarks/bench_uncertainty.py [--resamples 1000 10000] [--repeat 3]

- probe: the stratified, paired bootstrap of five predictors (balanced accuracy and AUROC, three
  paired comparisons) over 140 class-balanced test scenarios of 13 tasks, per task and pooled;
- reconstruction: the ratio intervals (AP-MAE/trivial, AP-MAE/neighbours) over 280 validation scenarios;
- interventions: Wilson intervals, exact McNemar tests, BH and the random-head rank p-values of a
  sweep of 7 ks x (3 ranked strategies + 5 random seeds) on 128 scenarios.

The inputs are synthetic (seeded): only the seconds mean anything. Each figure is the best of
``--repeat`` runs; ``repeat_identical`` checks that a seeded bootstrap gives the same intervals twice.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apmae.common.stats import ratio_intervals  # noqa: E402
from apmae.interventions.head_sets import HeadSet  # noqa: E402
from apmae.interventions.significance import setting_tests  # noqa: E402
from apmae.interventions.sweep import InterventionScenarios, Outcome, SettingResult, SweepResult, score  # noqa: E402
from apmae.probe.uncertainty import BootstrapSettings, score_uncertainty, uncertainty_metric_dict  # noqa: E402

PREDICTORS = ("probe", "stats_probe", "confidence", "probe_confidence", "majority")


def probe_inputs(n: int = 140, n_tasks: int = 13, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.tile([True, False], n // 2)
    task = np.repeat(np.arange(n_tasks), int(np.ceil(n / n_tasks)))[:n]
    probs = {k: np.clip(0.5 + 0.15 * (y - 0.5) * i + 0.3 * rng.standard_normal(n), 0, 1)
             for i, k in enumerate(PREDICTORS)}
    probs["majority"] = np.full(n, 0.5)
    return probs, y, task, [f"task{i}" for i in range(n_tasks)]


def sweep_inputs(n: int = 128, seed: int = 0) -> SweepResult:
    rng = np.random.default_rng(seed)
    base = rng.random(n) < 0.5

    def outcome(correct: np.ndarray) -> Outcome:
        return Outcome(prediction=np.zeros(n, np.int64), correct=correct, loss=np.ones(n, np.float32),
                       generated=np.zeros((n, 1), np.int64), token_hits=correct.astype(int), exact=correct)

    scenarios = InterventionScenarios(input_ids=np.zeros((n, 2), np.int64), label_ids=np.ones((n, 1), np.int64),
                                      label_len=np.ones(n, int), task=np.zeros(n, int), task_names=["t"],
                                      scenario_index=np.arange(n))
    settings = []
    for k in (1, 2, 3, 6, 13, 32, 64):
        for strategy, seed_ in [("positive", None), ("negative", None), ("neutral", None),
                                *[("random", s) for s in range(5)]]:
            flip = rng.random(n) < 0.05 * np.log2(k + 1)
            out = outcome(np.where(flip, ~base, base))
            settings.append(SettingResult(HeadSet(strategy, k, seed_, ((0, 0),)), out,
                                          score(out, outcome(base), scenarios.label_len)))
    return SweepResult(scenarios=scenarios, baseline=outcome(base), settings=settings, n_heads_total=64)


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resamples", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    probs, y, task, names = probe_inputs()
    rng = np.random.default_rng(1)
    errors = rng.gamma(2.0, 1.0, size=(3, 280)) * np.array([[0.8], [1.0], [0.9]])
    sweep = sweep_inputs()
    out = {"machine": platform.processor() or platform.machine(), "probe_scenarios": len(y), "tasks": len(names),
           "reconstruction_scenarios": errors.shape[1], "intervention_settings": len(sweep.settings),
           "interventions_seconds": best_of(args.repeat, lambda: setting_tests([sweep]))}
    for b in args.resamples:
        settings = BootstrapSettings(n_resamples=b, seed=0)
        out[f"probe_seconds_{b}"] = best_of(args.repeat, lambda: score_uncertainty(
            probs, y, task, names, thresholds={"confidence": 0.5}, settings=settings))
        out[f"reconstruction_seconds_{b}"] = best_of(args.repeat, lambda: ratio_intervals(
            errors[0], errors[1:], n_resamples=b))
    once, twice = (score_uncertainty(probs, y, task, names, settings=BootstrapSettings(seed=3)) for _ in range(2))
    out["repeat_identical"] = all(uncertainty_metric_dict(k, once[k]) == uncertainty_metric_dict(k, twice[k])
                                  for k in PREDICTORS)
    out["probe_all_interval_1000"] = str(once["probe"]["all"].intervals["balanced_accuracy"])
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
