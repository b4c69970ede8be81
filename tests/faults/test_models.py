"""AP-MAE exports, Lightning checkpoints and target weights: truncated, foreign, newer or damaged files are named."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from apmae.model.export import ExportError, weights_digest
from apmae.model.loading import CheckpointError, check_checkpoint, load_encoder
from apmae.model.net import APMAE
from apmae.target.access import load_target
from tests.cache.helpers import micro_starcoder2
from tests.faults.damage import flipped, truncated

MICRO = dict(seq_len=16, patch_size=4, enc_dim=16, enc_depth=1, enc_heads=2, enc_mlp=32, dec_dim=16, dec_depth=1,
             dec_heads=2, dec_mlp=32)
REEXPORT = r"export the AP-MAE again"


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return APMAE.from_preset("tiny", **MICRO).eval()


@pytest.fixture(scope="module")
def export(net, tmp_path_factory):
    return net.save(tmp_path_factory.mktemp("export") / "apmae")


@pytest.fixture(scope="module")
def checkpoint(net, tmp_path_factory):
    """What LitAPMAE's checkpoints hold for the encoder: the net's weights under ``net.`` and its config."""
    path = tmp_path_factory.mktemp("ckpt") / "last.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                "apmae_net_config": net.config.__dict__}, path)
    return path


def copy(export, tmp_path):
    return shutil.copytree(export, tmp_path / "copy")


def test_an_export_reads_back_with_its_digest_checked(net, export):
    loaded = APMAE.load(export)
    assert weights_digest(loaded.state_dict()) == weights_digest(net.state_dict())
    assert weights_digest(load_encoder(export).state_dict()) == weights_digest(net.state_dict())


def test_a_truncated_or_foreign_weights_file_is_named(export, tmp_path):
    bad = copy(export, tmp_path)
    truncated(export / "model.safetensors", bad / "model.safetensors", 0.5)
    with pytest.raises(ExportError, match=rf"weights {bad / 'model.safetensors'} are truncated or not a safetensors "
                                          rf"file .*{REEXPORT}"):
        APMAE.load(bad)
    (bad / "model.safetensors").write_bytes(b"\0" * 100)
    with pytest.raises(ExportError, match="truncated or not a safetensors file"):
        APMAE.load(bad)
    save_file({"x": torch.zeros(3)}, str(bad / "model.safetensors"))
    with pytest.raises(ExportError, match=rf"do not fit its config.json \(\d+ missing \['cls_token', .*; 1 unexpected "
                                          rf"\['x'\]\); {REEXPORT}"):
        APMAE.load(bad)


def test_a_damaged_tensor_fails_the_recorded_digest(export, tmp_path):
    """safetensors checks nothing inside a tensor: the export's sha256 does."""
    bad = copy(export, tmp_path)
    weights = export / "model.safetensors"
    flipped(weights, bad / "model.safetensors", at=weights.stat().st_size - 64, n=4)
    with pytest.raises(ExportError, match=rf"are damaged: their sha256 differs .*{REEXPORT}"):
        APMAE.load(bad)


def test_a_damaged_config_or_one_of_a_newer_apmae_is_named(export, tmp_path):
    bad = copy(export, tmp_path)
    truncated(export / "config.json", bad / "config.json", 0.5)
    with pytest.raises(ExportError, match=rf"config {bad / 'config.json'} is truncated or not JSON .*{REEXPORT}"):
        APMAE.load(bad)
    config = json.loads((export / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "rope": True}))
    with pytest.raises(ExportError, match=r"unknown APMAEConfig fields \['rope'\].*a newer apmae may have written it"):
        APMAE.load(bad)
    (bad / "config.json").write_text("[1, 2]")
    with pytest.raises(ExportError, match="holds a list, not a JSON object"):
        APMAE.load(bad)


def test_weights_of_a_newer_export_format_are_refused(export, tmp_path):
    bad = copy(export, tmp_path)
    state = APMAE.load(export).state_dict()
    save_file(state, str(bad / "model.safetensors"), metadata={"format": "pt", "apmae_export_version": "2"})
    with pytest.raises(ExportError, match="export format 2, this apmae reads 1: a newer apmae wrote them"):
        APMAE.load(bad)


