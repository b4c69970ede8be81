"""The Interventions callback under DDP on CPU: rank 0 evaluates, one MLflow run holds the sweep, no rank hangs."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from apmae.common.head_tables import write_head_table
from tests.training.test_smoke import smoke_args, smoke_paths  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_processes_log_one_sweep(smoke_args, smoke_paths, tmp_path):  # noqa: F811
    from mlflow import MlflowClient

    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"

    values = np.random.default_rng(0).normal(size=(2, 4))
    ranking = write_head_table(tmp_path / "importance.csv", {"importance": values})
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PYTHONPATH": str(ROOT)}
    args = [*smoke_args, "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
            "--trainer.max_epochs", "1",
            "--trainer.callbacks+=apmae.callbacks.interventions.Interventions",
            f"--trainer.callbacks.importance_csv={ranking}", "--trainer.callbacks.settings.random_seeds=[0]",
            f"--trainer.callbacks.output_dir={tmp_path / 'interventions'}"]
    proc = subprocess.run([sys.executable, "-m", "apmae", "fit", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("interventions [all] on ") == 1  # the key numbers, printed by rank 0 only

    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("apmae-smoke").experiment_id])
    history = client.get_metric_history(run.info.run_id, "interventions/positive/k1/accuracy")
    assert len(history) == 1  # validation 0; the fit's end saw the same ranking
    rows = list(csv.DictReader((tmp_path / "interventions" / "results.csv").open()))
    assert {(r["strategy"], r["k"]) for r in rows} == {(s, k) for s in ("positive", "negative", "neutral", "random")
                                                      for k in ("1", "2", "4", "8")}
    assert {a.path for a in client.list_artifacts(run.info.run_id, "interventions")} >= {
        "interventions/results.csv", "interventions/curve.png"}
