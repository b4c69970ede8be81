"""The study's interventions: heads zeroed by a held-out ranking on test scenarios, against random sets.

The ranking is the cross-fitted row probe's head importance fitted on the train and val scenarios
only (:meth:`apmae.study.run.Study.run_protocol`); the scenarios are a seeded draw of test ones
(noise control excluded), so no label of theirs chose a head. Every ranked set (positive,
negative, neutral) at each k is tested with an exact McNemar test against no intervention, and
against the random sets of the same k twice: by its rank among them (at least 2 / (m + 1) with m
sets) and by a t prediction interval of the random sets' accuracies (m - 1 degrees of freedom),
which can reject with m = 5. Tasks with at least ``MIN_TASK`` chosen scenarios get the same
tests on their own scenarios (Benjamini-Hochberg over that family).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from apmae.cache.extract import target_short_name
from apmae.common.plotting import pyplot
from apmae.common.stats import prediction_p_value
from apmae.interventions.head_sets import read_importance_csv, sweep_head_sets, sweep_ks
from apmae.interventions.report import (RESULT_FIELDS, SCENARIO_FIELDS, TASK_FIELDS, curve_figure, key_numbers,
                                        result_rows, scenario_rows, task_rows, write_csv)
from apmae.interventions.significance import RANDOM, setting_tests
from apmae.interventions.sweep import InterventionScenarios, SettingResult, SweepResult, run_sweep, score
from apmae.mining.scenario_set import SPLITS
from apmae.mining.tasks import CONTROL_TASK

STRATEGIES = ("positive", "negative", "neutral", "random")
MIN_TASK = 40  # chosen scenarios a task needs for its own tests
BATCH_SIZE = 8


def choose_test_scenarios(scenarios: Any, n: int, seed: int) -> np.ndarray:
    """A seeded draw of at most ``n`` test-split rows of ``scenarios``, noise control excluded, in row order."""
    names = list(scenarios.task_names)
    control = names.index(CONTROL_TASK) if CONTROL_TASK in names else -1
    rows = np.flatnonzero((scenarios.split == SPLITS.index("test")) & (scenarios.task != control))
    if not len(rows):
        raise ValueError("the study's scenarios have no test split to intervene on: raise the test fraction of "
                         "splits or mine more scenarios")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(rows, size=min(n, len(rows)), replace=False))


def task_sweep(sweep: SweepResult, task: str) -> SweepResult:
    """``sweep`` restricted to one task's scenarios (scope ``on:<task>``; the ranking stays the global one)."""
    s = sweep.scenarios
    rows = np.flatnonzero(s.task == s.task_names.index(task))
    base = sweep.baseline.subset(rows)
    settings = [SettingResult(head_set=r.head_set, outcome=r.outcome.subset(rows),
                              metrics=score(r.outcome.subset(rows), base, s.label_len[rows])) for r in sweep.settings]
    return SweepResult(scenarios=s.subset(rows), baseline=base, settings=settings, n_heads_total=sweep.n_heads_total,
                       scope=f"on:{task}")


def setting_numbers(sweep: SweepResult, tests: dict) -> list[dict[str, Any]]:
    """One dict per ranked setting: its accuracy change, flips, tests and the random sets of its k."""
    randoms: dict[int, list[float]] = {}
    for r in sweep.settings:
        if r.head_set.strategy == RANDOM:
            randoms.setdefault(r.head_set.k, []).append(r.metrics.accuracy)
    out = []
    for r in sweep.settings:
        h, m = r.head_set, r.metrics
        if h.strategy == RANDOM:
            continue
        test = tests[(sweep.scope, h.strategy, h.k, h.seed)]
        null = randoms.get(h.k, [])
        out.append({"scope": sweep.scope, "strategy": h.strategy, "k": h.k, "n": m.n, "accuracy": m.accuracy,
                    "baseline_accuracy": m.baseline_accuracy, "delta": m.delta_accuracy, "i2c": m.i2c, "c2i": m.c2i,
                    "exact_match": m.exact_match, "ci": [test.accuracy_ci.low, test.accuracy_ci.high],
                    "p_mcnemar": test.p_mcnemar, "p_bh": test.p_mcnemar_bh, "p_rank": test.p_vs_random,
                    "random_mean": float(np.mean(null)) if null else None,
                    "random_sd": float(np.std(null, ddof=1)) if len(null) > 1 else None, "n_random": len(null),
                    "p_vs_random": prediction_p_value(m.accuracy, null)})
    return out


def run_study_interventions(study: Any) -> dict[str, Any]:
    """Sweep the study's held-out ranking on its test scenarios; files under ``<study>/interventions``."""
    s = study.settings
    scenarios = study.scenarios()
    target = study.target()
    rows = choose_test_scenarios(scenarios, s.interventions, s.seed)
    chosen = InterventionScenarios.from_scenario_set(scenarios, rows)
    if s.intervention_tokens is not None:
        chosen = chosen.first_tokens(s.intervention_tokens)
    importance = read_importance_csv(study.results["protocol"]["ranking_csv"], n_layers=target.n_layers,
                                     n_heads=target.n_heads)
    ks = sweep_ks(target.n_layers * target.n_heads, fractions=s.intervention_fractions)
    sets = sweep_head_sets(importance, ks, n_layers=target.n_layers, n_heads=target.n_heads, strategies=STRATEGIES,
                           seeds=list(range(s.random_sets)))
    implementation = target.model.config._attn_implementation
    target.model.set_attn_implementation("sdpa")  # no pattern is read: the fused kernel computes the same function
    try:
        sweep = run_sweep(target, chosen, sets, batch_size=BATCH_SIZE, progress=True)
    finally:
        target.model.set_attn_implementation(implementation)
    tests = setting_tests([sweep])
    tasks = [t for t in chosen.task_names if (chosen.task == chosen.task_names.index(t)).sum() >= MIN_TASK]
    per_task = [task_sweep(sweep, t) for t in tasks]
    task_tests = setting_tests(per_task) if per_task else {}
    folder = Path(study.folder) / "interventions"
    folder.mkdir(parents=True, exist_ok=True)
    write_csv(result_rows([sweep, *per_task], {**tests, **task_tests}), folder / "results.csv", RESULT_FIELDS)
    write_csv(task_rows([sweep]), folder / "by_task.csv", TASK_FIELDS)
    write_csv(scenario_rows(sweep), folder / "scenarios.csv", SCENARIO_FIELDS)
    plt = pyplot()
    fig = curve_figure(sweep, title=f"{target_short_name(s.target)}: heads zeroed by the held-out ranking, "
                                    f"{len(chosen)} test scenarios", tests=tests)
    fig.savefig(folder / "curve.png", dpi=110)
    plt.close(fig)
    numbers = setting_numbers(sweep, tests)
    task_numbers = [n for t in per_task for n in setting_numbers(t, task_tests)]
    return {"n": len(chosen), "ks": ks, "random_sets": s.random_sets, "baseline_accuracy":
            float(sweep.baseline.correct.mean()), "settings": numbers, "per_task": task_numbers,
            "tasks_tested": tasks, "tasks_too_small": sorted(set(chosen.task_names) - set(tasks) - {CONTROL_TASK}),
            "tokens": s.intervention_tokens, "lines": key_numbers(sweep, tests).lines(), "folder": str(folder)}
