"""JavaScenarioDataModule: mines once into a keyed cache file, then serves per-split batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apmae.mining.scenario_set import ScenarioSet
from apmae.mining.settings import MiningConfig
from apmae.datamodules import java_scenarios
from apmae.datamodules.java_scenarios import JavaScenarioDataModule


MINING = dict(tasks=["identifiers", "eol", "noise"], seq_len=64, n_per_task=8, max_per_file=2, splits=(0.6, 0.2, 0.2),
              seed=0)


def _dm(java_dir, tokenizer_dir, cache_dir, mining=None, **kw):
    """The DataModule over the test corpus; ``mining`` entries replace the test's mining settings."""
    args = dict(
        sources=str(java_dir),
        tokenizer=str(tokenizer_dir),
        mining=MiningConfig(**{**MINING, **(mining or {})}),
        batch_size=4,
        cache_dir=str(cache_dir),
        progress=False,
    )
    return JavaScenarioDataModule(**{**args, **kw})


def test_mines_once_and_reuses_the_cache(java_dir, tokenizer_dir, tmp_path, monkeypatch):
    dm = _dm(java_dir, tokenizer_dir, tmp_path / "cache")
    assert dm.seq_len == 64
    path = dm.scenario_path
    assert path.parent == tmp_path / "cache" and path.name.startswith("scenarios-") and not path.exists()
    dm.prepare_data()
    assert path.exists() and not list(path.parent.glob("*.tmp*"))
    mined = ScenarioSet.load(path)
    assert mined.meta["tokenizer"] and "mining_report" in mined.meta

    def fail(*args, **kwargs):
        raise AssertionError("mined again although the cache file exists")

    monkeypatch.setattr(java_scenarios, "mine_scenarios", fail)
    again = _dm(java_dir, tokenizer_dir, tmp_path / "cache")
    assert again.scenario_path == path
    assert again.scenario_set().fingerprint() == mined.fingerprint()
    assert (
        _dm(java_dir, tokenizer_dir, tmp_path / "cache", mining={"seed": 1}).scenario_path != path
    )  # inputs change the key


def test_batches(java_dir, tokenizer_dir, tmp_path):
    dm = _dm(java_dir, tokenizer_dir, tmp_path / "cache")
    dm.setup("fit")
    sc = dm.scenario_set()
    seen = []
    for split, loader in (("train", dm.train_dataloader()), ("val", dm.val_dataloader()),
                          ("test", dm.test_dataloader())):
        for batch in loader:
            b = len(batch["index"])
            assert batch["input_ids"].shape == (b, 64) and batch["input_ids"].dtype == torch.long
            assert batch["label_ids"].shape == batch["label_mask"].shape == (b, sc.label_ids.shape[1])
            assert batch["label_mask"].dtype == torch.bool
            rows = batch["index"].numpy()
            assert (sc.split[rows] == ["train", "val", "test"].index(split)).all()
            np.testing.assert_array_equal(batch["input_ids"].numpy(), sc.input_ids[rows])
            np.testing.assert_array_equal(batch["label_mask"].sum(1).numpy(), sc.label_len[rows])
            np.testing.assert_array_equal(batch["task"].numpy(), sc.task[rows])
            for src, row in zip(batch["source"].tolist(), rows):
                assert (dm.source_ids[src] if src >= 0 else "") == sc.source_id[row]
            seen += rows.tolist()
    assert sorted(seen) == list(range(len(sc)))  # every scenario in exactly one split


def test_bad_arguments_fail_early(java_dir, tokenizer_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown task"):
        _dm(java_dir, tokenizer_dir, tmp_path, mining={"tasks": ["identifier"]})
    with pytest.raises(ValueError, match="batch_size"):
        _dm(java_dir, tokenizer_dir, tmp_path, batch_size=0)


def test_the_mining_settings_come_whole_as_an_object_or_a_dict_and_flat_ones_are_named(java_dir, tokenizer_dir,
                                                                                      tmp_path):
    as_object = _dm(java_dir, tokenizer_dir, tmp_path)
    as_dict = JavaScenarioDataModule(sources=str(java_dir), tokenizer=str(tokenizer_dir), mining=dict(MINING),
                                     cache_dir=str(tmp_path))
    assert as_dict.mining == as_object.mining and as_dict.scenario_path == as_object.scenario_path
    assert as_object.seq_len == 64 and as_object.prompt_format == "fim"
    with pytest.raises(TypeError, match=r"pass mining=MiningConfig\(seq_len=64\)"):
        JavaScenarioDataModule(sources=str(java_dir), tokenizer=str(tokenizer_dir), seq_len=64)
    with pytest.raises(TypeError, match="not MiningConfig fields"):
        JavaScenarioDataModule(sources=str(java_dir), tokenizer=str(tokenizer_dir), mining={"seqlen": 64})
    with pytest.raises(ValueError, match="mining.splits"):
        MiningConfig(splits=(0.5, 0.5, 0.5))


def test_the_cache_key_of_default_settings_did_not_move_and_new_settings_join_it(java_dir, tokenizer_dir, tmp_path):
    from apmae.mining.settings import DEFAULTS

    dm = _dm(java_dir, tokenizer_dir, tmp_path)
    inputs = dm.mining.key_inputs()
    # the keys sets were stored under before the settings were gathered: exactly these inputs
    assert set(inputs) == {"seq_len", "n_per_task", "proportions", "max_per_file", "max_label_tokens", "splits",
                           "seed", "pad", "max_files", "prompt_format"}
    assert inputs["max_label_tokens"] == DEFAULTS.max_label_tokens == 32
    exhaustive = _dm(java_dir, tokenizer_dir, tmp_path, mining={"exhaustive": True})
    assert exhaustive.mining.key_inputs()["exhaustive"] is True
    assert exhaustive.scenario_path != dm.scenario_path  # it changes which files are read: a new set
