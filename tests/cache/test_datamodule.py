"""AttentionCacheDataModule: building, splits, head selection, modes, filters, workers, extra targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apmae.mining.settings import MiningConfig
from apmae.cache.store import cache_files
from apmae.model.scaling import scale
from apmae.mining.scenario_set import SPLITS
from apmae.datamodules.attention_cache import AttentionCacheDataModule, HeadSelection, target_short_name
from apmae.cache.settings import ExtractionSettings

CPU = ExtractionSettings(device="cpu", progress=False)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory, target_dir, target_b_dir, scenarios_path):
    """Caches of both targets, built once through prepare_data."""
    out = tmp_path_factory.mktemp("caches")
    dm = AttentionCacheDataModule(target=str(target_dir), scenarios=str(scenarios_path), cache_dir=str(out),
                                  extra_targets=[str(target_b_dir)], extraction=CPU)
    dm.prepare_data()
    return out


def _dm(cache_dir, target_dir, scenarios_path, **kwargs) -> AttentionCacheDataModule:
    dm = AttentionCacheDataModule(target=str(target_dir), scenarios=str(scenarios_path), cache_dir=str(cache_dir),
                                  extraction=CPU, **kwargs)
    dm.setup("fit")
    return dm


def _all(loader) -> dict[str, torch.Tensor]:
    batches = list(loader)
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


def test_prepare_data_builds_one_cache_per_target_and_is_then_a_no_op(cache_dir, target_dir, target_b_dir,
                                                                     scenarios_path):
    names = [target_short_name(str(target_dir)), target_short_name(str(target_b_dir))]
    files = [cache_files(cache_dir, n) for n in names]
    assert [len(f) for f in files] == [1, 1]
    mtimes = [f[0].stat().st_mtime_ns for f in files]
    dm = AttentionCacheDataModule(target=str(target_dir), scenarios=str(scenarios_path), cache_dir=str(cache_dir),
                                  extra_targets=[str(target_b_dir)], extraction=CPU)
    dm.prepare_data()
    assert [f[0].stat().st_mtime_ns for f in files] == mtimes
    assert dm.seq_len == 24 and dm.val_target_names == names and dm.train_target_name == names[0]


def test_head_batches_are_scaled_patterns_with_their_labels(cache_dir, target_dir, scenarios_path, scenarios):
    dm = _dm(cache_dir, target_dir, scenarios_path, batch_size=5)
    batch = next(iter(dm.val_dataloader()[0]))
    assert batch["images"].shape == (5, 1, 24, 24) and batch["images"].dtype == torch.float32
    assert all(batch[k].dtype == torch.long for k in ("scenario", "layer", "head", "task"))
    assert batch["correct"].dtype == torch.bool
    cache = dm.caches[dm.train_target_name]
    for j in range(5):
        s, layer, head = (int(batch[k][j]) for k in ("scenario", "layer", "head"))
        row = int(np.flatnonzero(cache.scenario_index == s)[0])
        raw = torch.from_numpy(cache.pattern(row, layer, head))[None]
        torch.testing.assert_close(batch["images"][j], scale(raw, "log_normalize"), rtol=0, atol=0)
        assert batch["task"][j] == scenarios.task[s] and batch["correct"][j] == bool(cache.correct[row])


def test_splits_follow_the_scenario_splits(cache_dir, target_dir, scenarios_path, scenarios):
    dm = _dm(cache_dir, target_dir, scenarios_path, batch_size=64)
    seen = {}
    for split, loader in [("train", dm.train_dataloader()), ("val", dm.val_dataloader()[0]),
                          ("test", dm.test_dataloader()[0])]:
        ids = np.unique(_all(loader)["scenario"].numpy())
        np.testing.assert_array_equal(ids, scenarios.split_indices(split))
        seen[split] = set(scenarios.source_id[ids])
    assert not (seen["train"] & seen["val"]) and not (seen["train"] & seen["test"])


def test_all_heads_and_explicit_pairs_give_exact_counts(cache_dir, target_dir, scenarios_path, scenarios):
    n_val = len(scenarios.split_indices("val"))
    dm = _dm(cache_dir, target_dir, scenarios_path)
    assert len(dm.dataset(dm.train_target_name, "val")) == n_val * 2 * 4
    dm = _dm(cache_dir, target_dir, scenarios_path, head_selection=[[0, 1], [1, 3]], batch_size=64)
    got = _all(dm.val_dataloader()[0])
    assert len(got["scenario"]) == n_val * 2
    assert sorted(set(zip(got["layer"].tolist(), got["head"].tolist()))) == [(0, 1), (1, 3)]


def test_layerwise_selection_takes_a_fraction_of_each_layer(cache_dir, target_dir, scenarios_path, scenarios):
    dm = _dm(cache_dir, target_dir, scenarios_path, head_selection="layerwise:0.5", batch_size=64)
    got = _all(dm.val_dataloader()[0])
    triples = list(zip(got["scenario"].tolist(), got["layer"].tolist(), got["head"].tolist()))
    assert len(triples) == len(set(triples)) == len(scenarios.split_indices("val")) * 2 * 2
    per = {}
    for s, layer, _ in triples:
        per[(s, layer)] = per.get((s, layer), 0) + 1
    assert set(per.values()) == {2}
    heads_per_scenario = {s: tuple(h for s2, _, h in triples if s2 == s) for s, _, _ in triples}
    assert len(set(heads_per_scenario.values())) > 1  # random per scenario, not one fixed subset
    again = _all(_dm(cache_dir, target_dir, scenarios_path, head_selection="layerwise:0.5",
                     batch_size=64).val_dataloader()[0])
    assert torch.equal(again["head"], got["head"])  # the same heads every time


def test_scenario_mode_stacks_every_head(cache_dir, target_dir, scenarios_path):
    dm = _dm(cache_dir, target_dir, scenarios_path, mode="scenarios", batch_size=3, scaler="none")
    batch = next(iter(dm.val_dataloader()[0]))
    assert batch["images"].shape == (3, 8, 1, 24, 24)
    assert set(batch) == {"images", "stats", "scenario", "row", "task", "correct", "probability"}
    cache = dm.caches[dm.train_target_name]
    row = int(np.flatnonzero(cache.scenario_index == int(batch["scenario"][1]))[0])
    assert int(batch["row"][1]) == row
    np.testing.assert_array_equal(batch["images"][1, 5, 0].numpy(), cache.pattern(row, 1, 1))  # 5 = layer 1, head 1
    from apmae.encodings.store import pattern_stats

    np.testing.assert_allclose(batch["stats"][1, 1, 1].numpy(), pattern_stats(cache.pattern(row, 1, 1)).numpy())
    assert float(batch["probability"][1]) == pytest.approx(float(cache.probability[row]))


def test_balance_correct_only_and_task_filters(cache_dir, target_dir, scenarios_path):
    dm = _dm(cache_dir, target_dir, scenarios_path, mode="scenarios", balance=True, batch_size=64)
    got = _all(dm.train_dataloader())
    for t in got["task"].unique():
        c = got["correct"][got["task"] == t]
        assert int(c.sum()) == int((~c).sum())
    assert len(got["task"]) > 0
    dm = _dm(cache_dir, target_dir, scenarios_path, correct_only=True, tasks=["identifiers", "noise"],
             batch_size=64)
    got = _all(dm.train_dataloader())
    cache = dm.caches[dm.train_target_name]
    names = cache.task_names
    expected = np.flatnonzero(cache.correct & (cache.split == SPLITS.index("train"))
                              & np.isin(cache.task, [names.index("identifiers"), names.index("noise")]))
    np.testing.assert_array_equal(np.unique(got["scenario"].numpy()), cache.scenario_index[expected])
    assert bool(got["correct"].all())


def test_worker_processes_return_the_same_samples(cache_dir, target_dir, scenarios_path):
    single = _all(_dm(cache_dir, target_dir, scenarios_path, head_selection="layerwise:0.25",
                      batch_size=4).val_dataloader()[0])
    multi = _all(_dm(cache_dir, target_dir, scenarios_path, head_selection="layerwise:0.25", batch_size=4,
                     num_workers=2).val_dataloader()[0])
    assert set(single) == set(multi)
    for key in single:
        assert torch.equal(single[key], multi[key]), key


def test_extra_targets_are_extra_validation_loaders(cache_dir, target_dir, target_b_dir, scenarios_path):
    dm = _dm(cache_dir, target_dir, scenarios_path, extra_targets=[str(target_b_dir)], batch_size=64)
    loaders = dm.val_dataloader()
    assert len(loaders) == 2 and len(dm.test_dataloader()) == 2
    a, b = _all(loaders[0]), _all(loaders[1])
    for key in ("scenario", "layer", "head", "task"):
        assert torch.equal(a[key], b[key])
    assert not torch.allclose(a["images"], b["images"])  # another model's patterns
    assert dm.caches[dm.val_target_names[1]].target["model"] == str(target_b_dir)


@pytest.mark.parametrize("kwargs, match", [
    ({"mode": "pairs"}, "mode='pairs'"),
    ({"scaler": "sqrt"}, "unknown scaler"),
    ({"mode": "scenarios", "head_selection": "layerwise:0.25"}, "head_selection applies to mode='heads'"),
    ({"batch_size": 0}, "batch_size=0"),
])
def test_bad_arguments_raise(kwargs, match, target_dir, scenarios_path, tmp_path):
    with pytest.raises(ValueError, match=match):
        AttentionCacheDataModule(target=str(target_dir), scenarios=str(scenarios_path), cache_dir=str(tmp_path),
                                 **kwargs)


def test_bad_head_selection_and_scenarios_raise(target_dir, tmp_path):
    for spec in ("layerwise:0", "some", [[2, 0]]):
        with pytest.raises(ValueError, match="head_selection"):
            HeadSelection.parse(spec, n_layers=2, n_heads=4)
    with pytest.raises(ValueError, match="is not a file"):
        AttentionCacheDataModule(target=str(target_dir), scenarios=str(tmp_path / "none.npz"), cache_dir=str(tmp_path))


def test_a_cache_for_other_scenarios_is_refused(cache_dir, target_dir, tmp_path, tiny_tokenizer):
    from apmae.cache.store import CacheMismatchError
    from tests.cache.helpers import random_scenarios

    other = random_scenarios(30, 24, 500, tiny_tokenizer.convert_tokens_to_ids("<fim_middle>"), seed=9)
    path = other.save(tmp_path / "other.npz")
    dm = AttentionCacheDataModule(target=str(target_dir), scenarios=str(path), cache_dir=str(cache_dir),
                                  extraction=CPU)
    with pytest.raises(CacheMismatchError, match="scenario_fingerprint"):
        dm.prepare_data()


class _FakeTrainer:
    """The three facts the DataModule reads from a DDP trainer, and a barrier."""

    def __init__(self, rank: int, world: int) -> None:
        self.global_rank, self.world_size, self.local_rank = rank, world, rank
        self.barriers = 0
        self.strategy = self

    def barrier(self, name: str | None = None) -> None:
        self.barriers += 1


def test_ddp_ranks_extract_disjoint_shards_that_merge(cache_dir, target_dir, scenarios_path, tmp_path):
    def rank_dm(rank: int) -> AttentionCacheDataModule:
        dm = AttentionCacheDataModule(target=str(target_dir), scenarios=str(scenarios_path), cache_dir=str(tmp_path),
                                      extraction=CPU)
        dm.trainer = _FakeTrainer(rank, 2)
        return dm

    rank0, rank1 = rank_dm(0), rank_dm(1)
    rank0.prepare_data()
    rank1.prepare_data()
    assert not list(tmp_path.glob("*.h5"))  # under DDP each rank extracts its own shard in setup
    rank1._build(1, 2, 1)  # what rank 1's setup does before its barrier (the processes run one after another here)
    rank0.setup("fit")
    assert rank0.trainer.barriers == 1
    name = rank0.train_target_name
    assert sorted(p.name for p in tmp_path.glob("*.h5")) == [f"{name}.rank0.h5", f"{name}.rank1.h5"]
    merged = rank0.caches[name]
    single = _dm(cache_dir, target_dir, scenarios_path).caches[name]
    assert merged.attrs["shard_world_size"] == 2
    np.testing.assert_array_equal(merged.scenario_index, single.scenario_index)
    for i in (0, 7, 29):
        np.testing.assert_array_equal(merged.packed(i), single.packed(i))


def test_a_scenario_datamodule_is_mined_then_extracted(tmp_path, tiny_tokenizer, target_dir):
    from apmae.datamodules.java_scenarios import JavaScenarioDataModule
    from tests.conftest import JAVA_SNIPPETS

    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    (tmp_path / "src").mkdir()
    for i in range(12):
        (tmp_path / "src" / f"F{i}.java").write_text(JAVA_SNIPPETS[i % 3].replace("demo", f"demo{i}"))
    mined = JavaScenarioDataModule(sources=str(tmp_path / "src"),
                                   tokenizer=str(tmp_path / "tok"),
                                   mining=MiningConfig(seq_len=24, max_label_tokens=8, n_per_task=4,
                                                       tasks=["identifiers", "closing_bracket"]),
                                   cache_dir=str(tmp_path / "scenarios"),
                                   progress=False)
    dm = AttentionCacheDataModule(target=str(target_dir), scenarios=mined, cache_dir=str(tmp_path / "cache"),
                                  extraction=CPU, batch_size=1000)
    assert dm.seq_len == 24
    dm.prepare_data()
    dm.setup("fit")
    scenarios = mined.scenario_set()
    cache = dm.caches[dm.train_target_name]
    np.testing.assert_array_equal(cache.input_ids, scenarios.input_ids)
    assert cache.attrs["scenario_fingerprint"] == scenarios.fingerprint()
    n_train = len(scenarios.split_indices("train"))
    assert n_train > 0 and len(dm.train_dataloader().dataset) == n_train * 2 * 4
