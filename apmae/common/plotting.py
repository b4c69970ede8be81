"""Matplotlib for the figures every stage writes: the file backend, imported on first use.

Figures are written to files (PNG/SVG) and logged to MLflow, never shown, so the
non-interactive Agg backend is selected before pyplot is imported; that also keeps
runs on machines without a display (clusters, CI) from failing.
"""

from __future__ import annotations

from typing import Any


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend."""
    import matplotlib  # import cost ~0.5 s: paid by the stages that draw, not by every importer

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use(): the backend is chosen first

    return plt
