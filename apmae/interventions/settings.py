"""What an intervention sweep runs on and how: one settings object for the Interventions callback.

:class:`InterventionSettings` holds which scenarios are re-run, how the target is loaded and which
head sets are zeroed; each default is written here once and every field is checked at construction,
naming the ``settings.<field>`` to change. ``apmae.callbacks.interventions.Interventions(settings=...)``
takes it (a ``settings:`` block of the callback's ``init_args``, or an object or a dict in Python).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from apmae.common.settings import refuse_moved, settings_of
from apmae.interventions.head_sets import DEFAULT_FRACTIONS, STRATEGIES, sweep_ks
from apmae.mining.scenario_set import SPLITS
from apmae.mining.tasks import CONTROL_TASK


@dataclass(frozen=True)
class InterventionSettings:
    """The scenarios, the target and the head sets of an intervention sweep.

    Args:
        n_scenarios: scenarios evaluated (a seeded choice among the split's rows, fixed for the run).
        split: scenario split to take them from (``val``; ``test`` keeps them apart from a ranking made on val).
        tasks: only these tasks (default: every task of the cache).
        exclude_tasks: tasks left out (default ``noise``, random prompts the target cannot complete).
        seed: seed of the scenario choice.
        target: hub name or directory of the target model (default: the DataModule's ``target``).
        dtype: target dtype (``float32``, ``bfloat16``, ``float16``).
        device: target device; ``auto`` = the device of the module being trained.
        attn_implementation: attention kernel of the sweep's own target copy; no pattern is read, so
            ``sdpa`` (faster) gives the same function up to rounding; ``eager`` matches ``run_batch`` bit for bit.
        strategies: any of ``positive``, ``negative``, ``neutral``, ``random``.
        fractions: the k sweep as shares of all heads (rounded, at least 1, deduplicated).
        ks: explicit head counts instead of ``fractions``.
        random_seeds: seeds of the random head sets (mean and spread are reported, and the null a ranked
            setting is tested against: m seeds allow p-values down to 2 / (m + 1)).
        batch_size: scenarios per forward pass of the target.
    """

    n_scenarios: int = 128
    split: str = "val"
    tasks: Optional[list[str]] = None
    exclude_tasks: list[str] = field(default_factory=lambda: [CONTROL_TASK])
    seed: int = 0
    target: Optional[str] = None
    dtype: str = "float32"
    device: str = "auto"
    attn_implementation: str = "sdpa"
    strategies: list[str] = field(default_factory=lambda: list(STRATEGIES))
    fractions: list[float] = field(default_factory=lambda: list(DEFAULT_FRACTIONS))
    ks: Optional[list[int]] = None
    random_seeds: list[int] = field(default_factory=lambda: list(range(5)))
    batch_size: int = 16

    def __post_init__(self) -> None:
        """Raises ``ValueError`` naming the ``settings.<field>`` to change."""
        for name in ("exclude_tasks", "strategies", "fractions", "random_seeds"):
            object.__setattr__(self, name, list(getattr(self, name)))
        if self.n_scenarios < 1 or self.batch_size < 1:
            raise ValueError(f"settings.n_scenarios={self.n_scenarios} and settings.batch_size={self.batch_size} "
                             "must both be >= 1")
        if self.split not in SPLITS:
            raise ValueError(f"settings.split={self.split!r}; use one of {SPLITS}")
        unknown = [s for s in self.strategies if s not in STRATEGIES]
        if unknown or not self.strategies:
            raise ValueError(f"settings.strategies {unknown or 'empty'}: use some of {STRATEGIES}")
        if "random" in self.strategies and not self.random_seeds:
            raise ValueError("the random strategy needs at least one seed in settings.random_seeds")
        sweep_ks(1, fractions=self.fractions)  # validates the fractions
        if self.ks is not None and (not self.ks or min(self.ks) < 1):
            raise ValueError(f"settings.ks={self.ks} must be non-empty head counts >= 1")

    @classmethod
    def of(cls, value: "InterventionSettings | Mapping[str, Any] | None") -> "InterventionSettings":
        """``value`` as InterventionSettings: itself, one built from a mapping of its fields, or the defaults."""
        return settings_of(cls, value, "settings")


def moved_to_settings(owner: str, arguments: Mapping[str, Any]) -> None:
    """Refuse the sweep settings ``owner`` once took one by one, naming the ``settings=`` that takes them now."""
    refuse_moved(owner, arguments, InterventionSettings, "settings")


__all__ = ["InterventionSettings", "moved_to_settings"]
