"""Sampled-head caches: the layerwise draw, stored patterns equal to a full cache's, resume, refusals, DataModule."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from apmae.cache.extract import cache_name, ensure_cache, extract
from apmae.cache.heads import canonical_sample, heads_per_layer, layerwise_fraction, layerwise_heads, sampled_heads
from apmae.cache.settings import ExtractionSettings
from apmae.cache.store import AttentionCache, CacheError, CacheMismatchError, CacheSpec, CacheWriter, shard_path
from apmae.datamodules.attention_cache import AttentionCacheDataModule, HeadImageDataset, HeadSelection
from apmae.encodings.store import ensure_encodings
from apmae.model.scaling import scale
from tests.stream.conftest import micro_apmae

SEED = 3
SAMPLED = ExtractionSettings(batch_size=7, progress=False, heads="layerwise:0.25", head_seed=SEED)
FULL = ExtractionSettings(batch_size=7, progress=False)


@pytest.fixture(scope="module")
def caches(target, scenarios, tmp_path_factory):
    """A full cache and a layerwise:0.25 cache (1 of 4 heads per layer) of the same scenarios."""
    out = tmp_path_factory.mktemp("sampled")
    full, sampled = shard_path(out, "full", 0), shard_path(out, "sampled", 0)
    extract(target, scenarios, full, FULL)
    extract(target, scenarios, sampled, SAMPLED)
    return full, sampled


# ---------------------------------------------------------------- the draw


def test_the_draw_is_the_former_head_selection_draw_and_the_selection_uses_it():
    for scenario in range(20):
        for layer in range(3):
            order = np.random.default_rng([SEED, scenario, layer]).permutation(9)  # the formula HeadSelection had
            np.testing.assert_array_equal(layerwise_heads(SEED, scenario, layer, 9, 2), np.sort(order[:2]))
    selection = HeadSelection.parse("layerwise:0.25", n_layers=3, n_heads=9, seed=SEED)
    assert selection.per_layer == heads_per_layer(0.25, 9) == 2
    drawn = sampled_heads(SEED, np.array([5, 11]), 3, 9, 2)  # (B, L, k)
    assert drawn.shape == (2, 3, 2) and drawn.dtype == np.int16
    for b, scenario in enumerate((5, 11)):
        picked = [selection.head(scenario, k) for k in range(selection.per_scenario)]
        assert picked == [(layer, int(h)) for layer in range(3) for h in drawn[b, layer]]


def test_sample_specs_are_parsed_and_written_one_way():
    assert layerwise_fraction("all") is None and layerwise_fraction("layerwise:.5") == 0.5
    assert canonical_sample("layerwise:.250") == "layerwise:0.25" and canonical_sample("all") == "all"
    assert heads_per_layer(0.01, 9) == 1 and heads_per_layer(None, 9) == 9
    for bad in ("layerwise:0", "layerwise:1.5", "layerwise", "some", "layerwise:1.2.3"):
        with pytest.raises(ValueError) as info:
            ExtractionSettings(heads=bad)
        assert str(info.value) == (f"extraction.heads={bad!r}; use 'all' or 'layerwise:<fraction in (0, 1]>' "
                                   "(e.g. layerwise:0.25)")


def test_sampled_caches_have_their_own_names():
    assert cache_name("models/target-a") == "target-a"
    assert cache_name("models/target-a", heads="layerwise:0.25", head_seed=3) == "target-a.heads-layerwise-0.25-seed3"
    assert (cache_name("target-a", "contribution", heads="layerwise:.5")
            == "target-a.contribution.heads-layerwise-0.5-seed0")
    assert cache_name("target-a", heads="all", head_seed=7) == "target-a"  # the seed means nothing for all heads


# ---------------------------------------------------------------- the file


def test_sampled_patterns_equal_the_full_caches_at_every_stored_head(caches):
    full, sampled = (AttentionCache(p) for p in caches)
    assert (sampled.head_sample, sampled.head_seed, sampled.heads_stored) == ("layerwise:0.25", SEED, 1)
    assert (full.head_sample, full.head_seed, full.heads_stored) == ("all", None, 4)
    np.testing.assert_array_equal(sampled.scenario_index, full.scenario_index)
    np.testing.assert_array_equal(sampled.correct, full.correct)
    seen = set()
    for i in range(len(full)):
        stored = sampled.stored_heads(i)
        assert stored.shape == (2, 1)
        for layer in range(2):
            np.testing.assert_array_equal(stored[layer], layerwise_heads(SEED, int(full.scenario_index[i]), layer, 4, 1))
            for head in stored[layer]:
                np.testing.assert_array_equal(sampled.pattern(i, layer, int(head)), full.pattern(i, layer, int(head)))
                seen.add(int(head))
    assert seen == {0, 1, 2, 3}  # the draw differs between scenarios
    np.testing.assert_array_equal(full.stored_heads(4), np.tile(np.arange(4), (2, 1)))


def test_the_sampled_file_holds_a_quarter_of_the_patterns_and_a_checksummed_heads_dataset(caches):
    full, sampled = caches
    with h5py.File(full, "r") as f, h5py.File(sampled, "r") as g:
        width = f["patterns"].shape[3]
        assert f["patterns"].shape == (30, 2, 4, width) and g["patterns"].shape == (30, 2, 1, width)
        assert g["patterns"].nbytes * 4 == f["patterns"].nbytes
        # on disk: a quarter of the values, plus a 4-byte checksum per chunk of either
        assert g["patterns"].id.get_storage_size() / f["patterns"].id.get_storage_size() < 0.26
        assert g["heads"].shape == (30, 2, 1) and g["heads"].dtype == np.int16 and g["heads"].fletcher32
        assert "heads" not in f and "heads" not in f.attrs and "head_seed" not in f.attrs
        assert (g.attrs["heads"], g.attrs["head_seed"]) == ("layerwise:0.25", SEED)
    assert sampled.stat().st_size < full.stat().st_size


def test_a_full_cache_keeps_its_identity_keys(caches, target, scenarios):
    full, sampled = (AttentionCache(p) for p in caches)
    keys = {"model", "n_layers", "n_heads", "seq_len", "dtype", "scenario_fingerprint", "n_scenarios", "shard_rank",
            "shard_world_size", "encoding", "pattern_kind"}
    assert set(full.identity) == keys
    assert sampled.identity == {**full.identity, "heads": "layerwise:0.25", "head_seed": SEED}
    spec = CacheSpec(target=target.summary(), seq_len=24, scenario_fingerprint=scenarios.fingerprint(), n_scenarios=30)
    assert set(spec.identity()) == keys and "heads" not in spec.attrs()


def test_kill_and_resume_of_a_sampled_extraction_gives_the_same_file_content(caches, target, scenarios, tmp_path):
    path = shard_path(tmp_path, "sampled", 0)

    def stop_after_two(committed: int) -> None:
        if committed == 14:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract(target, scenarios, path, SAMPLED, on_batch=stop_after_two)
    with h5py.File(path, "r+") as f:
        assert f.attrs["committed"] == 14
        f["patterns"][14:21] = 255  # a batch written but never committed: must be rewritten
        f["heads"][14:21] = 3
    assert extract(target, scenarios, path, SAMPLED).written == 16
    with h5py.File(path, "r") as got, h5py.File(caches[1], "r") as want:
        assert set(got) == set(want)
        for name in want:
            np.testing.assert_array_equal(got[name][()], want[name][()], err_msg=name)
        assert {k: v for k, v in got.attrs.items() if k != "created"} == {
            k: v for k, v in want.attrs.items() if k != "created"}


def test_a_sampled_file_is_never_resumed_as_another_sample(caches, target, scenarios):
    full, sampled = caches
    with pytest.raises(CacheMismatchError, match="heads: file has 'layerwise:0.25', this run unset"):
        extract(target, scenarios, sampled, FULL)
    with pytest.raises(CacheMismatchError, match="heads: file has unset, this run 'layerwise:0.25'"):
        extract(target, scenarios, full, SAMPLED)
    with pytest.raises(CacheMismatchError, match="head_seed: file has 3, this run 4 \\(another draw"):
        extract(target, scenarios, sampled, ExtractionSettings(progress=False, heads="layerwise:0.25", head_seed=4))
    with pytest.raises(CacheMismatchError, match="heads: file has 'layerwise:0.25', this run 'layerwise:0.5'"):
        extract(target, scenarios, sampled, ExtractionSettings(progress=False, heads="layerwise:0.5", head_seed=SEED))


def test_append_takes_every_head_and_keeps_the_drawn_ones(target, scenarios, tmp_path):
    spec = CacheSpec(target=target.summary(), seq_len=24, scenario_fingerprint=scenarios.fingerprint(),
                     n_scenarios=30, heads="layerwise:0.5", head_seed=SEED)
    t = 24 * 25 // 2
    bits = (np.arange(3 * 2 * 4 * t) % 1000).astype(np.uint16).reshape(3, 2, 4, t)  # every head its own values
    path = shard_path(tmp_path, "x", 0)
    with CacheWriter.open(path, spec, scenarios) as writer:
        encoded = writer.encode(bits)  # (B, L, H, W)
        with pytest.raises(ValueError, match=r"do not fit this cache's \(2, 4, 525\)"):
            writer.append(encoded[:, :, :2], [0] * 3, [0.0] * 3, [0] * 3, [0.0] * 3)
        writer.append(encoded, [0] * 3, [0.0] * 3, [0] * 3, [0.0] * 3)
    with h5py.File(path, "r") as f:
        assert f["patterns"].shape[1:] == (2, 2, 525)
        for i in range(3):  # rows 0..2 hold scenarios 0..2
            for layer in range(2):
                heads = layerwise_heads(SEED, i, layer, 4, 2)
                np.testing.assert_array_equal(f["heads"][i, layer], heads)
                np.testing.assert_array_equal(f["patterns"][i, layer], encoded[i, layer, heads])


def test_sampled_rank_shards_merge_into_the_single_process_cache(target, scenarios, tmp_path):
    """Each row keeps its scenario's draw whichever rank writes it; a rank with no rows lays out empty datasets."""
    few = scenarios.subset(np.arange(3))
    extract(target, few, shard_path(tmp_path / "one", "s", 0), SAMPLED)
    for rank in range(4):
        extract(target, few, shard_path(tmp_path, "s", rank), SAMPLED, rank=rank, world_size=4)
    single, merged = AttentionCache(shard_path(tmp_path / "one", "s", 0)), AttentionCache(str(tmp_path / "s.rank*.h5"))
    assert len(merged) == 3 and merged.identity["shard_world_size"] == 4
    for i in range(3):
        np.testing.assert_array_equal(merged.stored_heads(i), single.stored_heads(i))
        for layer, (head,) in enumerate(single.stored_heads(i)):
            np.testing.assert_array_equal(merged.pattern(i, layer, head), single.pattern(i, layer, head))


