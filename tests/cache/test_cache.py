"""The HDF5 cache: stored patterns, resume after a kill, mismatches, corruption, shards."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from apmae.cache import (AttentionCache, CacheError, CacheMismatchError, CacheSpec, CacheWriter, cache_files,
                         shard_path)
from apmae.extract import extract
from apmae.target import load_target, run_batch
from tests.cache.helpers import random_scenarios

COLUMNS = ("scenario_index", "input_ids", "label_ids", "label_len", "task", "source_id", "span_start", "span_end",
           "split", "prediction", "probability", "correct", "loss")


@pytest.fixture(scope="module")
def cache_path(target, scenarios, tmp_path_factory):
    path = shard_path(tmp_path_factory.mktemp("cache"), "target-a", 0)
    extract(target, scenarios, path, batch_size=7, progress=False)
    return path


def _assert_same_cache(a: AttentionCache, b: AttentionCache) -> None:
    assert len(a) == len(b)
    for name in COLUMNS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    for i in range(len(a)):
        np.testing.assert_array_equal(a.packed(i), b.packed(i))


def test_stored_patterns_equal_the_models_eager_attentions(cache_path, target, scenarios):
    cache = AttentionCache(cache_path)
    ids = torch.from_numpy(scenarios.input_ids).long()
    with torch.no_grad():
        ref = target.model(input_ids=ids, output_attentions=True)
    expected = torch.stack(ref.attentions, 1).numpy()  # (N, L, H, S, S)
    stored = np.stack(list(cache))
    assert stored.shape == expected.shape == (30, 2, 4, 24, 24)
    np.testing.assert_array_equal(stored == 0, expected == 0)  # causal zeros and nothing else
    nz = expected != 0
    assert (np.abs(stored[nz] - expected[nz]) / expected[nz]).max() <= 2.0 ** -8
    for i, layer, head in [(0, 0, 0), (13, 1, 3), (29, 0, 2)]:
        np.testing.assert_array_equal(cache.pattern(i, layer, head), stored[i, layer, head])


def test_stored_outcomes_and_scenario_columns(cache_path, target, scenarios):
    cache = AttentionCache(cache_path)
    out = run_batch(target, torch.from_numpy(scenarios.input_ids), torch.from_numpy(scenarios.label_ids[:, 0]))
    np.testing.assert_array_equal(cache.prediction, out.prediction.numpy())
    np.testing.assert_array_equal(cache.correct, out.correct.numpy())
    np.testing.assert_allclose(cache.loss, out.loss.numpy(), rtol=1e-5)
    np.testing.assert_allclose(cache.probability, out.probability.numpy(), rtol=1e-5)
    assert 0 < cache.correct.sum() < len(cache)
    np.testing.assert_array_equal(cache.scenario_index, np.arange(30))
    for name in ("input_ids", "label_ids", "label_len", "task", "source_id", "span_start", "span_end", "split"):
        np.testing.assert_array_equal(getattr(cache, name), getattr(scenarios, name), err_msg=name)


def test_file_attributes_describe_the_run(cache_path, target, scenarios):
    cache = AttentionCache(cache_path)
    assert (cache.seq_len, cache.n_layers, cache.n_heads) == (24, 2, 4)
    assert cache.target == target.summary()
    assert cache.task_names == scenarios.task_names
    assert cache.attrs["scenario_fingerprint"] == scenarios.fingerprint()
    assert json.loads(cache.attrs["scenario_meta"]) == scenarios.meta
    for key in ("schema_version", "encoding", "apmae_version", "created", "compression"):
        assert key in cache.attrs


def test_kill_and_resume_matches_an_uninterrupted_run(cache_path, target, scenarios, tmp_path):
    path = shard_path(tmp_path, "target-a", 0)

    def kill_after_two(committed: int) -> None:
        if committed == 14:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract(target, scenarios, path, batch_size=7, progress=False, on_batch=kill_after_two)
    with h5py.File(path, "r+") as f:
        assert f.attrs["committed"] == 14
        f["patterns"][14:21] = 12345  # a batch written but never committed: must be rewritten
        f["scenario_index"][14:21] = 99
    with pytest.raises(CacheError, match="incomplete"):
        AttentionCache(path)
    result = extract(target, scenarios, path, batch_size=7, progress=False)
    assert (result.written, result.rows) == (16, 30)
    _assert_same_cache(AttentionCache(path), AttentionCache(cache_path))
    assert extract(target, scenarios, path, batch_size=7, progress=False).written == 0  # complete: nothing to do


def test_other_model_seq_len_or_scenarios_are_never_appended_to(cache_path, target, target_b_dir, tiny_tokenizer):
    mid = tiny_tokenizer.convert_tokens_to_ids("<fim_middle>")
    with pytest.raises(CacheMismatchError, match="seq_len: file has 24, this run 16"):
        extract(target, random_scenarios(30, 16, 500, mid), cache_path, progress=False)
    with pytest.raises(CacheMismatchError, match="scenario_fingerprint"):
        extract(target, random_scenarios(30, 24, 500, mid, seed=5), cache_path, progress=False)
    other = load_target(target_b_dir, device="cpu")
    with pytest.raises(CacheMismatchError, match="model: file has"):
        extract(other, random_scenarios(30, 24, 500, mid), cache_path, progress=False)


def test_truncated_or_foreign_files_give_a_clear_error(cache_path, target, scenarios, tmp_path):
    truncated = tmp_path / "truncated.rank0.h5"
    truncated.write_bytes(cache_path.read_bytes()[: cache_path.stat().st_size // 2])
    garbage = tmp_path / "garbage.rank0.h5"
    garbage.write_bytes(b"not an hdf5 file" * 100)
    foreign = tmp_path / "foreign.rank0.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.zeros(3)
    for path in (truncated, garbage):
        with pytest.raises(CacheError, match="truncated or corrupt.*delete it"):
            AttentionCache(path)
        with pytest.raises(CacheError, match="truncated or corrupt"):
            extract(target, scenarios, path, progress=False)
    with pytest.raises(CacheError, match="not a complete apmae attention cache"):
        AttentionCache(foreign)
    with pytest.raises(CacheError, match="do not exist"):
        AttentionCache(tmp_path / "missing.rank0.h5")


def test_damaged_pattern_chunk_gives_a_clear_error(cache_path, tmp_path):
    damaged = tmp_path / "damaged.rank0.h5"
    data = bytearray(cache_path.read_bytes())
    with h5py.File(cache_path, "r") as f:
        offset = f["patterns"].id.get_chunk_info(0).byte_offset  # first compressed chunk
    data[offset:offset + 64] = b"\xff" * 64
    damaged.write_bytes(bytes(data))
    cache = AttentionCache(damaged)
    with pytest.raises(CacheError, match="corrupt"):
        cache.pattern(0, 0, 0)


def test_rank_shards_merge_into_the_single_process_cache(cache_path, target, scenarios, tmp_path):
    for rank in (0, 1):
        result = extract(target, scenarios, shard_path(tmp_path, "target-a", rank), batch_size=4, rank=rank,
                         world_size=2, progress=False)
        assert result.rows == 15
    files = cache_files(tmp_path, "target-a")
    assert [p.name for p in files] == ["target-a.rank0.h5", "target-a.rank1.h5"]
    _assert_same_cache(AttentionCache(files), AttentionCache(cache_path))
    _assert_same_cache(AttentionCache(str(tmp_path / "target-a.rank*.h5")), AttentionCache(cache_path))
    with pytest.raises(CacheError, match="one of 2 shards but 1 were given"):
        AttentionCache(files[:1])


def test_a_shard_cannot_be_resumed_under_another_world_size(target, scenarios, tmp_path):
    path = shard_path(tmp_path, "target-a", 0)
    spec = CacheSpec(target=target.summary(), seq_len=24, scenario_fingerprint=scenarios.fingerprint(),
                     n_scenarios=30, shard_rank=0, shard_world_size=2)
    CacheWriter.open(path, spec, scenarios).close()
    with pytest.raises(CacheMismatchError, match="shard_world_size: file has 2, this run 1"):
        extract(target, scenarios, path, progress=False)


def test_every_compression_stores_the_same_patterns(cache_path, target, scenarios, tmp_path):
    """gzip chunks are deflated in Python threads and written raw: HDF5's own filters must read them back."""
    with h5py.File(cache_path, "r") as f:
        assert (f["patterns"].compression, f["patterns"].shuffle) == ("gzip", True)
    reference = AttentionCache(cache_path)
    for compression in ("none", "lzf"):
        path = shard_path(tmp_path / compression, "target-a", 0)
        extract(target, scenarios, path, batch_size=7, progress=False, compression=compression)
        with h5py.File(path, "r") as f:
            assert f["patterns"].compression == (None if compression == "none" else compression)
        _assert_same_cache(AttentionCache(path), reference)
    with pytest.raises(ValueError, match="compression='zstd'"):
        extract(target, scenarios, tmp_path / "z.rank0.h5", progress=False, compression="zstd")
