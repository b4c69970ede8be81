"""bfloat16 asked of a CPU that emulates it: a warning with the measured cost and the fp32 setting, nothing changed."""

from __future__ import annotations

import warnings

import pytest
import torch
from lightning.pytorch import Trainer

from apmae.common import precision
from apmae.target.access import load_target
from tests.cache.helpers import micro_starcoder2, save_target


@pytest.fixture
def emulated(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)


def test_the_warning_names_the_cost_and_the_fp32_setting(emulated):
    with pytest.warns(UserWarning, match=r"3.1 images/s under bf16-mixed against 12.1 in fp32\. Use X on this"):
        assert precision.warn_emulated_bf16("a run", "X")


def test_a_cpu_with_native_bf16_gets_no_warning(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not precision.warn_emulated_bf16("a run", "X")


def test_a_bf16_target_on_the_cpu_is_warned_about_and_still_loads(emulated, tmp_path, tiny_tokenizer):
    path = save_target(micro_starcoder2(len(tiny_tokenizer)), tiny_tokenizer, tmp_path / "target")
    with pytest.warns(UserWarning, match=r"target .* \(dtype bfloat16\) runs bfloat16 .*Use dtype float32"):
        target = load_target(str(path), dtype="bfloat16", device="cpu")
    assert next(target.model.parameters()).dtype == torch.bfloat16  # asked for, so given


def test_a_bf16_mixed_fit_on_the_cpu_is_warned_about(emulated, tmp_path):
    from apmae.lit_models.apmae_module import LitAPMAE
    from tests.training.conftest import MICRO_NET
    from tests.training.synthetic import SyntheticAttentionDataModule

    trainer = Trainer(accelerator="cpu", devices=1, precision="bf16-mixed", max_steps=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      limit_val_batches=0, default_root_dir=tmp_path)
    module = LitAPMAE(seq_len=32, net_overrides=dict(MICRO_NET), recipe={"export_dir": str(tmp_path / "net")})
    with pytest.warns(UserWarning, match=r"LitAPMAE \(trainer.precision=bf16-mixed\) .*--trainer.precision 32"):
        trainer.fit(module, datamodule=SyntheticAttentionDataModule(seq_len=32, n_train=8, n_val=4, batch_size=4))
