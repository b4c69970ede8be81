"""Plain CSV tables and head naming: the common output of every head metric.

Glossary: L layers, H heads.

Per-head tables and L x H heatmaps are :mod:`apmae.common.head_tables`' (``write_head_table``,
``head_heatmap``), the format every head-level result shares.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from apmae.common.head_tables import table_cell


def head_name(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def write_rows(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    """A plain CSV table."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([[table_cell(v) for v in row] for row in rows])
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
