"""Scenario rows: which rows a split serves, and how encodings rows become batches.

Glossary: B batch, L layers, H query heads, D encoder width, F pattern statistics per head.

Both attention-pattern DataModules choose rows with :func:`select_rows` (an
attention cache and an encodings set expose the same columns) and serve
encodings through :class:`EncodingRows` and :func:`collate_encodings`, so the
probe reads the same batch keys from either: ``cls``, ``mean`` (B, L, H, D) and
``stats`` (B, L, H, F) float32, ``scenario``, ``row``, ``task`` (long),
``correct`` (bool), ``probability`` (float32).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from apmae.encodings.store import KINDS, EncodingSet
from apmae.mining.scenario_set import SPLITS, balance_per_task

ARRAYS = (*KINDS, "stats")
_LABEL_DTYPES = {"scenario": torch.long, "row": torch.long, "task": torch.long, "correct": torch.bool,
                 "probability": torch.float32}


def select_rows(source: Any, split: str, *, tasks: Sequence[str] | None = None,
                correct_only: bool = False, balance: bool = False, seed: int = 0) -> np.ndarray:
    """Rows of one split of an attention cache or encodings set after the task / correctness filters.

    Balancing keeps, per task, as many correct as incorrect rows (a seeded
    random subset of the larger class), in row order.

    Raises:
        ValueError: a task name the source does not hold.
    """
    keep = source.split == SPLITS.index(split)
    if tasks is not None:
        names = source.task_names
        unknown = sorted(set(tasks) - set(names))
        if unknown:
            raise ValueError(f"tasks {unknown} are not in the cache's tasks {names}")
        keep &= np.isin(source.task, [names.index(t) for t in tasks])
    if correct_only:
        keep &= source.correct
    rows = np.flatnonzero(keep)
    if balance:
        rows = balance_per_task(rows, source.task[rows], source.correct[rows], np.random.default_rng(seed))
    return rows


def row_columns(source: Any, row: int) -> dict[str, Any]:
    """The per-scenario labels every scenario sample carries (cache and encodings alike)."""
    cols = source.columns
    return {"scenario": int(cols["scenario_index"][row]), "row": row, "task": int(cols["task"][row]),
            "correct": bool(cols["correct"][row]), "probability": float(cols["probability"][row])}


class EncodingRows(Dataset):
    """One sample per selected row: its encodings (read into memory once) and labels."""

    def __init__(self, encodings: EncodingSet, rows: np.ndarray) -> None:
        self.rows = np.asarray(rows, dtype=np.int64)
        self.arrays = {name: encodings.rows(self.rows, name) for name in ARRAYS}  # (n, L, H, D or F)
        cols = encodings.columns
        self.labels = {"scenario": cols["scenario_index"][self.rows], "row": self.rows, "task": cols["task"][self.rows],
                       "correct": cols["correct"][self.rows], "probability": cols["probability"][self.rows]}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, j: int) -> dict[str, Any]:
        return {**{k: v[j] for k, v in self.arrays.items()}, **{k: v[j] for k, v in self.labels.items()}}


def collate_encodings(samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack samples: encodings as float32 tensors, labels with their dtypes."""
    batch = {name: torch.from_numpy(np.stack([s[name] for s in samples]).astype(np.float32)) for name in ARRAYS}
    for key, dtype in _LABEL_DTYPES.items():
        batch[key] = torch.as_tensor(np.array([s[key] for s in samples]), dtype=dtype)
    return batch
