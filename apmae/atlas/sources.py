"""Every per-head result a run wrote, found in its artifact folders and joined into one set of columns.

Glossary: L layers, H query heads.

Each source is a file a stage writes, found anywhere under the artifact
folders given (an MLflow run's artifact root, a probe's ``export_dir``, the
patterns stage's ``out_dir``):

=====================================  =====================================================
file                                   columns
=====================================  =====================================================
``importance.csv``                     ``importance`` (probe, mean replacement)
``integrated_gradients.csv``           ``integrated_gradients`` (probe)
``cluster_probe_importance.csv``       ``shap`` (cluster-id probe, signed mean SHAP)
``clusters/summary.csv``               ``families`` (pattern families of the head)
``head_metrics/<t>/distance.csv``      ``waad``, ``fai_gini``
``head_metrics/<t>/contribution.csv``  ``sink_attention``, ``sink_contribution`` (norm-based)
``head_metrics/<t>/maps_scores.csv``   ``maps_<relation>`` per relation
``head_metrics/<t>/types.csv``         ``head_type`` and a ``<type>_score`` per type
``interventions/**/results.csv``       ``zeroed_delta_accuracy``, ``zeroed_sets``
=====================================  =====================================================

A source that no folder holds is listed in :attr:`AtlasTable.missing` with
the stage that writes it; its columns are absent, never filled in. A head
that no zeroed set held has no ``zeroed_delta_accuracy`` (NaN), not 0.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from apmae.common.head_tables import read_head_table
from apmae.head_metrics.types import DEFAULT_THRESHOLDS, TYPES


@dataclass
class Column:
    """One per-head quantity of the atlas."""

    name: str
    values: np.ndarray  # (L, H) float64 (NaN: not measured for that head) or object labels
    source: str  # the file it was read from, relative to its artifact folder
    note: str  # what it means and what to compare it with
    signed: bool = False  # diverging colours centred on 0
    reference: float | None = None  # the value of "no effect" or the type threshold, shown beside it

    @property
    def numeric(self) -> bool:
        return self.values.dtype != object


@dataclass
class AtlasTable:
    """The joined per-head columns of one run, and the sources it lacks."""

    n_layers: int
    n_heads: int
    columns: dict[str, Column] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)  # column -> why it is absent
    target: str | None = None  # the head_metrics/<target> folder read


def find(roots: Sequence[Path], pattern: str) -> list[tuple[Path, Path]]:
    """``(root, file)`` of every file matching the glob ``pattern`` under the roots, sorted, roots in order."""
    return [(root, path) for root in roots for path in sorted(root.glob(pattern)) if path.is_file()]


def _relative(root: Path, path: Path) -> str:
    return str(path.relative_to(root))


def _head_column(roots: Sequence[Path], pattern: str, column: str, *, shape: tuple[int, int] | None
                 ) -> tuple[np.ndarray, str] | None:
    found = find(roots, pattern)
    if not found:
        return None
    root, path = found[0]
    n_layers, n_heads = shape if shape else (None, None)
    return read_head_table(path, column, n_layers=n_layers, n_heads=n_heads), _relative(root, path)


def _labels(path: Path, column: str, shape: tuple[int, int]) -> np.ndarray:
    """A text column of a head table as (L, H) labels."""
    out = np.full(shape, "", dtype=object)
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            out[int(row["layer"]), int(row["head"])] = row[column]
    return out


def _target_folder(roots: Sequence[Path], target: str | None) -> tuple[Path, Path] | None:
    """The ``head_metrics/<target>`` folder of the run's own heads: the named one, or the first with distance/types."""
    folders = [(root, p) for root, p in find(roots, "**/head_metrics/*/*.csv")]
    if target is not None:
        folders = [(root, p) for root, p in folders if p.parent.name == target]
    preferred = [(root, p) for root, p in folders if p.name in ("distance.csv", "types.csv", "contribution.csv")]
    chosen = (preferred or folders)[:1]
    return (chosen[0][0], chosen[0][1].parent) if chosen else None


