"""Artifacts reach every MLflow run of a trainer's loggers, and other loggers are left alone."""

from __future__ import annotations

from lightning.pytorch.loggers import CSVLogger, MLFlowLogger
from mlflow import MlflowClient

from lit_models.mlflow_runs import log_to_runs, mlflow_runs


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
