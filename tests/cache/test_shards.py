"""Uneven rank shards: any world size merges into exactly the single-process cache; ranks outside the world refused."""

from __future__ import annotations

import numpy as np
import pytest

from apmae.cache.settings import ExtractionSettings
from apmae.cache.extract import extract
from apmae.cache.store import AttentionCache, shard_path
from apmae.common.h5shards import shard_rows
from apmae.encodings.store import ensure_encodings
from tests.cache.test_cache import COLUMNS
from tests.stream.conftest import micro_apmae


@pytest.fixture(scope="module")
def single(target, scenarios, tmp_path_factory):
    path = shard_path(tmp_path_factory.mktemp("single"), "target-a", 0)
    extract(target, scenarios, path, ExtractionSettings(batch_size=1, progress=False))
    return path


def test_shard_rows_cover_every_row_once_for_uneven_world_sizes():
    for n, world in [(30, 4), (29, 3), (4, 5), (1, 3), (0, 2)]:
        shards = [shard_rows(n, rank, world) for rank in range(world)]
        assert [len(s) for s in shards] == [len(range(rank, n, world)) for rank in range(world)]
        assert sorted(np.concatenate(shards).tolist()) == list(range(n))  # none lost, none twice
    assert [len(shard_rows(29, rank, 3)) for rank in range(3)] == [10, 10, 9]
    assert shard_rows(4, 4, 5).tolist() == []  # more ranks than rows: the last has none


@pytest.mark.parametrize("world", [4, 7])
def test_uneven_shards_merge_into_the_single_process_cache(single, target, scenarios, tmp_path, world):
    sizes = []
    for rank in range(world):
        result = extract(target, scenarios, shard_path(tmp_path, "target-a", rank),
                         ExtractionSettings(batch_size=1, progress=False), rank=rank, world_size=world)
        sizes.append(result.rows)
    assert sizes == [len(range(rank, 30, world)) for rank in range(world)] and len(set(sizes)) == 2  # uneven
    merged, reference = AttentionCache(str(tmp_path / "target-a.rank*.h5")), AttentionCache(single)
    assert len(merged) == len(reference) == 30
    np.testing.assert_array_equal(merged.scenario_index, np.arange(30))  # no row lost, none twice
    for name in COLUMNS:
        np.testing.assert_array_equal(getattr(merged, name), getattr(reference, name), err_msg=name)
    for i in range(30):
        np.testing.assert_array_equal(merged.packed(i), reference.packed(i))
    # the encodings of the merged shards are those of the single file, row for row
    net = micro_apmae()
    from_shards = ensure_encodings(net, merged, tmp_path / "shards.enc.h5", progress=False).load()
    from_single = ensure_encodings(net, reference, tmp_path / "single.enc.h5", progress=False).load()
    assert from_shards.identity == from_single.identity
    for name in ("cls", "mean", "stats"):
        np.testing.assert_array_equal(from_shards.array(name), from_single.array(name))


def test_more_ranks_than_scenarios_leave_an_empty_shard_that_still_merges(target, scenarios, tmp_path):
    few = scenarios.subset(np.arange(4))
    for rank in range(5):
        extract(target, few, shard_path(tmp_path, "few", rank), ExtractionSettings(batch_size=1, progress=False),
                rank=rank, world_size=5)
    assert len(AttentionCache(shard_path(tmp_path, "few", 4), require_complete=False)) == 0
    extract(target, few, shard_path(tmp_path / "one", "few", 0), ExtractionSettings(batch_size=1, progress=False))
    merged = AttentionCache(str(tmp_path / "few.rank*.h5"))
    reference = AttentionCache(tmp_path / "one" / "few.rank0.h5")
    np.testing.assert_array_equal(merged.scenario_index, np.arange(4))
    for i in range(4):
        np.testing.assert_array_equal(merged.packed(i), reference.packed(i))


@pytest.mark.parametrize("rank", [3, 4, -1])
def test_a_rank_outside_the_world_is_refused(target, scenarios, tmp_path, rank):
    with pytest.raises(ValueError, match=rf"rank {rank} is outside world size 3"):
        extract(target, scenarios, shard_path(tmp_path, "target-a", max(rank, 0)), ExtractionSettings(progress=False),
                rank=rank, world_size=3)
    assert not list(tmp_path.iterdir())  # refused before any file was made
