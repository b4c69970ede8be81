"""The atlas grid for papers: one per-head column as an L x H image, PNG and SVG.

Glossary: L layers, H heads.

Signed columns (importance, accuracy change) use a diverging map centred on
0; heads without a value (never zeroed, say) are drawn grey, not as a value.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from apmae.atlas.sources import Column
from apmae.common.plotting import pyplot


def grid_figure(column: Column, out_stem: str | Path, *, title: str) -> list[Path]:
    """``<stem>.png`` and ``<stem>.svg`` of ``column`` (numeric) as an L x H image; returns both paths."""
    plt = pyplot()
    values = np.ma.masked_invalid(np.asarray(column.values, dtype=np.float64))
    n_layers, n_heads = values.shape
    fig, ax = plt.subplots(figsize=(min(16.0, 1.6 + 0.18 * n_heads), min(12.0, 1.2 + 0.16 * n_layers)))
    cmap = plt.get_cmap("RdBu_r" if column.signed else "viridis").with_extremes(bad="#bbbbbb")
    if column.signed:
        bound = float(np.abs(values).max()) if values.count() else 1.0
        image = ax.imshow(values, cmap=cmap, vmin=-(bound or 1.0), vmax=bound or 1.0, aspect="auto",
                          interpolation="nearest")
    else:
        image = ax.imshow(values, cmap=cmap, aspect="auto", interpolation="nearest")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.04, label=column.name)
    fig.tight_layout()
    stem = Path(out_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for path in paths:
        fig.savefig(path, dpi=150)
    plt.close(fig)
    return paths


__all__ = ["grid_figure"]
