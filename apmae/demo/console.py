"""What the demo's steps leave on the console: their stage lines, progress bars of long work, summaries."""

from __future__ import annotations

import logging
import warnings


def quiet_libraries() -> None:
    """Keep the console to the demo's stage lines, progress bars of long work and its summary.

    Off: Lightning's device lines, tips and seed notices, the model-summary table (the configs set
    ``enable_model_summary: false``), transformers' per-tensor weight-loading bars, and warnings about
    how the demo calls LightningCLI. Warnings and errors still print.
    """
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.seed",
                 "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    from transformers.utils import logging as hf_logging  # import cost ~2 s: called once the inputs were checked

    hf_logging.disable_progress_bar()


def clock(seconds: float) -> str:
    """A stage's time as its line prints it: ``9m43.2s``."""
    return f"{int(seconds // 60)}m{seconds % 60:04.1f}s"


__all__ = ["clock", "quiet_libraries"]
