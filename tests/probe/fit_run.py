"""One small probe fit with checkpoints, run the same way by a test and by a child process it kills.

``python -m tests.probe.fit_run <root> <out>`` fits with ``last.ckpt`` saved each epoch and prints
each finished epoch's number; the test SIGKILLs it and resumes in-process with :func:`fit`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from apmae.lit_models.training import TrainingRecipe
from apmae.model.net import APMAE
from apmae.callbacks.resumable_rng import ResumableRNG
from apmae.datamodules.attention_cache import AttentionCacheDataModule
from apmae.cache.settings import ExtractionSettings
from apmae.encodings.settings import EncoderSettings
from apmae.lit_models.probe_module import LitProbe
from tests.probe.synthetic_cache import write_planted_cache

EPOCHS = 6
MICRO = dict(seq_len=32, patch_size=8, enc_dim=32, enc_depth=1, enc_heads=2, enc_mlp=64, dec_dim=32, dec_depth=1,
             dec_heads=2, dec_mlp=64)


def prepare(root: Path) -> None:
    """A planted cache, a random encoder and its encodings under ``root`` (so no fit computes them)."""
    write_planted_cache(root / "cache", n=120)
    torch.manual_seed(0)
    APMAE.from_preset("tiny", **MICRO).save(root / "encoder")
    data(root).prepare_data()


def data(root: Path) -> AttentionCacheDataModule:
    return AttentionCacheDataModule(
        target="synth", scenarios=str(root / "cache" / "synth-scenarios.npz"), cache_dir=str(root / "cache"),
        mode="scenarios", balance=True, batch_size=16, encoder=EncoderSettings(path=str(root / "encoder")),
        extraction=ExtractionSettings(progress=False))


class PrintEpochs(L.Callback):
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        print(trainer.current_epoch, flush=True)


def fit(root: Path, out: Path, *, ckpt_path: str | None = None, callbacks: tuple = ()) -> LitProbe:
    """Seeded fit of EPOCHS epochs, probe dropout on (the generators matter), ``last.ckpt`` in ``out``."""
    torch.set_num_threads(1)
    L.seed_everything(0)
    model = LitProbe(
        seq_len=32, encoder=str(root / "encoder"), probe_dropout=0.2, importance_steps=2, recipe=TrainingRecipe(lr=1e-2)
    )
    trainer = L.Trainer(max_epochs=EPOCHS, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=out,
                        callbacks=[ModelCheckpoint(dirpath=out, save_last=True), ResumableRNG(), *callbacks])
    trainer.fit(model, datamodule=data(root), ckpt_path=ckpt_path)
    return model


if __name__ == "__main__":
    fit(Path(sys.argv[1]), Path(sys.argv[2]), callbacks=(PrintEpochs(),))