def test_a_sampled_cache_without_its_stored_heads_is_named_corrupt(target, scenarios, tmp_path):
    """A lost ``heads`` dataset would serve the wrong head from every slot: the file is refused instead."""
    few = scenarios.subset(np.arange(3))
    for rank in range(2):
        extract(target, few, shard_path(tmp_path, "s", rank), SAMPLED, rank=rank, world_size=2)
    with h5py.File(shard_path(tmp_path, "s", 1), "r+") as f:
        del f["heads"]
    with pytest.raises(CacheError, match=r"s\.rank1\.h5 is corrupt \(it lacks 'heads', which the other shards of "
                                         r"its run hold\); delete it"):
        AttentionCache(str(tmp_path / "s.rank*.h5"))
    with pytest.raises(CacheError, match=r"s\.rank1\.h5 is corrupt: its heads \(layerwise:0\.25\) and its "
                                         r"stored-heads dataset disagree"):
        AttentionCache(shard_path(tmp_path, "s", 1), require_complete=False)


# ---------------------------------------------------------------- reading


def test_reading_a_head_that_is_not_stored_names_the_stored_ones(caches):
    sampled = AttentionCache(caches[1])
    stored = int(sampled.stored_heads(0)[1, 0])
    other = (stored + 1) % 4
    with pytest.raises(CacheError) as info:
        sampled.pattern(0, 1, other)
    assert (f"stores heads [{stored}] of layer 1 for row 0 (heads: layerwise:0.25, head_seed: 3), not head {other}; "
            "select heads with head_selection: layerwise:0.25 and seed: 3") in str(info.value)


