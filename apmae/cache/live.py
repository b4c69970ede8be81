"""Attention patterns computed when read: what figures need of a cache, with no cache on disk.

A study that streams its encodings (:func:`apmae.encodings.stream.stream_encodings`) writes no
pattern cache, yet its figures show patterns: the medoid of each pattern family, a head's mean
pattern. :class:`LivePatterns` answers those reads (``scenario``, ``pattern``) by running the
target on the scenario asked for, with the same eager forward pass the cache is extracted with
(:func:`apmae.target.access.forward_attentions`), so a live pattern equals the cached one. The
last ``keep`` scenarios read are kept in memory. Its rows are those of the encodings it is built
beside (row ``i`` is scenario ``scenario_index[i]`` of the scenario set).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Mapping

import numpy as np
import torch

from apmae.mining.scenario_set import ScenarioSet
from apmae.target.access import Target, forward_attentions


class LivePatterns:
    """Read-only, cache-like view whose patterns the target computes on demand.

    Args:
        target: the loaded target (eager attention).
        scenarios: the scenario set the rows index into.
        columns: per-row columns, at least ``scenario_index`` (e.g. an EncodingSet's ``columns``).
        keep: scenarios kept in memory after they were computed.

    Raises:
        ValueError: a ``scenario_index`` outside the scenario set, or prompts of another length
            than the target's context allows.
    """

    def __init__(self, target: Target, scenarios: ScenarioSet, columns: Mapping[str, np.ndarray], *,
                 keep: int = 64) -> None:
        self.target, self.scenarios = target, scenarios
        self.columns = dict(columns)
        index = np.asarray(self.columns["scenario_index"], dtype=np.int64)
        if len(index) and (index.min() < 0 or index.max() >= len(scenarios)):
            raise ValueError(f"scenario_index runs to {int(index.max())}, past the {len(scenarios)} scenarios of "
                             "the set: build LivePatterns with the scenario set its rows were encoded from")
        self.columns["scenario_index"] = index
        self.keep = keep
        self._memory: OrderedDict[int, np.ndarray] = OrderedDict()
        self.computed = 0  # scenarios run through the target so far

    def __len__(self) -> int:
        return len(self.columns["scenario_index"])

    @property
    def scenario_index(self) -> np.ndarray:
        return self.columns["scenario_index"]

    @property
    def seq_len(self) -> int:
        return int(self.scenarios.seq_len)

    @property
    def n_layers(self) -> int:
        return self.target.n_layers

    @property
    def n_heads(self) -> int:
        return self.target.n_heads

    @property
    def task_names(self) -> list[str]:
        return list(self.scenarios.task_names)

    def scenario(self, i: int) -> np.ndarray:
        """(L, H, S, S) float32 patterns of every head of row ``i``."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"row {i} is outside the {len(self)} rows")
        row = int(self.scenario_index[i])
        if row in self._memory:
            self._memory.move_to_end(row)
            return self._memory[row]
        patterns = self._compute(row)
        self._memory[row] = patterns
        if len(self._memory) > self.keep:
            self._memory.popitem(last=False)
        return patterns

    def pattern(self, i: int, layer: int, head: int) -> np.ndarray:
        """(S, S) float32 pattern of one head of row ``i``."""
        return self.scenario(i)[layer, head]

    def _compute(self, row: int) -> np.ndarray:
        s = self.scenarios
        ids = torch.as_tensor(s.input_ids[row:row + 1].astype(np.int64))
        label = torch.as_tensor(s.label_ids[row:row + 1, 0].astype(np.int64))
        middle = torch.as_tensor(s.middle_pos[row:row + 1].astype(np.int64))
        with torch.inference_mode():
            attentions, _ = forward_attentions(self.target, ids, label, middle)
        self.computed += 1
        return torch.stack(attentions, dim=1)[0].float().cpu().numpy()  # (L, H, S, S)

    def close(self) -> None:
        self._memory.clear()

    def __getstate__(self) -> Any:
        raise TypeError("LivePatterns holds a loaded model: read it in the process that built it")


__all__ = ["LivePatterns"]