def test_exports_written_before_the_digest_still_load(net, export, tmp_path):
    old = copy(export, tmp_path)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(old / "model.safetensors"),
              metadata={"format": "pt"})
    assert weights_digest(APMAE.load(old).state_dict()) == weights_digest(net.state_dict())


def test_a_truncated_or_damaged_checkpoint_is_named(net, checkpoint, tmp_path):
    assert weights_digest(load_encoder(checkpoint).state_dict()) == weights_digest(net.state_dict())
    redo = r"use another checkpoint of the run \(last.ckpt, an epoch's\) or train again"
    for fraction in (0.1, 0.5, 0.99):
        cut = truncated(checkpoint, tmp_path / "cut.ckpt", fraction)
        with pytest.raises(CheckpointError, match=rf"checkpoint {cut} is not a readable torch checkpoint .*{redo}"):
            load_encoder(cut)
    # torch.load itself reads this file without complaint and returns a changed weight
    damaged = flipped(checkpoint, tmp_path / "damaged.ckpt", at=checkpoint.stat().st_size // 2, n=32)
    with pytest.raises(CheckpointError, match=rf"is damaged: its member .* fails its CRC-32; .*{redo}"):
        check_checkpoint(damaged)


def test_a_foreign_checkpoint_or_one_of_a_newer_apmae_is_named(net, tmp_path):
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="is not a readable torch checkpoint"):
        load_encoder(tmp_path / "text.ckpt")
    torch.save({"state_dict": {"layer.weight": torch.zeros(2)}}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="holds no AP-MAE net; give a LitAPMAE checkpoint"):
        load_encoder(tmp_path / "other.ckpt")
    torch.save([1, 2], tmp_path / "list.ckpt")
    with pytest.raises(CheckpointError, match="holds a list, not a Lightning checkpoint"):
        load_encoder(tmp_path / "list.ckpt")
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                "apmae_net_config": {**net.config.__dict__, "rope": True}}, tmp_path / "newer.ckpt")
    with pytest.raises(CheckpointError, match=r"cannot build \(unknown APMAEConfig fields \['rope'\].*a newer apmae"):
        load_encoder(tmp_path / "newer.ckpt")
    with pytest.raises(CheckpointError, match="does not exist"):
        check_checkpoint(tmp_path / "missing.ckpt")


@pytest.fixture(scope="module")
def target_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("target") / "micro"
    micro_starcoder2(100).save_pretrained(path)
    return path


def test_damaged_target_weights_or_config_are_named(target_dir, tmp_path):
    bad = shutil.copytree(target_dir, tmp_path / "bad")
    weights = target_dir / "model.safetensors"
    again = "download or save the model again"
    truncated(weights, bad / "model.safetensors", 0.5)
    with pytest.raises(ValueError, match=rf"cannot load target model .*incomplete metadata.*{again}"):
        load_target(bad, device="cpu")
    flipped(weights, bad / "model.safetensors", at=0, n=8)
    with pytest.raises(ValueError, match=rf"cannot load target model .*deserializing header.*{again}"):
        load_target(bad, device="cpu")
    shutil.copy(weights, bad / "model.safetensors")
    truncated(target_dir / "config.json", bad / "config.json", 0.5)
    with pytest.raises(ValueError, match=rf"cannot load target model .*not a valid JSON file.*{again}"):
        load_target(bad, device="cpu")
    config = json.loads((target_dir / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "model_type": "starcoder9"}))
    with pytest.raises(ValueError, match="model type `starcoder9` but Transformers does not recognize"):
        load_target(bad, device="cpu")


def test_target_weights_of_another_model_are_refused_not_left_random(target_dir, tmp_path):
    """transformers only warns and initialises the missing parameters at random."""
    bad = shutil.copytree(target_dir, tmp_path / "bad")
    save_file({"x": torch.zeros(3)}, str(bad / "model.safetensors"))
    with pytest.raises(ValueError, match=r"has no weights for \d+ parameters .*belongs to another model or is "
                                         "incomplete"):
        load_target(bad, device="cpu")
    with pytest.raises(ValueError, match="does not exist; give a model directory"):
        load_target(tmp_path / "missing", device="cpu")
