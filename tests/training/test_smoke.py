"""The real chain on a micro scale through the CLI: mine -> extract -> train -> MLflow -> validate."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from apmae.cli import cli_main
from tests.cache.helpers import micro_starcoder2, save_target
from tests.conftest import JAVA_SNIPPETS

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"


def _java_sources(folder: Path, copies: int = 6) -> Path:
    """A few Java files (snippets with distinct packages, so every file is a different source)."""
    folder.mkdir()
    for i in range(copies):
        for j, text in enumerate(JAVA_SNIPPETS):
            (folder / f"F{i}_{j}.java").write_text(text.replace("package demo.", f"package demo{i}."))
    return folder


@pytest.fixture
def smoke_paths(tmp_path, tiny_tokenizer) -> dict[str, Path]:
    """Micro targets a and b (random StarCoder2, different seeds) and Java sources in tmp_path."""
    return {
        "target_a": save_target(micro_starcoder2(len(tiny_tokenizer), seed=0), tiny_tokenizer, tmp_path / "target-a"),
        "target_b": save_target(micro_starcoder2(len(tiny_tokenizer), seed=1), tiny_tokenizer, tmp_path / "target-b"),
        "sources": _java_sources(tmp_path / "src"),
        "cache": tmp_path / "cache",
        "scenarios": tmp_path / "scenarios",
        "runs": tmp_path / "runs",
    }


@pytest.fixture
def smoke_args(smoke_paths) -> list[str]:
    """CLI overrides pointing configs/smoke.yaml at the micro targets and sources."""
    p = smoke_paths
    return [
        "--config", str(SMOKE),
        "--trainer.default_root_dir", str(p["runs"]),
        "--data.init_args.target", str(p["target_a"]),
        "--data.init_args.extra_targets", f"[{p['target_b']}]",
        "--data.init_args.cache_dir", str(p["cache"]),
        "--data.init_args.scenarios.init_args.sources", str(p["sources"]),
        "--data.init_args.scenarios.init_args.tokenizer", str(p["target_a"]),
        "--data.init_args.scenarios.init_args.cache_dir", str(p["scenarios"]),
    ]


def test_smoke_config_runs_the_real_chain_into_mlflow(smoke_args, smoke_paths, tmp_path, tracking_uri):
    from mlflow import MlflowClient

    cli = cli_main(["fit", *smoke_args])
    data = cli.datamodule
    assert data.val_target_names == ["target-a", "target-b"]
    assert cli.model.net.config.seq_len == 32 == data.seq_len  # linked from the scenarios
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["target-a.rank0.h5", "target-b.rank0.h5"]

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("apmae-smoke")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "target-a/smoke"  # <target>/<variant>: the config's name alone hid the target
    assert run.data.tags["apmae.target"] == "target-a" and run.data.tags["apmae.variant"] == "smoke"
    params, metrics = run.data.params, run.data.metrics
    assert params["data.init_args.target"] == str(smoke_paths["target_a"])
    assert params["data.init_args.scenarios.init_args.mining.seq_len"] == "32"
    for name in ("target-a", "target-b"):
        assert metrics[f"val/{name}/mse"] > 0 and metrics[f"val/{name}/baseline_mse"] > 0
        assert metrics[f"val/{name}/mse_over_baseline"] == pytest.approx(
            metrics[f"val/{name}/mse"] / metrics[f"val/{name}/baseline_mse"], rel=1e-5)
    assert metrics["val/target-b/mse_over_train"] == pytest.approx(
        metrics["val/target-b/mse"] / metrics["val/target-a/mse"], rel=1e-5)
    assert metrics["val/loss"] == metrics["val/target-a/mse"]

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "figures", "apmae_net"} <= artifacts
    figures = {a.path for a in client.list_artifacts(run.info.run_id, "figures/epoch_0001")}
    assert "figures/epoch_0001/grid.png" in figures and len(figures) == 3
    logged = yaml.safe_load(Path(client.download_artifacts(run.info.run_id, "config.yaml")).read_text())
    assert logged["model"]["init_args"]["seq_len"] == 32

    ckpt = cli.trainer.checkpoint_callback.last_model_path
    again = cli_main(["validate", *smoke_args, "--ckpt_path", ckpt])
    assert float(again.trainer.callback_metrics["val/loss"]) == pytest.approx(metrics["val/loss"], rel=1e-5)
