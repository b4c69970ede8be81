"""The MLflow store and the runs results are logged into: every stage's MLflow code in one place.

The store is ``$MLFLOW_TRACKING_URI`` or the project's ``sqlite:///mlruns/mlflow.db``,
with each experiment's artifacts in a folder beside the sqlite file
(``mlruns/<experiment>/<run id>/artifacts``).

Loggers are duck-typed, so this module needs no Lightning: a logger writes to an
MLflow run when it has a ``run_id`` and an ``experiment`` that is an
``mlflow.MlflowClient`` (Lightning's ``MLFlowLogger`` does; CSV and TensorBoard
loggers do not and are skipped the same way everywhere). Stages that run outside
a trainer (recurring patterns) name their run by id and tracking URI instead.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple, Optional

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
DEFAULT_EXPERIMENT = "apmae"
# The few metrics that answer a run's question, under one prefix so the UI finds them among hundreds
# (AP-MAE: reconstruction and cross-model ratios; the probe protocol: AUROCs beside their baselines).
HEADLINE = "headline/"
# MLflow 3 opens an experiment tagged so on its "Training runs" view (not the GenAI one)
EXPERIMENT_KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"


def tracking_uri() -> str:
    """The MLflow store: ``$MLFLOW_TRACKING_URI`` or the project's sqlite store."""
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)


def artifact_location(uri: str, experiment: str) -> Optional[str]:
    """Artifact folder of ``experiment`` for a sqlite store: beside the database file.

    ``sqlite:///mlruns/mlflow.db`` -> ``<abs>/mlruns/<experiment>``. Other stores
    (servers, databases) choose their own artifact location: None.
    """
    if not uri.startswith("sqlite:///"):
        return None
    folder = Path(uri[len("sqlite:///"):]).resolve().parent
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", experiment) or DEFAULT_EXPERIMENT
    return (folder / safe).as_uri()


def tag_training_experiment(client: Any, experiment_id: str) -> None:
    """Mark an experiment as one of model training runs (``client``: an ``mlflow.MlflowClient``)."""
    client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)


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


def log_to_run(run_id: str, *, tracking_uri: str | None = None, artifacts: Mapping[str, str | Path] | None = None,
               metrics: Mapping[str, float] | None = None) -> None:
    """Log files and metrics into an existing run named by id (a stage that runs without a trainer).

    Args:
        run_id: the MLflow run receiving them.
        tracking_uri: its store (None: ``$MLFLOW_TRACKING_URI``, as ``mlflow.MlflowClient`` reads it).
        artifacts: artifact path -> local file; each file lands in its artifact path's folder
            (``clusters/summary.csv`` -> folder ``clusters``; ``top.csv`` -> the run's root).
        metrics: name -> value, logged at step 0 in one batch.
    """
    # mlflow takes ~2 s to import; the duck-typed helpers above never need it
    import mlflow
    from mlflow.entities import Metric  # import cost, as above

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    for name, path in (artifacts or {}).items():
        folder = Path(name).parent
        client.log_artifact(run_id, str(path), None if folder == Path(".") else str(folder))  # "." is refused
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in sorted((metrics or {}).items())])


def download_run_artifacts(run_id: str, destination: str | Path, *, tracking_uri: str | None = None,
                           folders: Iterable[str] | None = None) -> Path:
    """Copy the artifacts of run ``run_id`` (only its top-level ``folders`` that exist, when given) into
    ``destination``; returns ``destination``."""
    import mlflow  # import cost, as above

    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    present = [a.path for a in client.list_artifacts(run_id)]
    for path in present if folders is None else [p for p in present if p in set(folders)]:
        client.download_artifacts(run_id, path, str(destination))
    return destination


class RunLocation(NamedTuple):
    """Where a logger's MLflow run is; all None for a logger without one."""

    run_id: str | None
    experiment: str | None  # the experiment's name
    tracking_uri: str | None  # the store
    artifact_uri: str | None  # the run's artifact folder


def run_location(logger: Any) -> RunLocation:
    """The :class:`RunLocation` of ``logger``'s MLflow run (Nones for no logger or one without a run)."""
    runs = mlflow_runs([logger] if logger is not None else [])
    if not runs:
        return RunLocation(None, None, None, None)
    client, run_id = runs[0]
    run = client.get_run(run_id)
    experiment = client.get_experiment(run.info.experiment_id).name
    return RunLocation(run_id, experiment, client.tracking_uri, run.info.artifact_uri)


__all__ = ["DEFAULT_EXPERIMENT", "DEFAULT_TRACKING_URI", "RunLocation", "artifact_location", "download_run_artifacts",
           "log_to_run", "log_to_runs", "mlflow_runs", "run_location", "tracking_uri"]
