"""AP-MAE learns, saves and loads; configs validate."""

from __future__ import annotations

import json

import pytest
import torch

from apmae.model.net import APMAE, APMAEConfig
from apmae.model.scaling import scale

from .conftest import causal_patterns, small_config


def test_fifty_adamw_steps_halve_the_loss_on_one_batch() -> None:
    torch.manual_seed(0)
    model = APMAE(small_config())
    images = scale(causal_patterns(8, 64, seed=1), "log_normalize")
    probe_noise = torch.rand(8, model.num_patches, generator=torch.Generator().manual_seed(5))
    optimizer = torch.optim.AdamW(model.param_groups(0.05), lr=2e-3, betas=(0.9, 0.95))
    with torch.no_grad():
        before = model.eval()(images, noise=probe_noise).loss.item()
    model.train()
    for _ in range(50):
        optimizer.zero_grad()
        model(images).loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = model.eval()(images, noise=probe_noise).loss.item()
    assert after <= 0.5 * before, f"loss went {before:.4f} -> {after:.4f}"


def test_every_parameter_gets_a_gradient() -> None:
    model = APMAE(small_config())
    model(causal_patterns(2, 64)).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


@pytest.mark.parametrize("pos_embed", ["learned", "sincos"])
def test_save_load_round_trip_is_exact(tmp_path, pos_embed: str) -> None:
    torch.manual_seed(0)
    model = APMAE(small_config(pos_embed=pos_embed, dropout=0.1))
    with torch.no_grad():  # move off the initial values so a fresh model would differ
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.save(tmp_path / "ckpt")
    assert sorted(f.name for f in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["pos_embed"] == pos_embed
    loaded = APMAE.load(tmp_path / "ckpt", map_location="cpu")
    assert loaded.config == model.config
    state, other = model.state_dict(), loaded.state_dict()
    assert state.keys() == other.keys()
    assert all(torch.equal(state[k], other[k]) for k in state)
    images, noise = causal_patterns(2, 64), torch.rand(2, model.num_patches)
    a, b = model.eval()(images, noise=noise), loaded.eval()(images, noise=noise)
    assert torch.equal(a.pred, b.pred)
    assert torch.equal(model.encode(images).cls, loaded.encode(images).cls)


def test_load_of_a_non_checkpoint_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ValueError, match="missing"):
        APMAE.load(tmp_path)


def test_presets() -> None:
    paper = APMAE.from_preset("paper")
    assert paper.config == APMAEConfig(enc_head_dim=64, dec_head_dim=64)
    assert 125e6 < paper.num_parameters() < 130e6  # ~127 M like the published checkpoints
    assert paper.num_patches == 36
    tiny = APMAEConfig.preset("tiny")
    assert (tiny.seq_len, tiny.num_patches) == (256, 36)
    assert APMAEConfig.preset("tiny", seq_len=64, patch_size=8).num_patches == 36


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(seq_len=100), "multiple of patch_size"),
        (dict(enc_heads=3), "enc_heads .* must divide enc_dim"),
        (dict(dec_heads=5), "dec_heads .* must divide dec_dim"),
        (dict(mask_ratio=0.0), "strictly between 0 and 1"),
        (dict(mask_ratio=1.0), "strictly between 0 and 1"),
        (dict(mask_ratio=0.99), "leaves no visible patch"),
        (dict(pos_embed="rope"), "pos_embed must be one of"),
        (dict(pos_embed="sincos", enc_dim=30, enc_heads=3), "divisible by 4"),
        (dict(dropout=1.0), "dropout"),
        (dict(enc_depth=0), "enc_depth must be a positive"),
        (dict(widht=3), "unknown APMAEConfig fields"),
    ],
)
def test_bad_configs_say_what_to_change(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        small_config(**overrides)


def test_unknown_preset_and_wrong_config_type() -> None:
    with pytest.raises(ValueError, match="choose one of"):
        APMAEConfig.preset("huge")
    with pytest.raises(ValueError, match="APMAEConfig"):
        APMAE({"seq_len": 64})  # type: ignore[arg-type]
