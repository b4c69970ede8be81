"""DDP on CPU: two processes, sharded extraction, one MLflow run, metrics and baseline reduced over ranks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.training.test_smoke import smoke_args, smoke_paths  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_fit_with_two_cpu_processes(smoke_args, smoke_paths, tmp_path, tracking_uri):  # noqa: F811
    from mlflow import MlflowClient

    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PYTHONPATH": str(ROOT)}
    args = [*smoke_args, "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
            "--trainer.limit_train_batches", "null", "--trainer.limit_val_batches", "null"]
    proc = subprocess.run([sys.executable, "-m", "apmae", "fit", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]

    # Each rank extracted its own shard of every target's cache.
    shards = sorted(p.name for p in (tmp_path / "cache").glob("*.h5"))
    assert shards == ["target-a.rank0.h5", "target-a.rank1.h5", "target-b.rank0.h5", "target-b.rank1.h5"]

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("apmae-smoke")
    (run,) = client.search_runs([experiment.experiment_id])  # rank 1 logs nothing of its own
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    assert metrics["val/loss"] == metrics["val/target-a/mse"] > 0
    assert "val/target-b/mse_over_train" in metrics

    # Every rank trained on half the data: the step count is that of one rank.
    from apmae.datamodules.attention_cache import AttentionCacheDataModule
    from apmae.mining.settings import MiningConfig
    from apmae.datamodules.java_scenarios import JavaScenarioDataModule
    from apmae.cache.settings import ExtractionSettings

    ckpt = torch.load(next((tmp_path / "runs").rglob("last.ckpt")), map_location="cpu", weights_only=False)
    p = smoke_paths
    scen = JavaScenarioDataModule(sources=str(p["sources"]),
                                  tokenizer=str(p["target_a"]),
                                  mining=MiningConfig(seq_len=32, n_per_task=12, max_per_file=4, max_label_tokens=8,
                                                      splits=(0.6, 0.4, 0.0),
                                                      tasks=["identifiers", "closing_bracket", "eol", "keywords"]),
                                  cache_dir=str(p["scenarios"]),
                                  progress=False)
    data = AttentionCacheDataModule(target=str(p["target_a"]), scenarios=scen, cache_dir=str(p["cache"]),
                                    head_selection="layerwise:0.5", batch_size=8,
                                    extraction=ExtractionSettings(progress=False))
    data.setup("fit")
    n_train = len(data.dataset("target-a", "train"))
    per_rank = -(-n_train // 2)
    assert ckpt["global_step"] == 2 * -(-per_rank // 8)
    # The mean-pattern baseline summed both ranks' images (up to baseline_batches=4 batches each).
    assert int(ckpt["state_dict"]["baseline_images"]) == 2 * min(per_rank, 4 * 8)
