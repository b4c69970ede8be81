"""The HDF5 cache: stored patterns, resume after a kill, mismatches, corruption, shards."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from apmae.cache.settings import ExtractionSettings
from apmae.cache.store import (AttentionCache, CacheError, CacheMismatchError, CacheSpec, CacheWriter, cache_files,
                         shard_path)
from apmae.cache.extract import ensure_cache, extract
from apmae.target.access import load_target, run_batch
from tests.cache.helpers import random_scenarios

COLUMNS = ("scenario_index", "input_ids", "label_ids", "label_len", "task", "source_id", "span_start", "span_end",
           "split", "prediction", "probability", "correct", "loss")


@pytest.fixture(scope="module")
def cache_path(target, scenarios, tmp_path_factory):
    path = shard_path(tmp_path_factory.mktemp("cache"), "target-a", 0)
    extract(target, scenarios, path, ExtractionSettings(batch_size=7, progress=False))
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
        extract(target, scenarios, path, ExtractionSettings(batch_size=7, progress=False), on_batch=kill_after_two)
    with h5py.File(path, "r+") as f:
        assert f.attrs["committed"] == 14
        f["patterns"][14:21] = 255  # a batch written but never committed: must be rewritten
        f["scenario_index"][14:21] = 99
    with pytest.raises(CacheError, match="incomplete"):
        AttentionCache(path)
    result = extract(target, scenarios, path, ExtractionSettings(batch_size=7, progress=False))
    assert (result.written, result.rows) == (16, 30)
    _assert_same_cache(AttentionCache(path), AttentionCache(cache_path))
    assert (
        extract(target, scenarios, path, ExtractionSettings(batch_size=7, progress=False)).written == 0
    )  # complete: nothing to do


def test_other_model_seq_len_or_scenarios_are_never_appended_to(cache_path, target, target_b_dir, tiny_tokenizer):
    mid = tiny_tokenizer.convert_tokens_to_ids("<fim_middle>")
    with pytest.raises(CacheMismatchError, match="seq_len: file has 24, this run 16"):
        extract(target, random_scenarios(30, 16, 500, mid), cache_path, ExtractionSettings(progress=False))
    with pytest.raises(CacheMismatchError, match="scenario_fingerprint"):
        extract(target, random_scenarios(30, 24, 500, mid, seed=5), cache_path, ExtractionSettings(progress=False))
    other = load_target(target_b_dir, device="cpu")
    with pytest.raises(CacheMismatchError, match="model: file has"):
        extract(other, random_scenarios(30, 24, 500, mid), cache_path, ExtractionSettings(progress=False))


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
            extract(target, scenarios, path, ExtractionSettings(progress=False))
    with pytest.raises(CacheError, match="not a complete apmae attention cache"):
        AttentionCache(foreign)
    with pytest.raises(CacheError, match="do not exist"):
        AttentionCache(tmp_path / "missing.rank0.h5")


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_damaged_pattern_chunk_gives_a_clear_error(target, scenarios, compression, tmp_path):
    """Uncompressed chunks carry a Fletcher-32 checksum, deflated ones zlib's Adler-32: damage is detected."""
    path = shard_path(tmp_path, "target-a", 0)
    extract(target, scenarios.subset(np.arange(4)), path, ExtractionSettings(progress=False, compression=compression))
    damaged = tmp_path / "damaged.rank0.h5"
    data = bytearray(path.read_bytes())
    with h5py.File(path, "r") as f:
        offset = f["patterns"].id.get_chunk_info(0).byte_offset  # first chunk
    data[offset + 16:offset + 80] = b"\x13" * 64
    damaged.write_bytes(bytes(data))
    cache = AttentionCache(damaged)
    with pytest.raises(CacheError, match="corrupt"):
        cache.pattern(0, 0, 0)


def test_rank_shards_merge_into_the_single_process_cache(cache_path, target, scenarios, tmp_path):
    for rank in (0, 1):
        result = extract(target, scenarios, shard_path(tmp_path, "target-a", rank),
                         ExtractionSettings(batch_size=4, progress=False), rank=rank, world_size=2)
        assert result.rows == 15
    files = cache_files(tmp_path, "target-a")
    assert [p.name for p in files] == ["target-a.rank0.h5", "target-a.rank1.h5"]
    _assert_same_cache(AttentionCache(files), AttentionCache(cache_path))
    _assert_same_cache(AttentionCache(str(tmp_path / "target-a.rank*.h5")), AttentionCache(cache_path))
    with pytest.raises(CacheError, match="one of 2 shards but 1 were given"):
        AttentionCache(files[:1])
    with pytest.raises(CacheError, match="repeat ranks \\[0, 0\\]"):  # two files, yet every odd row missing
        AttentionCache([files[0], files[0]])


