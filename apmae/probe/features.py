"""Feature sets of the cross-fitted probe: registered extractors and their combinations.

Glossary: N scenarios, L layers, H query heads, D encoder width, F columns of a block,
k principal components kept per head.

A feature set is named by its extractors joined with ``+`` (``confidence+task+row``). Each
extractor turns a :class:`ProbeData` into a :class:`FeatureBlock`: a matrix with, per
column, the head it describes (``-1`` for per-scenario columns such as the confidence)
and whether each head's columns are reduced to k principal components first. Anything
fitted on data (standardisation, the per-head PCA) is fitted inside the training folds by
:mod:`apmae.probe.preprocess`, never here.

Registered (:data:`FEATURE_SETS`; :func:`register_feature_set` adds a user's own):

- ``confidence``: the target's probability of its prediction and its logit (2 columns);
- ``task``: one-hot task identity;
- ``stats``: four whole-pattern statistics per head (:data:`apmae.encodings.store.STAT_NAMES`);
- ``row``: five scalars of the scored attention row per head
  (:data:`apmae.encodings.readouts.ROW_FEATURE_NAMES`);
- ``apmae``: AP-MAE's pooled encoding of the whole image (CLS and mean token), k = 3 per head;
- ``apmae_row``: the mean encoder token of the patches holding the scored row, k = 3 per head;
- ``apmae_rowattn``: those tokens weighted by the row's attention in each patch, k = 3 per head;
- ``row_mass``: the scored row's attention mass in each of AP-MAE's patch columns (S / P numbers per
  head): the weights ``apmae_rowattn`` reads its tokens with, alone. Beside ``apmae_rowattn`` it says
  whether the encoder's tokens add anything to where the row looks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from apmae.encodings.store import EncodingSet
from apmae.mining.tasks import CONTROL_TASK

ENCODING_COMPONENTS = 3  # principal components per head of an AP-MAE readout (fitted in the training folds)


@dataclass
class ProbeData:
    """What the probe protocol reads for N scenarios: labels, groups, per-head arrays.

    ``arrays`` maps a name of :data:`apmae.encodings.store.ARRAYS` to its (N, L, H, X) array,
    read on first use from ``source`` (an :class:`EncodingSet`) when one is given.
    """

    task: np.ndarray  # (N,) int64 index into task_names
    correct: np.ndarray  # (N,) bool, the label
    groups: np.ndarray  # (N,) str source file of each scenario (the unit folds and bootstraps keep whole)
    probability: np.ndarray  # (N,) float32, the target's probability of its own prediction
    task_names: list[str]
    n_layers: int
    n_heads: int
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    source: EncodingSet | None = None
    rows: np.ndarray | None = None  # (N,) rows of ``source`` these scenarios are
    patch_size: int = 0  # the encoder's patch side (its readouts' patch columns); 0 = unknown

    def array(self, name: str) -> np.ndarray:
        """(N, L, H, X) float32 array ``name``."""
        if name not in self.arrays:
            if self.source is None:
                raise ValueError(f"this probe data has no {name!r} array; it holds {sorted(self.arrays)}")
            self.arrays[name] = self.source.array(name)[self.rows].astype(np.float32)
        return self.arrays[name]

    def __len__(self) -> int:
        return len(self.correct)

    @classmethod
    def from_encodings(cls, source: EncodingSet, *, exclude_tasks: tuple[str, ...] = (CONTROL_TASK,)) -> "ProbeData":
        """Every scenario of ``source`` but those of ``exclude_tasks`` (the noise control is reported apart)."""
        names = list(source.task_names)
        excluded = [names.index(t) for t in exclude_tasks if t in names]
        rows = np.flatnonzero(~np.isin(source.task, excluded))
        groups = source.columns["source_id"][rows].astype(str)
        if np.any(groups == ""):
            raise ValueError("scenarios without a source file cannot be grouped by file: exclude their task "
                             f"(tasks {sorted({names[t] for t in source.task[rows][groups == '']})})")
        return cls(task=source.task[rows].astype(np.int64), correct=source.correct[rows].astype(bool),
                   groups=groups, probability=source.probability[rows].astype(np.float32), task_names=names,
                   n_layers=source.n_layers, n_heads=source.n_heads, source=source, rows=rows,
                   patch_size=source.patch_size)

    def subset(self, keep: np.ndarray) -> "ProbeData":
        """The scenarios at positions ``keep`` (arrays already read are sliced, the rest read on use)."""
        return ProbeData(task=self.task[keep], correct=self.correct[keep], groups=self.groups[keep],
                         probability=self.probability[keep], task_names=self.task_names, n_layers=self.n_layers,
                         n_heads=self.n_heads, arrays={k: v[keep] for k, v in self.arrays.items()},
                         source=self.source, rows=None if self.rows is None else self.rows[keep],
                         patch_size=self.patch_size)


@dataclass(frozen=True)
class FeatureBlock:
    """Columns of one extractor."""

    values: np.ndarray  # (N, F) float32
    head: np.ndarray  # (F,) int64 head l * H + h a column describes, -1 for per-scenario columns
    components: int | None = None  # reduce each head's columns to this many principal components

    def __post_init__(self) -> None:
        if self.values.ndim != 2 or self.head.shape != (self.values.shape[1],):
            raise ValueError(f"a feature block needs (N, F) values and (F,) head ids, got {self.values.shape} "
                             f"and {self.head.shape}")
        if self.components is not None and np.any(self.head < 0):
            raise ValueError("per-head principal components need every column to name its head")


Extractor = Callable[[ProbeData], FeatureBlock]
FEATURE_SETS: dict[str, Extractor] = {}


def register_feature_set(name: str, extractor: Extractor, *, replace: bool = False) -> None:
    """Make ``name`` usable in feature-set names (``name``, ``confidence+name``, ...)."""
    if "+" in name or not name:
        raise ValueError(f"feature set name {name!r}: use a non-empty name without '+'")
    if name in FEATURE_SETS and not replace:
        raise ValueError(f"feature set {name!r} is registered already; pass replace=True to replace it")
    FEATURE_SETS[name] = extractor


def parts_of(spec: str) -> list[str]:
    """The registered extractor names of ``spec`` (``a+b``), checked."""
    parts = [p.strip() for p in spec.split("+")]
    unknown = [p for p in parts if p not in FEATURE_SETS]
    if unknown or not spec:
        raise ValueError(f"unknown feature set {unknown or spec!r} in {spec!r}; registered: {sorted(FEATURE_SETS)}")
    return parts


def blocks_of(data: ProbeData, spec: str) -> list[FeatureBlock]:
    """The blocks of feature set ``spec`` on ``data``."""
    return [FEATURE_SETS[p](data) for p in parts_of(spec)]


def per_head(array: np.ndarray, components: int | None = None) -> FeatureBlock:
    """(N, L, H, X) -> a block of L * H * X columns, each naming its head."""
    n, n_layers, n_heads, width = array.shape
    head = np.repeat(np.arange(n_layers * n_heads), width)
    return FeatureBlock(values=array.reshape(n, -1).astype(np.float32), head=head, components=components)


def _confidence(data: ProbeData) -> FeatureBlock:
    p = np.clip(data.probability.astype(np.float64), 1e-6, 1 - 1e-6)
    return FeatureBlock(values=np.stack([p, np.log(p / (1 - p))], axis=1).astype(np.float32), head=np.full(2, -1))


def _task(data: ProbeData) -> FeatureBlock:
    present = np.unique(data.task)
    one_hot = (data.task[:, None] == present[None, :]).astype(np.float32)
    return FeatureBlock(values=one_hot, head=np.full(len(present), -1))


def _row_mass(data: ProbeData) -> FeatureBlock:
    rows = data.array("row_attention")  # (N, L, H, S)
    if data.patch_size < 1 or rows.shape[-1] % data.patch_size:
        raise ValueError(f"row_mass needs the encoder's patch size, which these encodings do not record "
                         f"(patch_size={data.patch_size}); encode them again with this apmae")
    return per_head(rows.reshape(*rows.shape[:3], -1, data.patch_size).sum(-1))


register_feature_set("confidence", _confidence)
register_feature_set("task", _task)
register_feature_set("stats", lambda data: per_head(data.array("stats")))
register_feature_set("row", lambda data: per_head(data.array("row")))
register_feature_set("apmae", lambda data: per_head(np.concatenate([data.array("cls"), data.array("mean")], -1),
                                                    ENCODING_COMPONENTS))
register_feature_set("apmae_row", lambda data: per_head(data.array("row_mean"), ENCODING_COMPONENTS))
register_feature_set("apmae_rowattn", lambda data: per_head(data.array("row_attn"), ENCODING_COMPONENTS))
register_feature_set("row_mass", _row_mass)

__all__ = ["ENCODING_COMPONENTS", "Extractor", "FEATURE_SETS", "FeatureBlock", "ProbeData", "blocks_of", "parts_of",
           "per_head", "register_feature_set"]
