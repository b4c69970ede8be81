"""What decides a mined scenario set: one settings object, passed whole from the config to the miner.

:class:`MiningConfig` holds every setting of :func:`apmae.mining.miner.mine_scenarios` that changes
which scenarios are mined; each default is written here once. ``JavaScenarioDataModule(mining=...)``
takes it (a YAML ``mining:`` block, or a dict in Python), passes it to the miner unchanged and keys
its scenario cache by it (:meth:`MiningConfig.key_inputs`). How the work is done (worker processes,
progress bars) is not part of it: it never changes the scenarios.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

from apmae.common.settings import field_names, refuse_moved, settings_of
from apmae.mining.prompts import PROMPT_FORMATS
from apmae.mining.scenario_set import SPLITS


@dataclass(frozen=True)
class MiningConfig:
    """The scenarios to mine.

    Args:
        tasks: task names (see ``apmae.mining.tasks.task_names()``); None for every registered task.
            Task ids follow this order.
        seq_len: prompt tokens S; every prompt has exactly S tokens.
        n_per_task: scenarios per task, or a mapping task -> count.
        proportions: task -> weight; then ``n_per_task x len(tasks)`` scenarios are shared out by weight.
        max_per_file: at most this many scenarios per task from one file.
        max_label_tokens: holes longer than this many tokens are rejected.
        splits: train/val/test fractions, assigned per source file by a hash of its id.
        seed: drives every random choice; the same corpus and seed give the same scenarios.
        pad: left-pad prompts of short files (``<fim_pad>``, else the pad or end-of-text token)
            instead of skipping them.
        max_bytes: larger files are skipped as ``oversize``.
        max_files: read at most this many files.
        exhaustive: read the whole corpus even once every quota is filled (a uniform sample over
            the corpus instead of over its first files).
        prompt_format: ``fim``, ``causal`` (left context only, for models without FIM training) or
            ``auto`` (``fim`` when the tokenizer has the FIM tokens); see :mod:`apmae.mining.prompts`.
    """

    tasks: Optional[list[str]] = None
    seq_len: int = 256
    n_per_task: Union[int, dict[str, int]] = 1000
    proportions: Optional[dict[str, float]] = None
    max_per_file: int = 2
    max_label_tokens: int = 32
    splits: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    pad: bool = False
    max_bytes: int = 1_000_000
    max_files: Optional[int] = None
    exhaustive: bool = False
    prompt_format: str = "fim"

    def __post_init__(self) -> None:
        if self.prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"mining.prompt_format={self.prompt_format!r}; use one of {PROMPT_FORMATS}")
        splits = tuple(float(s) for s in self.splits)
        if len(splits) != len(SPLITS) or min(splits) < 0 or abs(sum(splits) - 1) > 1e-6:
            raise ValueError(f"mining.splits must be {len(SPLITS)} non-negative fractions {SPLITS} summing to 1, "
                             f"got {list(self.splits)}")
        object.__setattr__(self, "splits", splits)
        if self.tasks is not None:
            object.__setattr__(self, "tasks", list(self.tasks))
        if self.max_label_tokens < 1 or self.seq_len < self.max_label_tokens + 5:
            raise ValueError(f"mining.seq_len={self.seq_len} must exceed max_label_tokens={self.max_label_tokens} "
                             "by >= 5 (up to three FIM tokens and some context); raise seq_len or lower "
                             "max_label_tokens")
        if self.max_per_file < 1:
            raise ValueError(f"mining.max_per_file must be >= 1, got {self.max_per_file}")

    @classmethod
    def of(cls, value: "MiningConfig | Mapping[str, Any] | None") -> "MiningConfig":
        """``value`` as a MiningConfig: itself, one built from a mapping of its fields, or the defaults."""
        return settings_of(cls, value, "mining")

    def key_inputs(self) -> dict[str, Any]:
        """The settings in the scenario cache key, as they were keyed before they were gathered here:
        ``max_bytes`` and ``exhaustive`` join it only when they differ from the defaults, so every
        set mined with the defaults keeps its key."""
        inputs = {"seq_len": self.seq_len, "n_per_task": self.n_per_task, "proportions": self.proportions,
                  "max_per_file": self.max_per_file, "max_label_tokens": self.max_label_tokens,
                  "splits": list(self.splits), "seed": self.seed, "pad": self.pad, "max_files": self.max_files,
                  "prompt_format": self.prompt_format}
        for name in ("max_bytes", "exhaustive"):
            if getattr(self, name) != getattr(DEFAULTS, name):
                inputs[name] = getattr(self, name)
        return inputs


DEFAULTS = MiningConfig()
MINING_FIELDS = field_names(MiningConfig)


def moved_to_mining(owner: str, arguments: Mapping[str, Any], param: str = "mining") -> None:
    """Refuse the mining settings ``owner`` once took one by one, naming its argument ``param`` that takes them."""
    refuse_moved(owner, arguments, MiningConfig, "mining", param)


__all__ = ["DEFAULTS", "MINING_FIELDS", "MiningConfig", "moved_to_mining"]
