"""Fixtures for AP-MAE training tests: a micro LitAPMAE and CLI configs over synthetic patterns."""

from __future__ import annotations

from pathlib import Path

import pytest

# A net small enough that a CLI fit of two epochs takes a few seconds.
MICRO_NET = {"patch_size": 8, "enc_dim": 32, "enc_depth": 1, "enc_heads": 2, "enc_mlp": 64,
             "dec_dim": 32, "dec_depth": 1, "dec_heads": 2, "dec_mlp": 64}

SYNTH_CONFIG = """\
seed_everything: 0
experiment: synthetic-tests
trainer:
  max_epochs: 2
  accelerator: cpu
  devices: 1
  enable_progress_bar: false
  enable_model_summary: false
  log_every_n_steps: 1
  callbacks:
    - class_path: apmae.callbacks.pattern_figures.PatternFigures
      init_args: {num_heads: 2, grid_layers: 2, grid_heads: 2}
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {monitor: val/loss, save_last: true}
model:
  class_path: apmae.lit_models.apmae_module.LitAPMAE
  init_args:
    preset: tiny
    net_overrides: {patch_size: 8, enc_dim: 32, enc_depth: 1, enc_heads: 2, enc_mlp: 64,
                    dec_dim: 32, dec_depth: 1, dec_heads: 2, dec_mlp: 64}
    recipe:  # apmae.lit_models.training.TrainingRecipe
      lr: 2.0e-3
      warmup_fraction: 0.1
data:
  class_path: tests.training.synthetic.SyntheticAttentionDataModule
  init_args:
    seq_len: 32
    n_train: 32
    n_val: 16
    batch_size: 8
    extra_targets: [synth-b]
"""


@pytest.fixture
def synth_config(tmp_path: Path) -> Path:
    """A CLI config over the synthetic DataModule, written into tmp_path."""
    path = tmp_path / "synth.yaml"
    path.write_text(SYNTH_CONFIG)
    return path


@pytest.fixture
def tracking_uri(tmp_path: Path) -> str:
    """The MLflow store the autouse fixture of tests/conftest.py points runs at."""
    return f"sqlite:///{tmp_path}/mlflow.db"


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    """The CLI is called in-process with explicit args; pytest's own argv must not leak into it."""
    monkeypatch.setattr("sys.argv", ["apmae"])