# (column, file pattern, column in the file, note, signed, reference, stage that writes it)
PROBE_SOURCES = (
    ("crossfit_importance", "**/crossfit_importance.csv", "importance",
     "cross-fitted probe: out-of-fold AUROC drop when the head's columns are permuted (+: pushes toward 'correct')",
     True, 0.0, "the cross-fitted probe protocol (apmae crossfit, the demo) writes crossfit_importance.csv"),
    ("importance", "**/importance.csv", "importance",
     "probe logit change when the head's encoding is replaced by its mean (+: pushes toward 'correct')",
     True, 0.0, "the probe (LitProbe) writes importance.csv"),
    ("integrated_gradients", "**/integrated_gradients.csv", "importance",
     "integrated gradients of the probe's logit over the head's encoding", True, 0.0,
     "the probe (LitProbe) writes integrated_gradients.csv"),
    ("shap", "**/cluster_probe_importance.csv", "importance",
     "signed mean SHAP of the head's cluster id in the cluster-id probe", True, 0.0,
     "`apmae patterns` with its cluster probe writes cluster_probe_importance.csv"),
    ("families", "**/clusters/summary.csv", "n_clusters",
     "recurring pattern families (HDBSCAN clusters of the head's encodings)", False, 1.0,
     "`apmae patterns` writes clusters/summary.csv"),
)


def read_table(roots: Sequence[str | Path], *, target: str | None = None) -> AtlasTable:
    """Every per-head column the artifact folders ``roots`` hold (see the module docstring).

    Raises:
        ValueError: no per-head table under any root, or tables of different L x H.
    """
    roots = [Path(r) for r in roots]
    found: dict[str, tuple[np.ndarray, str, str, bool, float | None]] = {}
    missing: dict[str, str] = {}
    shape = None
    for name, pattern, column, note, signed, reference, stage in PROBE_SOURCES:
        got = _head_column(roots, pattern, column, shape=shape)
        if got is None:
            missing[name] = f"not found: {stage}"
            continue
        shape = shape or got[0].shape
        found[name] = (got[0], got[1], note, signed, reference)
    table = _head_metric_columns(roots, target, shape)
    shape = shape or (table.n_layers, table.n_heads)
    if shape == (0, 0):
        raise ValueError(f"no per-head table (importance.csv, clusters/summary.csv, head_metrics/<target>/*.csv) "
                         f"under {[str(r) for r in roots]}: give the artifact folders of a probe or AP-MAE run")
    table.n_layers, table.n_heads = shape
    columns = {name: Column(name, v, src, note, signed, ref) for name, (v, src, note, signed, ref) in found.items()}
    table.columns = {**columns, **table.columns}
    table.missing = {**missing, **table.missing}
    _intervention_columns(roots, table)
    return table


def _head_metric_columns(roots: Sequence[Path], target: str | None, shape: tuple[int, int] | None) -> AtlasTable:
    table = AtlasTable(*(shape or (0, 0)))
    chosen = _target_folder(roots, target)
    stage = "the HeadMetrics callback of the AP-MAE fit writes head_metrics/<target>/"
    if chosen is None:
        for name in ("waad", "fai_gini", "sink_attention", "sink_contribution", "maps", "head_type"):
            table.missing[name] = f"not found: {stage}" + ("" if target is None else f" (target {target!r})")
        return table
    root, folder = chosen
    table.target = folder.name
    readers: list[Callable[[AtlasTable, Path, Path, str], None]] = [_distance, _contribution, _maps, _types]
    for reader in readers:
        reader(table, root, folder, stage)
    return table


def _read(table: AtlasTable, path: Path, column: str) -> np.ndarray:
    shape = (table.n_layers, table.n_heads) if table.n_layers else (None, None)
    values = read_head_table(path, column, n_layers=shape[0], n_heads=shape[1])
    table.n_layers, table.n_heads = values.shape
    return values


def _add(table: AtlasTable, root: Path, path: Path, name: str, column: str, note: str, *,
         reference: float | None = None, signed: bool = False) -> None:
    table.columns[name] = Column(name, _read(table, path, column), _relative(root, path), note, signed, reference)


