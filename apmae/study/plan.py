"""The study's sizes, and how many scenarios each task gets.

Glossary: T tasks (the noise control apart), p_t the target's pilot correct rate on task t,
m_t = min(p_t, 1 - p_t) the pilot share of the task's rarer class.

A task can only be scored alone (per-task AUROC) when both its classes reach
``ProtocolSettings.min_per_class`` scenarios, and a pooled probe learns little from a task whose
scenarios all fall in one class. So the study mines a small pilot first, measures p_t with one
forward pass per pilot scenario, and shares the budget out by :func:`allocate_counts`:

- a task whose pilot rarer class is below ``min_share`` (5 % by default: the target nearly always,
  or never, completes it) gets ``floor`` scenarios: it stays in the pooled probe, and the report
  says it could not be scored alone;
- every other task gets enough scenarios that its expected rarer class reaches one common count
  c (``n_t = c / m_t``), capped at ``cap``; c is the largest count the budget allows. Tasks inside
  20-80 % need the fewest scenarios for it, tasks near the edges the most.

The pilot is mined with another seed than the study (``seed + PILOT_SEED_OFFSET``): it only sets
the counts, and none of its scenarios is scored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np

from apmae.mining.tasks import CONTROL_TASK

PILOT_SEED_OFFSET = 1000
BAND = (0.2, 0.8)  # the correct rates the issue of sizing calls informative; reported per task


@dataclass(frozen=True)
class StudySettings:
    """What the study runs; each default is the one ``make study`` uses.

    Args:
        target: the model studied (a hub name or folder; the demo's SmolLM2 by default).
        cross_target: a second model AP-MAE is validated on without training on it (claim ii).
        n_scenarios: scenarios mined in all, the noise control included.
        noise: scenarios of the noise control (random token prompts).
        pilot_per_task: pilot scenarios per task that measure the correct rates.
        floor: scenarios of a task whose pilot rarer class is below ``min_share``.
        min_share: the pilot rarer-class share below which a task gets only ``floor``.
        cap: at most this many scenarios for one task.
        seq_len, max_label_tokens, max_per_file: the mining's (the demo's values).
        splits: train/val/test fractions per source file; AP-MAE trains on train and is validated on
            val; the interventions run on test scenarios, whose labels no head ranking saw.
        exhaustive: read the whole corpus (a uniform sample of its files) instead of its first files.
        head_sample: the heads per layer AP-MAE trains on, and all that its training cache stores.
        apmae_steps: AP-MAE's training steps.
        interventions: test scenarios the interventions run on (noise excluded).
        intervention_fractions: the k sweep, as shares of all heads.
        random_sets: random head sets per k (the null a ranked set is ranked against).
        intervention_tokens: tokens of each hole an intervention generates and scores (1: the first token,
            the probe's label, one forward pass a scenario and setting; None: the whole hole, greedily).
        pattern_scenarios: scenarios the recurring-pattern families are clustered on (a seeded draw).
        reduction: the clustering's reduction (``umap``, the paper's; or ``pca``).
        keep_training_cache: keep AP-MAE's sampled-head cache once AP-MAE is exported (it is only
            read by the fit; the default removes it, to keep the study's disk small).
        seed: every random choice of the study.
    """

    target: str = "artifacts/demo/smollm2"
    cross_target: str = "artifacts/demo/target-a"
    n_scenarios: int = 3000
    noise: int = 100
    pilot_per_task: int = 30
    floor: int = 80
    min_share: float = 0.05
    cap: int = 600
    seq_len: int = 128
    max_label_tokens: int = 16
    max_per_file: int = 1
    splits: tuple[float, float, float] = (0.6, 0.15, 0.25)
    exhaustive: bool = False
    head_sample: str = "layerwise:0.12"
    apmae_steps: int = 5000
    interventions: int = 600
    intervention_fractions: tuple[float, ...] = (0.01, 0.05)
    random_sets: int = 5
    intervention_tokens: Optional[int] = 1
    pattern_scenarios: int = 600
    reduction: str = "umap"
    keep_training_cache: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.noise < 0 or self.n_scenarios <= self.noise:
            raise ValueError(f"n_scenarios={self.n_scenarios} must exceed noise={self.noise} (>= 0)")
        if self.pilot_per_task < 2 or self.floor < 1 or self.cap < self.floor:
            raise ValueError(f"pilot_per_task={self.pilot_per_task} (>= 2), floor={self.floor} (>= 1) and "
                             f"cap={self.cap} (>= floor) are out of range")
        if not 0 <= self.min_share < 0.5:
            raise ValueError(f"min_share={self.min_share}: use a share in [0, 0.5)")
        if self.interventions < 1 or self.random_sets < 1 or self.pattern_scenarios < 2 or \
                (self.intervention_tokens is not None and self.intervention_tokens < 1):
            raise ValueError("interventions, random_sets, pattern_scenarios and intervention_tokens must be positive")


@dataclass(frozen=True)
class Allocation:
    """Scenarios per task, and why."""

    counts: dict[str, int]  # task -> scenarios to mine (the noise control included)
    pilot_rate: dict[str, float]  # task -> pilot correct rate (noise excluded)
    pilot_n: dict[str, int]  # task -> pilot scenarios measured
    minority_target: float  # c: the expected rarer-class count each allocated task reaches
    floored: list[str]  # tasks given the floor: their pilot rarer class was below min_share
    capped: list[str]  # tasks held at the cap

    def rule(self, settings: StudySettings) -> str:
        return (f"per-task counts from a pilot of {settings.pilot_per_task} scenarios a task: a task whose rarer "
                f"class is below {100 * settings.min_share:.0f} % of the pilot gets {settings.floor}; every other "
                f"task gets c / min(p, 1 - p) scenarios (at most {settings.cap}), c = {self.minority_target:.1f} "
                f"the largest the budget allows; the noise control gets {settings.noise}")

    def band(self, task: str) -> str:
        """Where the task's pilot rate lies: ``inside 20-80 %`` or ``outside``."""
        return band_of(self.pilot_rate[task])


