"""Figures of pattern families: families per head (L x H heatmap) and medoid montages.

Glossary: L layers, H heads, S tokens, K clusters of one head.

A montage shows, for one head, the raw attention pattern (from the cache) of
each cluster's medoid scenario on a logarithmic colour scale (attention spans
decades), the upper triangle blank (causal: never attended), titled with the
cluster's size, majority task and share of correct completions.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from apmae.common.head_tables import HeadPanel, heatmap_figure
from apmae.common.plotting import pyplot

_LOG_FLOOR = 1e-4  # lowest probability the colour scale distinguishes


def families_heatmap(n_clusters: np.ndarray, *, title: str) -> Any:
    """Figure of the (L, H) number of pattern families per head, each cell labelled."""
    panel = HeadPanel("clusters", np.asarray(n_clusters), vmin=0.0)
    return heatmap_figure([panel], title=title, signed=False, labels="{:.0f}")


def medoid_montage(patterns: Sequence[np.ndarray], titles: Sequence[str], *, title: str,
                   columns: int = 4) -> Any:
    """Figure of (S, S) raw patterns, one panel each, on a shared log colour scale."""
    from matplotlib.colors import LogNorm  # after pyplot(): the backend is chosen first

    plt = pyplot()
    if len(patterns) != len(titles) or not len(patterns):
        raise ValueError(f"need one title per pattern and at least one pattern, got {len(patterns)} and {len(titles)}")
    columns = min(columns, len(patterns))
    rows = math.ceil(len(patterns) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.8 * columns, 2.9 * rows + 0.4), squeeze=False)
    norm = LogNorm(vmin=_LOG_FLOOR, vmax=1.0)
    image = None
    for ax, pattern, name in zip(axes.flat, patterns, titles):
        s = pattern.shape[-1]
        shown = np.where(np.tri(s, dtype=bool), np.clip(pattern, _LOG_FLOOR, 1.0), np.nan)  # (S, S)
        image = ax.imshow(shown, cmap="magma", norm=norm, interpolation="nearest")
        ax.set_title(name, fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(patterns):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.colorbar(image, ax=axes, shrink=0.8, label="attention (log scale)")
    return fig


__all__ = ["families_heatmap", "medoid_montage"]