@pytest.mark.parametrize("read, reader", [(lambda c: c.packed(0), "packed()"), (lambda c: c.scenario(0), "scenario()"),
                                          (list, "iterating over the cache")])
def test_reading_every_head_of_a_sampled_cache_says_what_to_extract(caches, read, reader):
    sampled = AttentionCache(caches[1])
    with pytest.raises(CacheError) as info:
        read(sampled)
    assert str(info.value) == (f"cache {caches[1]} holds 1 of 4 heads per layer (heads: layerwise:0.25), so {reader} "
                               "cannot read every head: reading every head needs a cache extracted with "
                               "extraction.heads: all")


def test_head_images_of_the_sampled_cache_are_those_of_the_full_cache(caches):
    full, sampled = (AttentionCache(p) for p in caches)
    selection = HeadSelection.parse("layerwise:0.25", n_layers=2, n_heads=4, seed=SEED)
    rows = np.arange(len(full))
    want, got = HeadImageDataset(full, rows, selection), HeadImageDataset(sampled, rows, selection)
    assert len(got) == len(want) == 30 * 2
    for j in range(len(want)):
        a, b = got[j], want[j]
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{key} of sample {j}")
    other_seed = HeadImageDataset(sampled, rows, HeadSelection.parse("layerwise:0.25", n_layers=2, n_heads=4))
    with pytest.raises(CacheError, match="not head"):
        [other_seed[j] for j in range(len(other_seed))]


