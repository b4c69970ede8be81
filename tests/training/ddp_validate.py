"""Validate one checkpoint in one process or in several CPU processes (DDP, gloo); rank zero writes the metrics.

``python -m tests.training.ddp_validate <apmae|probe> <root> <devices> <out.json>``: the checkpoint and
data are those :func:`prepare` wrote under ``root``, so a one-process and a three-process
validation see the same weights, baseline, reference features and scenarios.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from apmae.lit_models.training import TrainingRecipe
from apmae.lit_models.apmae_module import LitAPMAE
from apmae.lit_models.probe_module import LitProbe
from tests.probe import fit_run
from tests.training.conftest import MICRO_NET
from tests.training.synthetic import SyntheticAttentionDataModule

N_VAL = 13  # images per validation target: 5, 4 and 4 on three ranks


def apmae_parts(root: Path) -> tuple[L.LightningModule, L.LightningDataModule]:
    data = SyntheticAttentionDataModule(seq_len=32, n_train=16, n_val=N_VAL, batch_size=4, extra_targets=["synth-b"])
    return LitAPMAE(seq_len=32, net_overrides=dict(MICRO_NET)), data


def probe_parts(root: Path) -> tuple[L.LightningModule, L.LightningDataModule]:
    return LitProbe(
        seq_len=32, encoder=str(root / "encoder"), importance_steps=2, recipe=TrainingRecipe(lr=1e-2)
    ), fit_run.data(root)


PARTS = {"apmae": apmae_parts, "probe": probe_parts}


def trainer(root: Path, devices: int, **kwargs) -> L.Trainer:
    strategy = {"strategy": "ddp", "devices": devices} if devices > 1 else {"devices": 1}
    return L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                     num_sanity_val_steps=0, default_root_dir=root, **strategy, **kwargs)


def prepare(kind: str, root: Path) -> Path:
    """A short single-process fit of ``kind`` under ``root``; returns its last checkpoint."""
    torch.set_num_threads(1)
    if kind == "probe":
        fit_run.prepare(root)
    L.seed_everything(0)
    module, data = PARTS[kind](root)
    out = root / f"{kind}-fit"
    trainer(out, 1, max_epochs=2, callbacks=[ModelCheckpoint(dirpath=out, save_last=True)]).fit(module, datamodule=data)
    return out / "last.ckpt"


def validate(kind: str, root: Path, devices: int) -> dict[str, float] | None:
    """Every metric of validating ``kind``'s checkpoint on ``devices`` processes (None on ranks other than 0)."""
    torch.set_num_threads(1)
    module, data = PARTS[kind](root)
    run = trainer(root / f"{kind}-validate-{devices}", devices)
    run.validate(module, datamodule=data, ckpt_path=str(root / f"{kind}-fit" / "last.ckpt"), verbose=False)
    return {name: float(value) for name, value in run.callback_metrics.items()} if run.is_global_zero else None


if __name__ == "__main__":
    kind, root, devices, out = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
    metrics = validate(kind, root, devices)
    if metrics is not None:
        out.write_text(json.dumps(metrics, indent=1))