def test_a_shard_cannot_be_resumed_under_another_world_size(target, scenarios, tmp_path):
    path = shard_path(tmp_path, "target-a", 0)
    spec = CacheSpec(target=target.summary(), seq_len=24, scenario_fingerprint=scenarios.fingerprint(),
                     n_scenarios=30, shard_rank=0, shard_world_size=2)
    CacheWriter.open(path, spec, scenarios).close()
    with pytest.raises(CacheMismatchError, match="shard_world_size: file has 2, this run 1"):
        extract(target, scenarios, path, ExtractionSettings(progress=False))


def test_every_encoding_and_compression_stores_the_same_patterns(cache_path, target, scenarios, tmp_path):
    """gzip chunks are deflated in Python threads and written raw: HDF5's own filters must read them back."""
    with h5py.File(cache_path, "r") as f:  # the defaults
        assert f["patterns"].dtype == np.uint8 and f["patterns"].compression is None
        assert f.attrs["encoding"] == "bfloat16-14bit"
    reference = AttentionCache(cache_path)
    for encoding, compression in [("bfloat16-14bit", "gzip"), ("bfloat16-14bit", "lzf"), ("bfloat16-bits", "none"),
                                  ("bfloat16-bits", "gzip")]:
        path = shard_path(tmp_path / f"{encoding}-{compression}", "target-a", 0)
        extract(target, scenarios, path,
                ExtractionSettings(batch_size=7, progress=False, compression=compression, encoding=encoding))
        with h5py.File(path, "r") as f:
            assert f["patterns"].compression == (None if compression == "none" else compression)
            assert f["patterns"].dtype == (np.uint8 if encoding == "bfloat16-14bit" else np.uint16)
        _assert_same_cache(AttentionCache(path), reference)
    with pytest.raises(ValueError, match="compression='zstd'"):
        extract(target, scenarios, tmp_path / "z.rank0.h5", ExtractionSettings(progress=False, compression="zstd"))
    with pytest.raises(ValueError, match="encoding='float8'"):
        extract(target, scenarios, tmp_path / "e.rank0.h5", ExtractionSettings(progress=False, encoding="float8"))


def test_a_cache_is_never_resumed_in_another_encoding(cache_path, target, scenarios):
    with pytest.raises(CacheMismatchError, match="encoding: file has 'bfloat16-14bit', this run 'bfloat16-bits'"):
        extract(target, scenarios, cache_path, ExtractionSettings(progress=False, encoding="bfloat16-bits"))


@pytest.mark.parametrize("workers", [1, 3])
def test_any_number_of_workers_writes_the_same_rows_in_order(cache_path, target, scenarios, workers, tmp_path):
    path = shard_path(tmp_path, "target-a", 0)
    extract(target, scenarios, path, ExtractionSettings(batch_size=4, workers=workers, progress=False))
    _assert_same_cache(AttentionCache(path), AttentionCache(cache_path))
    with pytest.raises(ValueError, match="workers=0"):
        extract(target, scenarios, tmp_path / "w.rank0.h5", ExtractionSettings(workers=0, progress=False))


def test_append_rejects_patterns_of_the_wrong_shape(target, scenarios, tmp_path):
    spec = CacheSpec(target=target.summary(), seq_len=scenarios.seq_len, scenario_fingerprint=scenarios.fingerprint(),
                     n_scenarios=len(scenarios))
    with CacheWriter.open(shard_path(tmp_path, "x", 0), spec, scenarios) as writer:
        raw = np.zeros((2, target.n_layers, target.n_heads, scenarios.seq_len * (scenarios.seq_len + 1) // 2),
                       np.uint16)
        with pytest.raises(ValueError, match="encode them with CacheWriter.encode"):
            writer.append(raw, [0, 0], [0.0, 0.0], [0, 0], [0.0, 0.0])
        writer.append(writer.encode(raw), [0, 0], [0.0, 0.0], [0, 0], [0.0, 0.0])
        assert writer.committed == 2


def test_ensure_cache_builds_once_then_reuses_and_refuses_other_scenarios(cache_path, target_dir, scenarios,
                                                                         tiny_tokenizer, tmp_path):
    first = ensure_cache(
        str(target_dir), scenarios, tmp_path, ExtractionSettings(device="cpu", batch_size=7, progress=False)
    )
    assert first.name == target_dir.name and [p.name for p in first.files] == [f"{target_dir.name}.rank0.h5"]
    assert (first.extraction.written, first.extraction.rows) == (30, 30)
    _assert_same_cache(AttentionCache(first.files), AttentionCache(cache_path))
    mtime = first.files[0].stat().st_mtime_ns
    again = ensure_cache(str(target_dir), scenarios, tmp_path, ExtractionSettings(device="cpu", progress=False))
    assert again.extraction is None and again.files == first.files and first.files[0].stat().st_mtime_ns == mtime
    other = random_scenarios(30, 24, 500, tiny_tokenizer.convert_tokens_to_ids("<fim_middle>"), seed=9)
    with pytest.raises(CacheMismatchError, match="scenario_fingerprint: file has"):
        ensure_cache(str(target_dir), other, tmp_path, ExtractionSettings(device="cpu", progress=False))