def test_ensure_encodings_refuses_a_sampled_cache(caches, tmp_path):
    with pytest.raises(CacheError, match=r"so ensure_encodings \(AP-MAE encodes every head of each scenario\) "
                                         r"cannot read every head: .* extraction.heads: all"):
        ensure_encodings(micro_apmae(), AttentionCache(caches[1]), tmp_path / "e.h5", progress=False)
    assert not (tmp_path / "e.h5").exists()


# ---------------------------------------------------------------- the DataModule


def test_the_datamodule_trains_on_sampled_caches_end_to_end(caches, target_dir, target_b_dir, scenarios_path,
                                                            tmp_path):
    extraction = {"heads": "layerwise:0.25", "head_seed": SEED, "device": "cpu", "progress": False}
    dm = AttentionCacheDataModule(target=str(target_dir), scenarios=str(scenarios_path), cache_dir=str(tmp_path),
                                  head_selection="layerwise:0.25", seed=SEED, extraction=extraction,
                                  extra_targets=[str(target_b_dir)], batch_size=1000)
    dm.prepare_data()
    dm.setup("fit")
    names = [f"{target_dir.name}.heads-layerwise-0.25-seed3.rank0.h5",
             f"{target_b_dir.name}.heads-layerwise-0.25-seed3.rank0.h5"]
    assert sorted(p.name for p in tmp_path.glob("*.h5")) == sorted(names)
    assert [c.head_sample for c in dm.caches.values()] == ["layerwise:0.25"] * 2  # extra targets alike
    full = AttentionCache(caches[0])
    batch = next(iter(dm.val_dataloader()[0]))
    assert len(batch["images"]) == len(dm.dataset(dm.train_target_name, "val")) > 0
    for j in range(len(batch["images"])):
        s, layer, head = (int(batch[k][j]) for k in ("scenario", "layer", "head"))
        raw = torch.from_numpy(full.pattern(int(np.flatnonzero(full.scenario_index == s)[0]), layer, head))[None]
        torch.testing.assert_close(batch["images"][j], scale(raw, "log_normalize"), rtol=0, atol=0)
    build = ensure_cache(str(target_dir), dm.scenario_set(), tmp_path, extraction)
    assert build.extraction is None and build.name == names[0].removesuffix(".rank0.h5")  # reused


@pytest.mark.parametrize("kwargs, message", [
    ({"head_selection": "all"}, "extraction.heads='layerwise:0.25' caches only the heads its layerwise draw keeps, "
                                "but head_selection='all' selects others: set head_selection: layerwise:0.25 "
                                "(or extraction.heads: all)"),
    ({"head_selection": [[0, 1]]}, "but head_selection=[[0, 1]] selects others: set head_selection: layerwise:0.25"),
    ({"head_selection": "layerwise:0.5"}, "but head_selection='layerwise:0.5' selects others"),
    ({"seed": 0}, "extraction.heads='layerwise:0.25' draws its heads with extraction.head_seed=3, but seed=0 "
                  "selects others: set seed: 3 (or extraction.head_seed: 0)"),
    ({"mode": "scenarios", "head_selection": "all"},
     "mode='scenarios' (it stacks every head of each scenario) needs every head, but extraction.heads="
     "'layerwise:0.25' caches only some heads of each layer: set extraction.heads: all, or use mode: heads with "
     "head_selection: layerwise:0.25"),
    ({"mode": "scenarios", "head_selection": "all", "encoder": {"path": "enc"}},
     "encoder (it encodes every head of each scenario) needs every head"),
])
def test_the_datamodule_refuses_what_a_sampled_cache_cannot_serve(kwargs, message, target_dir, scenarios_path,
                                                                   tmp_path):
    args = {"head_selection": "layerwise:0.25", "seed": SEED, **kwargs}
    with pytest.raises(ValueError) as info:
        AttentionCacheDataModule(target=str(target_dir), scenarios=str(scenarios_path), cache_dir=str(tmp_path),
                                 extraction={"heads": "layerwise:0.25", "head_seed": SEED}, **args)
    assert message in str(info.value)


def test_the_encodings_datamodule_refuses_sampled_heads(target_dir, scenarios_path, tmp_path):
    from apmae.datamodules.encodings import EncodingsDataModule

    with pytest.raises(ValueError, match=r"^extraction.heads='layerwise:0.25': EncodingsDataModule encodes every "
                                         r"head of each scenario; set extraction.heads: all$"):
        EncodingsDataModule(target=str(target_dir), scenarios=str(scenarios_path), encoder={"path": "enc"},
                            encodings_dir=str(tmp_path), extraction={"heads": "layerwise:0.25"})
