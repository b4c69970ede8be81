"""Heatmap panels, plain CSV tables and head naming: the common output of every head metric.

Glossary: L layers, H heads.

Per-head tables are :func:`apmae.common.head_tables.write_head_table`'s, the
format every head-level result shares.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from apmae.common.head_tables import table_cell
from apmae.common.plotting import pyplot


def head_name(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def write_rows(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    """A plain CSV table."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([[table_cell(v) for v in row] for row in rows])
    return path


@dataclass
class Panel:
    """One L x H heatmap of a figure (layers as rows, heads as columns)."""

    title: str
    values: np.ndarray  # (L, H)
    vmin: float | None = None  # colour scale; None = the values' own range
    vmax: float | None = None


def heatmaps(path: Path, panels: Sequence[Panel], *, title: str, columns: int | None = None,
             cmap: str = "viridis") -> Path:
    """The panels in a grid of ``columns`` per row (default: one row), each with its colour bar, as a PNG.

    Cells carry their values while the model has at most 256 heads.
    """
    plt = pyplot()

    columns = columns or len(panels)
    rows = -(-len(panels) // columns)
    n_layers, n_heads = panels[0].values.shape
    cell_w, cell_h = max(3.0, 0.45 * n_heads + 1.5), max(2.5, 0.45 * n_layers + 1.2)
    fig, axes = plt.subplots(rows, columns, figsize=(cell_w * columns, cell_h * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, panel in zip(axes.flat, panels):
        values = np.asarray(panel.values, dtype=float)
        image = ax.imshow(values, cmap=cmap, vmin=panel.vmin, vmax=panel.vmax, aspect="auto",
                          interpolation="nearest")
        ax.set_title(panel.title, fontsize=9)
        ax.set_xlabel("head", fontsize=8)
        ax.set_ylabel("layer", fontsize=8)
        ax.set_xticks(range(n_heads))
        ax.set_yticks(range(n_layers))
        ax.tick_params(labelsize=7)
        if n_layers * n_heads <= 256:
            for (layer, head), v in np.ndenumerate(values):
                ax.text(head, layer, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w")
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def top_heads(values: np.ndarray, n: int, *, largest: bool = True) -> list[tuple[int, int, float]]:
    """The ``n`` (layer, head, value) with the largest (or smallest) values of an (L, H) array."""
    flat = values.reshape(-1)
    order = np.argsort(-flat if largest else flat, kind="stable")[:n]
    return [(int(i // values.shape[1]), int(i % values.shape[1]), float(flat[i])) for i in order]


def token_text(texts: Sequence[str] | None, token: int) -> str:
    """A token's decoded text, or ``#<id>`` without a tokenizer."""
    if texts is None or not 0 <= token < len(texts):
        return f"#{token}"
    return texts[token]