def band_of(rate: float) -> str:
    """Where a correct rate lies: ``inside 20-80 %`` (:data:`BAND`) or ``outside``."""
    return "inside 20-80 %" if BAND[0] <= rate <= BAND[1] else "outside"


def allocate_counts(pilot_rate: Mapping[str, float], pilot_n: Mapping[str, int], settings: StudySettings,
                    *, control: str = CONTROL_TASK) -> Allocation:
    """Share ``settings.n_scenarios`` out over the tasks of ``pilot_rate`` by the module docstring's rule.

    Raises:
        ValueError: the floors alone exceed the budget (lower ``floor`` or raise ``n_scenarios``).
    """
    tasks = [t for t in pilot_rate if t != control]
    budget = settings.n_scenarios - settings.noise
    minority = {t: min(pilot_rate[t], 1 - pilot_rate[t]) for t in tasks}
    floored = [t for t in tasks if minority[t] < settings.min_share]
    allocated = [t for t in tasks if t not in floored]
    left = budget - settings.floor * len(floored)
    if left < settings.floor * len(allocated):
        raise ValueError(f"n_scenarios={settings.n_scenarios} leaves {left} scenarios for {len(allocated)} tasks "
                         f"after the noise control and the floors: raise n_scenarios or lower floor")

    def counts_at(c: float) -> dict[str, int]:
        return {t: int(min(settings.cap, max(settings.floor, math.floor(c / minority[t])))) for t in allocated}

    low, high = 0.0, float(settings.cap)  # c = cap * 0.5 already gives every task the cap
    for _ in range(60):  # bisection on c: the counts grow with c
        mid = (low + high) / 2
        if sum(counts_at(mid).values()) <= left:
            low = mid
        else:
            high = mid
    counts = counts_at(low)
    counts.update({t: settings.floor for t in floored})
    if control in pilot_rate or settings.noise:
        counts[control] = settings.noise
    ordered = {t: counts[t] for t in [*pilot_rate, *([control] if control not in pilot_rate else [])] if t in counts}
    return Allocation(counts=ordered, pilot_rate={t: float(pilot_rate[t]) for t in tasks},
                      pilot_n={t: int(pilot_n[t]) for t in tasks}, minority_target=low, floored=floored,
                      capped=[t for t in allocated if counts[t] >= settings.cap])


def pilot_rates(task: np.ndarray, correct: np.ndarray, task_names: list[str],
                *, control: Optional[str] = CONTROL_TASK) -> tuple[dict[str, float], dict[str, int]]:
    """Per task (the control apart) the share of ``correct`` pilot scenarios and their number."""
    rates, counts = {}, {}
    for i, name in enumerate(task_names):
        if name == control:
            continue
        rows = task == i
        counts[name] = int(rows.sum())
        rates[name] = float(correct[rows].mean()) if rows.any() else 0.0
    return rates, counts