def _found(table: AtlasTable, path: Path, columns: list[str], stage: str) -> Path | None:
    """``path`` when the run wrote it; else None, and ``columns`` are marked missing with the stage that writes them."""
    if path.is_file():
        return path
    for column in columns:
        table.missing[column] = f"not found: {stage}"
    return None


def _header(path: Path) -> list[str]:
    with path.open(newline="") as f:
        return next(csv.reader(f))


def _distance(table: AtlasTable, root: Path, folder: Path, stage: str) -> None:
    path = _found(table, folder / "distance.csv", ["waad", "fai_gini"], f"{stage} (method distance)")
    if path is None:
        return
    _add(table, root, path, "waad", "mean_waad", "windowed average attention distance (tokens back, capped at W)")
    _add(table, root, path, "fai_gini", "fai_gini", "Gini of future attention influence over keys (1: one key)")


def _contribution(table: AtlasTable, root: Path, folder: Path, stage: str) -> None:
    path = _found(table, folder / "contribution.csv", ["sink_attention", "sink_contribution"],
                  f"{stage} (method contribution)")
    if path is None:
        return
    _add(table, root, path, "sink_attention", "sink_attention", "share of attention on the first token")
    _add(table, root, path, "sink_contribution", "sink_norm",
         "share of the norm-based contribution from the first token (compare with sink_attention)")


def _maps(table: AtlasTable, root: Path, folder: Path, stage: str) -> None:
    path = _found(table, folder / "maps_scores.csv", ["maps"], f"{stage} (method maps)")
    if path is None:
        return
    header = _header(path)
    for relation in [c for c in header[2:] if not c.endswith("_suppression")]:
        _add(table, root, path, f"maps_{relation}", relation,
             f"MAPS score of relation {relation!r}: share of its pairs the head's OV circuit promotes")


def _types(table: AtlasTable, root: Path, folder: Path, stage: str) -> None:
    path = _found(table, folder / "types.csv", ["head_type"], f"{stage} (method types)")
    if path is None:
        return
    header = set(_header(path))
    for kind in (t for t in TYPES if t in header):
        _add(table, root, path, f"{kind}_score", kind, f"head-type score of {kind!r} (apmae.head_metrics.types); "
             "reference: the default threshold", reference=DEFAULT_THRESHOLDS[kind])
    labels = _labels(path, "head_type", (table.n_layers, table.n_heads))
    table.columns["head_type"] = Column("head_type", labels, _relative(root, path),
                                        "the passed type of widest margin over its threshold (none: no type)")


def _intervention_columns(roots: Sequence[Path], table: AtlasTable) -> None:
    found = find(roots, "**/interventions/**/results.csv")
    if not found:
        table.missing["zeroed_delta_accuracy"] = "not found: the Interventions callback writes interventions/results.csv"
        return
    root, path = found[-1]  # the test evaluation's folder sorts after the validation one
    sums, counts, random = np.zeros((table.n_layers, table.n_heads)), np.zeros((table.n_layers, table.n_heads)), []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            if row["scope"] != "all" or not row["heads"]:
                continue
            delta = float(row["delta_accuracy"])
            random += [delta] if row["strategy"] == "random" else []
            for head in row["heads"].split(";"):
                layer, h = (int(x) for x in head.split("."))
                sums[layer, h] += delta
                counts[layer, h] += 1
    mean = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    base = f"; random sets: mean {np.mean(random):+.3f}" if random else ""
    table.columns["zeroed_delta_accuracy"] = Column(
        "zeroed_delta_accuracy", mean, _relative(root, path),
        f"mean accuracy change over the zeroed sets that held the head (empty: never zeroed){base}", True, 0.0)
    table.columns["zeroed_sets"] = Column("zeroed_sets", np.where(counts > 0, counts, np.nan), _relative(root, path),
                                          "zeroed sets (any strategy, k) that held the head")


__all__ = ["AtlasTable", "Column", "find", "read_table"]
