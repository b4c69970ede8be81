"""Per-task counts from the pilot: floors for tasks the target (nearly) always or never completes, equal
expected rarer classes for the rest, the cap, the budget."""

from __future__ import annotations

import numpy as np
import pytest

from apmae.study.plan import StudySettings, allocate_counts, pilot_rates


def test_counts_equalise_the_expected_rarer_class_within_the_budget():
    rates = {"easy": 0.5, "hard": 0.1, "never": 0.0, "always": 1.0, "rare": 0.25}
    n = dict.fromkeys(rates, 30)
    settings = StudySettings(n_scenarios=1000, noise=100, floor=40, cap=600, min_share=0.05)
    a = allocate_counts(rates, n, settings)
    assert a.counts["noise"] == 100
    assert a.counts["never"] == a.counts["always"] == 40 and sorted(a.floored) == ["always", "never"]
    assert sum(a.counts.values()) <= 1000
    assert sum(a.counts.values()) >= 1000 - 3  # integer rounding of c / m per task leaves at most one per task
    expected = {t: a.counts[t] * min(rates[t], 1 - rates[t]) for t in ("easy", "hard", "rare")}
    assert max(expected.values()) - min(expected.values()) <= 1.0  # the same rarer-class count, up to rounding
    assert a.counts["hard"] > a.counts["rare"] > a.counts["easy"]
    assert a.band("easy") == "inside 20-80 %" and a.band("hard") == "outside"
    assert "c / min(p, 1 - p)" in a.rule(settings)


def test_the_cap_holds_a_task_whose_rarer_class_is_scarce():
    rates = {"edge": 0.06, "mid": 0.5}
    a = allocate_counts(rates, dict.fromkeys(rates, 30), StudySettings(n_scenarios=700, noise=100, floor=40, cap=400))
    assert a.counts["edge"] == 400 and a.capped == ["edge"]
    assert a.counts["mid"] == 200  # the rest of the budget


def test_a_budget_beyond_every_cap_is_left_unspent():
    rates = {"edge": 0.06, "mid": 0.5}
    a = allocate_counts(rates, dict.fromkeys(rates, 30), StudySettings(n_scenarios=1100, noise=100, floor=40, cap=300))
    assert a.counts == {"edge": 300, "mid": 300, "noise": 100} and a.capped == ["edge", "mid"]


def test_floors_beyond_the_budget_are_refused_with_what_to_change():
    rates = dict.fromkeys([f"t{i}" for i in range(10)], 0.5)
    with pytest.raises(ValueError, match="raise n_scenarios or lower floor"):
        allocate_counts(rates, dict.fromkeys(rates, 30), StudySettings(n_scenarios=400, noise=100, floor=40, cap=40))


def test_pilot_rates_leave_the_control_out():
    task = np.array([0, 0, 1, 1, 1, 2])
    correct = np.array([True, False, True, True, False, False])
    rates, n = pilot_rates(task, correct, ["a", "b", "noise"])
    assert rates == {"a": 0.5, "b": pytest.approx(2 / 3)} and n == {"a": 2, "b": 3}


@pytest.mark.parametrize("bad", [{"n_scenarios": 10, "noise": 10}, {"floor": 0}, {"cap": 5, "floor": 10},
                                 {"min_share": 0.5}, {"interventions": 0}])
def test_settings_out_of_range_are_refused(bad):
    with pytest.raises(ValueError):
        StudySettings(**bad)
