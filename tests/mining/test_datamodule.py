"""JavaScenarioDataModule: mines once into a keyed cache file, then serves per-split batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apmae.mining.scenario_set import ScenarioSet
from datamodules import java_scenarios
from datamodules.java_scenarios import JavaScenarioDataModule


def _dm(java_dir, tokenizer_dir, cache_dir, **kw):
    args = dict(sources=str(java_dir), tokenizer=str(tokenizer_dir), tasks=["identifiers", "eol", "noise"],
                seq_len=64, n_per_task=8, max_per_file=2, splits=(0.6, 0.2, 0.2), seed=0, batch_size=4,
                cache_dir=str(cache_dir), progress=False)
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
    assert _dm(java_dir, tokenizer_dir, tmp_path / "cache", seed=1).scenario_path != path  # inputs change the key


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
        _dm(java_dir, tokenizer_dir, tmp_path, tasks=["identifier"])
    with pytest.raises(ValueError, match="batch_size"):
        _dm(java_dir, tokenizer_dir, tmp_path, batch_size=0)
