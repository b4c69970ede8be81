"""PatternFigures: what each panel shows, which heads are chosen, when figures are logged."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer

from apmae.model.net import APMAE, APMAEConfig, masked_error
from apmae.callbacks.pattern_figures import PatternFigures, reconstruct_for_figures
from apmae.lit_models.apmae_module import LitAPMAE
from tests.training.conftest import MICRO_NET
from tests.training.synthetic import SyntheticAttentionDataModule, causal_patterns


def test_panels_split_visible_and_masked_patches():
    net = APMAE(APMAEConfig.preset("tiny", seq_len=32, **MICRO_NET)).eval()
    images = causal_patterns(3, 32, seed=1)["images"]
    noise = torch.rand(3, net.num_patches, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        rec = reconstruct_for_figures(net, images, noise)
        out = net(images, noise=noise)
        combined = net.reconstruct(images, out)
    # 4x4 grid: 10 triangular patches, half masked; never an upper-triangle patch.
    assert rec.masked_patches.shape == (3, 4, 4)
    assert rec.masked_patches.sum((1, 2)).tolist() == [5, 5, 5]
    assert not torch.triu(rec.masked_patches.int(), diagonal=1).any()
    assert torch.equal(rec.combined, combined)
    cover = rec.masked_patches.repeat_interleave(8, 1).repeat_interleave(8, 2).unsqueeze(1)  # (B, 1, S, S)
    assert torch.equal(rec.visible, images * ~cover)
    assert torch.equal(rec.predicted * ~cover, torch.zeros_like(images))
    assert torch.equal(rec.combined * ~cover, images * ~cover)
    for i in range(3):
        err = masked_error(out.pred[i:i + 1], out.patches[i:i + 1], out.mask[i:i + 1], out.valid)
        assert torch.allclose(rec.mse[i], err.mse, rtol=1e-6)


def test_head_selection_spreads_over_layers():
    callback = PatternFigures(num_heads=3, grid_layers=2, grid_heads=2)
    callback._pool = {(layer, head): _sample(layer, head) for layer in range(4) for head in range(3)}
    assert [(s.layer, s.head) for s in callback.selected_heads()] == [(0, 0), (1, 0), (2, 0)]
    rows = callback.grid_samples()
    assert [[(s.layer, s.head) for s in row] for row in rows] == [[(0, 0), (0, 1)], [(2, 0), (2, 1)]]


def _sample(layer: int, head: int):
    from apmae.callbacks.pattern_figures import HeadSample

    return HeadSample(torch.zeros(1, 8, 8), layer, head, 0)


def test_figures_are_written_every_n_validation_epochs(tmp_path):
    callback = PatternFigures(every_n_epochs=2, num_heads=2, grid_layers=2, grid_heads=1)
    data = SyntheticAttentionDataModule(seq_len=32, n_train=16, n_val=16, batch_size=8)
    trainer = Trainer(accelerator="cpu", devices=1, max_epochs=3, logger=False, enable_progress_bar=False,
                      enable_checkpointing=False, enable_model_summary=False, default_root_dir=tmp_path,
                      callbacks=[callback])
    trainer.fit(LitAPMAE(seq_len=32, net_overrides=dict(MICRO_NET)), datamodule=data)
    # Epochs 0 and 2 (not 1, not the sanity check): 2 head figures + 1 grid each.
    expected = {f"figures/epoch_{e:04d}/{name}" for e in (0, 2) for name in ("grid.png",)}
    assert expected <= set(callback.logged) and len(callback.logged) == 6
    heads = [p for p in callback.logged if "head_L" in p and "epoch_0000" in p]
    assert len({p.split("head_")[1].split("_")[0] for p in heads}) == 2  # two different layers
    for path in callback.logged:  # without an MLflow logger they land under default_root_dir
        assert (tmp_path / path).stat().st_size > 1000


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="every_n_epochs"):
        PatternFigures(every_n_epochs=0)
