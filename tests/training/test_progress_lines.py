"""ProgressLines: plain progress lines instead of a redrawn bar."""

from __future__ import annotations

import pytest
from lightning.pytorch import Trainer
from lightning.pytorch.demos.boring_classes import BoringModel

from apmae.callbacks.progress_lines import ProgressLines


class _LoggingModel(BoringModel):
    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        self.log("train/loss", out["loss"])
        return out

    def validation_step(self, batch, batch_idx):
        loss = self.step(batch)
        self.log("val/loss", loss)
        return {"x": loss}


def test_prints_a_line_every_n_steps_and_after_validation(tmp_path, capsys):
    trainer = Trainer(max_steps=6, limit_val_batches=1, val_check_interval=3, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=tmp_path, callbacks=[ProgressLines(every_n_steps=2, name="demo")])
    trainer.fit(_LoggingModel())
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[demo]")]
    assert lines[0] == "[demo] training for 6 steps"
    steps = [line for line in lines if " step " in line and "validation" not in line]
    assert [line.split()[2] for line in steps] == ["2/6", "4/6", "6/6"]
    assert all("train/loss" in line and "steps/s" in line for line in steps)
    assert sum("validation: val/loss" in line for line in lines) == 2


def test_rejects_a_non_positive_interval():
    with pytest.raises(ValueError, match="every_n_steps=0"):
        ProgressLines(every_n_steps=0)
