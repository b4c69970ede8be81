"""Norm-based contribution weights as a second pattern kind of the cache: stored values, identity, DataModule."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import torch

from apmae.cache.store import AttentionCache, CacheMismatchError, cache_files
from apmae.encodings.store import cache_fingerprint, source_fingerprint
from apmae.cache.extract import ensure_cache, extract, target_short_name
from apmae.target.contribution import run_contributions
from apmae.datamodules.attention_cache import AttentionCacheDataModule
from apmae.cache.settings import ExtractionSettings


@pytest.fixture(scope="module")
def caches(tmp_path_factory, target, scenarios):
    out = tmp_path_factory.mktemp("kinds")
    extract(target, scenarios, out / "attention.h5", ExtractionSettings(batch_size=8, progress=False))
    extract(target, scenarios, out / "contribution.h5",
            ExtractionSettings(batch_size=8, pattern_kind="contribution", progress=False))
    return out


def test_stored_patterns_are_the_norm_based_weights_of_the_same_pass(caches, target, scenarios):
    contribution, attention = AttentionCache(caches / "contribution.h5"), AttentionCache(caches / "attention.h5")
    assert (contribution.pattern_kind, attention.pattern_kind) == ("contribution", "attention")
    rows = [0, 7, 29]
    direct = run_contributions(target, torch.from_numpy(scenarios.input_ids[rows]))  # (3, L, H, S, S)
    for k, row in enumerate(rows):
        stored = contribution.scenario(row)  # (L, H, S, S), rounded to bfloat16
        assert np.allclose(stored, direct.norm[k].numpy(), rtol=2 ** -8, atol=1e-7)
        assert np.allclose(attention.scenario(row), direct.attention[k].numpy(), rtol=2 ** -8, atol=1e-7)
        assert np.allclose(stored.sum(-1), 1.0, atol=1e-2)
        assert not np.allclose(stored, attention.scenario(row), atol=1e-2)
    for column in ("prediction", "correct", "label_ids", "scenario_index"):
        assert np.array_equal(getattr(contribution, column), getattr(attention, column))
    assert np.allclose(contribution.loss, attention.loss, rtol=1e-5)


def test_one_file_or_shard_set_never_mixes_kinds(caches, target, scenarios, tmp_path):
    with pytest.raises(CacheMismatchError, match="pattern_kind: file has 'contribution', this run 'attention'"):
        extract(target, scenarios, caches / "contribution.h5", ExtractionSettings(progress=False))
    with pytest.raises(CacheMismatchError, match="pattern_kind: file has 'contribution', this run 'attention'"):
        AttentionCache(caches / "contribution.h5", pattern_kind="attention")
    shutil.copy(caches / "attention.h5", tmp_path / "t.rank0.h5")
    shutil.copy(caches / "contribution.h5", tmp_path / "t.contribution.rank0.h5")
    with pytest.raises(CacheMismatchError, match="pattern_kind: file has 'attention', this run 'contribution'"):
        AttentionCache(str(tmp_path / "t*.h5"))  # a glob over both kinds of one model
    with pytest.raises(ValueError, match="pattern_kind='value'"):
        extract(target, scenarios, tmp_path / "other.h5", ExtractionSettings(pattern_kind="value", progress=False))
    assert not (tmp_path / "other.h5").exists()


def test_a_model_without_value_projections_fails_before_any_file(scenarios, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from apmae.target.access import wrap_model

    model = GPT2LMHeadModel(GPT2Config(vocab_size=5000, n_embd=16, n_layer=1, n_head=2, n_positions=32)).eval()
    with pytest.raises(ValueError, match="no recognised attention modules"):
        extract(wrap_model(model, name="gpt2-micro"), scenarios, tmp_path / "gpt2.h5",
                ExtractionSettings(pattern_kind="contribution", progress=False))
    assert not (tmp_path / "gpt2.h5").exists()


def test_files_without_the_attribute_hold_attention_and_keep_their_fingerprint(caches, tmp_path):
    path = tmp_path / "old.h5"
    shutil.copy(caches / "attention.h5", path)
    with h5py.File(path, "r+") as f:
        del f.attrs["pattern_kind"]
    old = AttentionCache(path, pattern_kind="attention")
    assert old.pattern_kind == "attention"
    contribution = AttentionCache(caches / "contribution.h5")
    before_kinds = source_fingerprint(old.target, str(old.attrs["scenario_fingerprint"]), old.seq_len,
                                      old.scenario_index)  # what encodings of attention caches already carry
    assert cache_fingerprint(old) == cache_fingerprint(AttentionCache(caches / "attention.h5")) == before_kinds
    assert cache_fingerprint(contribution) != before_kinds  # encodings of one kind never pass for the other


def test_ensure_cache_keeps_each_kind_under_its_own_name(target_dir, scenarios, tmp_path):
    short = target_short_name(str(target_dir))
    built = ensure_cache(str(target_dir), scenarios, tmp_path,
                         ExtractionSettings(device="cpu", batch_size=16, pattern_kind="contribution", progress=False))
    assert built.name == f"{short}.contribution"
    assert [p.name for p in built.files] == [f"{short}.contribution.rank0.h5"]
    assert built.extraction is not None and built.extraction.written == len(scenarios)
    again = ensure_cache(str(target_dir), scenarios, tmp_path,
                         ExtractionSettings(device="cpu", pattern_kind="contribution", progress=False))
    assert again.extraction is None
    assert cache_files(tmp_path, short) == []  # no attention cache was written or merged with it
    with pytest.raises(CacheMismatchError, match="pattern_kind: file has 'contribution', this run 'attention'"):
        ensure_cache(
            str(target_dir), scenarios, tmp_path, ExtractionSettings(device="cpu", progress=False), name=built.name
        )
    with pytest.raises(ValueError, match="pattern_kind='norm'"):
        ensure_cache(str(target_dir), scenarios, tmp_path, ExtractionSettings(pattern_kind="norm", progress=False),
                     name=built.name)


def test_datamodule_serves_contribution_images_from_caches_beside_the_attention_caches(
        tmp_path, target_dir, scenarios_path, caches):
    common = dict(target=str(target_dir), scenarios=str(scenarios_path), cache_dir=str(tmp_path), batch_size=4,
                  scaler="none")
    extraction = dict(device="cpu", progress=False, batch_size=16)
    name = target_short_name(str(target_dir))
    reference = {kind: AttentionCache(caches / f"{kind}.h5") for kind in ("attention", "contribution")}
    for kind in ("attention", "contribution"):
        dm = AttentionCacheDataModule(extraction=ExtractionSettings(pattern_kind=kind, **extraction), **common)
        dm.prepare_data()
        dm.setup("fit")
        assert dm.caches[name].pattern_kind == kind
        batch = next(iter(dm.val_dataloader()[0]))
        assert batch["images"].shape == (4, 1, 24, 24)
        want = [reference[kind].pattern(int(s), int(l), int(h))
                for s, l, h in zip(batch["scenario"], batch["layer"], batch["head"])]
        assert np.array_equal(batch["images"][:, 0].numpy(), np.stack(want))
    assert [p.name for p in cache_files(tmp_path, name)] == [f"{name}.rank0.h5"]
    assert [p.name for p in cache_files(tmp_path, f"{name}.contribution")] == [f"{name}.contribution.rank0.h5"]
    with pytest.raises(ValueError, match="pattern_kind='norm'"):
        AttentionCacheDataModule(extraction=ExtractionSettings(pattern_kind="norm", **extraction), **common)
