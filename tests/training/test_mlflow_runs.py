"""apmae.common.tracking: the store, a trainer's MLflow runs, and logging into a run named by id."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, MLFlowLogger
from mlflow import MlflowClient

from apmae.common.tracking import (DEFAULT_TRACKING_URI, artifact_location, log_to_run, log_to_runs, mlflow_runs,
                                   tracking_uri)

ROOT = Path(__file__).resolve().parents[2]


def test_files_and_directories_land_in_the_mlflow_run_only(tmp_path, tracking_uri):
    mlflow_logger = MLFlowLogger(experiment_name="artifacts", tracking_uri=tracking_uri)
    loggers = [CSVLogger(tmp_path / "csv"), mlflow_logger]
    assert [run_id for _, run_id in mlflow_runs(loggers)] == [mlflow_logger.run_id]
    (tmp_path / "table.csv").write_text("layer,head,importance\n0,0,1.0\n")
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "config.json").write_text("{}")
    runs = log_to_runs(loggers, [tmp_path / "table.csv", tmp_path / "net"], "out")
    assert [run_id for _, run_id in runs] == [mlflow_logger.run_id]
    client = MlflowClient(tracking_uri)
    assert {a.path for a in client.list_artifacts(mlflow_logger.run_id, "out")} == {"out/table.csv", "out/config.json"}
    assert log_to_runs([CSVLogger(tmp_path / "csv2")], [tmp_path / "table.csv"], "out") == []


def test_a_run_named_by_id_receives_files_in_their_folders_and_metrics(tmp_path, tracking_uri):
    client = MlflowClient(tracking_uri)
    run_id = client.create_run(client.create_experiment("by-id")).info.run_id
    (tmp_path / "summary.csv").write_text("layer,head\n")
    (tmp_path / "top.csv").write_text("x\n")
    log_to_run(run_id, tracking_uri=tracking_uri, metrics={"clusters/mean_families": 2.5, "n": 3},
               artifacts={"clusters/summary.csv": tmp_path / "summary.csv", "top.csv": tmp_path / "top.csv"})
    assert {a.path for a in client.list_artifacts(run_id, "clusters")} == {"clusters/summary.csv"}
    assert "top.csv" in {a.path for a in client.list_artifacts(run_id)}
    assert client.get_run(run_id).data.metrics == {"clusters/mean_families": 2.5, "n": 3.0}


def test_store_and_artifact_location(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking_uri() == DEFAULT_TRACKING_URI == "sqlite:///mlruns/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri() == "http://127.0.0.1:5000"
    assert artifact_location(f"sqlite:///{tmp_path}/mlflow.db", "demo probe/1") == (tmp_path / "demo_probe_1").as_uri()
    assert artifact_location("http://127.0.0.1:5000", "demo") is None  # a server chooses its own


def test_tracking_needs_neither_lightning_nor_mlflow_to_import():
    code = "import sys, apmae.common.tracking; print(sorted(m for m in ('lightning', 'mlflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
