"""The MLflow runs a trainer's loggers write to, and logging files into them.

Every module and callback that writes artifacts (exported nets, head tables,
figures, intervention curves) finds its runs here, so a logger without an
MLflow run (none, CSV, TensorBoard) is skipped the same way everywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable


def mlflow_runs(loggers: Iterable[Any]) -> list[tuple[Any, str]]:
    """``(MlflowClient, run id)`` of every logger that writes to an MLflow run."""
    runs = []
    for logger in loggers:
        run_id = getattr(logger, "run_id", None)  # checked first: other loggers build their experiment on access
        if run_id and hasattr(logger.experiment, "log_artifact"):
            runs.append((logger.experiment, run_id))
    return runs


def log_to_runs(loggers: Iterable[Any], paths: Iterable[str | Path], folder: str) -> list[tuple[Any, str]]:
    """Log each file (or directory's contents) in ``paths`` under ``folder`` of every MLflow run; returns the runs."""
    runs = mlflow_runs(loggers)
    paths = [Path(p) for p in paths]
    for client, run_id in runs:
        for path in paths:
            (client.log_artifacts if path.is_dir() else client.log_artifact)(run_id, str(path), folder)
    return runs
