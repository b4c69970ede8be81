"""Per-head tables and L x H heatmaps: the shape every head-level result is saved in.

Glossary: L layers, H query heads.

A head table is a CSV with one row per (layer, head), in layer-major order,
and one column per quantity (``layer,head,importance`` for a head ranking),
so any tool can rank, join or re-plot heads. Floats are written with 6
significant digits; integers and labels (a head's ``focus``, ``local`` or
``global``) as they are. The heatmap draws one quantity as
an L x H image: layers as rows, heads as columns; signed quantities use a
diverging colour map centred on 0.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from apmae.common.plotting import pyplot


class HeadTableError(ValueError):
    """A head table cannot be used: unreadable, not a head table, damaged, or made for another model."""


def write_head_table(path: str | Path, columns: Mapping[str, Any]) -> Path:
    """Write ``layer,head,<column>...`` rows for (L, H) arrays ``columns``; returns the path.

    Raises:
        ValueError: no columns, or columns that are not all (L, H) arrays of one shape.
    """
    arrays = {name: np.asarray(v) for name, v in columns.items()}
    shapes = {a.shape for a in arrays.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"head table columns must all be (L, H) arrays of one shape, got shapes {sorted(shapes)}")
    n_layers, n_heads = next(iter(shapes))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["layer", "head", *arrays])
        for layer in range(n_layers):
            for head in range(n_heads):
                writer.writerow([layer, head, *(table_cell(a[layer, head]) for a in arrays.values())])
    return path


def table_cell(value: Any) -> Any:
    """How a CSV table writes one value: floats with 6 significant digits, anything else as it is."""
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6g}"
    return value.item() if isinstance(value, np.generic) else value


def read_head_table(path: str | Path, column: str, *, n_layers: int | None = None,
                    n_heads: int | None = None) -> np.ndarray:
    """One column of a head table as an (L, H) array.

    Raises:
        ValueError: the file is unreadable, lacks ``layer``/``head``/``column``, repeats or misses a
            head, or does not match ``n_layers`` x ``n_heads`` when given.
    """
    try:
        with Path(path).open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise HeadTableError(f"cannot read head table {path}: it is not a CSV text file ({e}); give a table a "
                             "run wrote (importance.csv, head_metrics.csv, ...)") from e
    if not rows or not {"layer", "head", column} <= set(rows[0]):
        raise HeadTableError(f"head table {path} needs columns layer, head and {column}; "
                             f"it has {sorted(rows[0]) if rows else 'no rows'}")
    try:
        keys = [(int(r["layer"]), int(r["head"])) for r in rows]
        values = [float(r[column]) for r in rows]
    except (ValueError, TypeError) as e:  # TypeError: a row cut short has None for its last cells
        raise HeadTableError(f"head table {path} has a non-numeric entry or a missing one ({e}); it is truncated or "
                             "damaged: write it again") from e
    n_layers = n_layers if n_layers is not None else max(k[0] for k in keys) + 1
    n_heads = n_heads if n_heads is not None else max(k[1] for k in keys) + 1
    _check_heads(keys, path, n_layers=n_layers, n_heads=n_heads)
    out = np.zeros((n_layers, n_heads))
    for (layer, head), value in zip(keys, values):
        out[layer, head] = value
    return out


def _check_heads(keys: list[tuple[int, int]], path: str | Path, *, n_layers: int, n_heads: int) -> None:
    """Every head of the L x H grid exactly once; each way of failing says what is wrong."""
    outside = sorted({k for k in keys if not (0 <= k[0] < n_layers and 0 <= k[1] < n_heads)})
    if outside:
        shown = ", ".join(f"{l}.{h}" for l, h in outside[:5])
        raise HeadTableError(f"head table {path} names {len(outside)} heads outside {n_layers} layers x {n_heads} "
                         f"heads ({shown}): it was made for another model")
    counts = Counter(keys)
    repeated = sorted(k for k, n in counts.items() if n > 1)
    if repeated:
        raise HeadTableError(f"head table {path} lists heads {[f'{l}.{h}' for l, h in repeated[:5]]} more than "
                         "once; keep one row per head")
    missing = [f"{l}.{h}" for l in range(n_layers) for h in range(n_heads) if (l, h) not in counts]
    if missing:
        raise HeadTableError(f"head table {path} has no row for {len(missing)} of {n_layers * n_heads} heads "
                         f"({missing[:5]}); it must list every head")


@dataclass(frozen=True)
class HeadPanel:
    """One L x H heatmap of a figure (layers as rows, heads as columns)."""

    title: str
    values: Any  # (L, H)
    vmin: float | None = None  # colour scale; None = the values' own range (signed: symmetric around 0)
    vmax: float | None = None


def heatmap_figure(panels: Mapping[str, Any] | Sequence[HeadPanel], *, title: str = "", signed: bool = True,
                   cmap: str | None = None, columns: int | None = None, labels: str | None = None) -> Any:
    """The figure of one L x H heatmap per panel, ``columns`` per row (default: one row), each with its colour bar.

    ``panels`` maps titles to (L, H) arrays, or lists :class:`HeadPanel` with their own colour scales.
    Signed panels use a diverging colour map centred on 0. ``labels`` (a format such as ``"{:.2f}"``)
    writes each cell's value while the model has at most 256 heads.
    """
    plt = pyplot()

    if isinstance(panels, Mapping):
        panels = [HeadPanel(name, values) for name, values in panels.items()]
    columns = columns or len(panels)
    rows = -(-len(panels) // columns)
    n_layers, n_heads = np.asarray(panels[0].values).shape
    cell_w, cell_h = max(3.0, 0.45 * n_heads + 1.5), max(2.5, 0.45 * n_layers + 1.2)
    fig, axes = plt.subplots(rows, columns, figsize=(cell_w * columns, cell_h * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, panel in zip(axes.flat, panels):
        values = np.asarray(panel.values, dtype=np.float64)
        vmin, vmax = panel.vmin, panel.vmax
        if signed and vmin is None and vmax is None:
            bound = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0
            vmin, vmax = -(bound or 1.0), bound or 1.0
        image = ax.imshow(values, cmap=cmap or ("RdBu_r" if signed else "viridis"), vmin=vmin, vmax=vmax,
                          aspect="auto", interpolation="nearest")
        ax.set_title(panel.title, fontsize=9)
        ax.set_xlabel("head", fontsize=8)
        ax.set_ylabel("layer", fontsize=8)
        ax.set_xticks(range(n_heads))
        ax.set_yticks(range(n_layers))
        ax.tick_params(labelsize=7)
        if labels and n_layers * n_heads <= 256:
            for (layer, head), v in np.ndenumerate(values):
                ax.text(head, layer, labels.format(v), ha="center", va="center", fontsize=6, color="w")
        fig.colorbar(image, ax=ax, fraction=0.046)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def head_heatmap(path: str | Path, panels: Mapping[str, Any] | Sequence[HeadPanel], *, title: str = "",
                 signed: bool = True, cmap: str | None = None, columns: int | None = None,
                 labels: str | None = None) -> Path:
    """:func:`heatmap_figure` saved as a PNG at ``path``; returns the path."""
    plt = pyplot()
    fig = heatmap_figure(panels, title=title, signed=signed, cmap=cmap, columns=columns, labels=labels)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["HeadPanel", "HeadTableError", "head_heatmap", "heatmap_figure", "read_head_table", "table_cell",
           "write_head_table"]
