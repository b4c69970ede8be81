"""Streaming encodings: equal to cache-then-encode, resumable, identity-checked, sharded."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from apmae.cache.settings import ExtractionSettings
from apmae.cache.store import AttentionCache, shard_path
from apmae.encodings.store import (ARRAYS, COLUMNS, WIDE, EncodingSet, EncodingsError, EncodingsMismatchError,
                                   ensure_encodings)
from apmae.cache.extract import extract
from apmae.mining.scenario_set import ScenarioSet
from apmae.encodings.stream import stream_encodings
from tests.cache.conftest import SEQ_LEN
from tests.stream.conftest import micro_apmae


def assert_same_encodings(got: EncodingSet, want: EncodingSet) -> None:
    """Same identity and columns exactly; encodings at most one float16 step apart; statistics to float32.

    The target's float outputs depend (in the last bits) on which scenarios share a batch,
    so callers give both runs batches of the same scenarios.
    """
    assert got.identity == want.identity
    for name in COLUMNS:
        np.testing.assert_array_equal(got.columns[name], want.columns[name], err_msg=name)
    for kind in WIDE:
        a, b = got.array(kind).astype(np.float32), want.array(kind).astype(np.float32)
        step = np.spacing(np.maximum(np.abs(a), np.abs(b)).astype(np.float16)).astype(np.float32)
        assert np.all(np.abs(a - b) <= step), kind
    for name in ("stats", "row", "row_attention"):
        np.testing.assert_allclose(got.array(name), want.array(name), rtol=1e-5, atol=1e-6, err_msg=name)


class Stop(Exception):
    pass


def _stop_after(batches: int):
    seen = []

    def on_batch(committed: int) -> None:
        seen.append(committed)
        if len(seen) == batches:
            raise Stop

    return on_batch


def _stream(target, scenarios, net, path, batch_size=4, workers=2, **kwargs):
    return stream_encodings(target, scenarios, net, path, {"batch_size": batch_size, "workers": workers,
                                                           "progress": False}, **kwargs)


def test_stream_equals_pattern_cache_then_encode(target, scenarios, net, tmp_path):
    extract(target, scenarios, shard_path(tmp_path, "cache", 0), ExtractionSettings(batch_size=4, progress=False))
    cache = AttentionCache(shard_path(tmp_path, "cache", 0))
    from_cache = ensure_encodings(net, cache, tmp_path / "from-cache.h5", batch_size=4, progress=False)
    result = _stream(target, scenarios, net, shard_path(tmp_path, "stream", 0), batch_size=4, workers=1)
    streamed = EncodingSet(result.path)
    assert (result.rows, result.written) == (len(scenarios), len(scenarios))
    assert_same_encodings(streamed, from_cache)
    assert streamed.correct.any() and not streamed.correct.all()  # the half-correct fixture, outcomes included
    cls = streamed.array("cls").astype(np.float32)
    assert np.abs(cls - cls.mean(axis=(0, 1, 2))).max() > 0.1  # heads differ: the comparison is not vacuous
    # One identity for both paths: the pattern-cache path accepts the streamed file as its own.
    again = ensure_encodings(net, cache, result.path, progress=False)
    np.testing.assert_array_equal(again.array("cls"), streamed.array("cls"))


def test_stream_writes_encodings_and_columns_only(target, scenarios, net, tmp_path):
    result = _stream(target, scenarios, net, tmp_path / "s.rank0.h5")
    with h5py.File(result.path, "r") as f:
        assert set(f) == {"cls", "mean", "row_mean", "row_attn", "stats", "row", "row_attention", *COLUMNS}
        for kind in ("cls", "mean", "row_mean", "row_attn"):
            assert f[kind].shape == (len(scenarios), 2, 4, 16) and f[kind].dtype == np.float16
        assert f["stats"].shape == (len(scenarios), 2, 4, 4)
        assert f["row"].shape == (len(scenarios), 2, 4, 5)
        assert f["row_attention"].shape == (len(scenarios), 2, 4, SEQ_LEN) and f.attrs["patch_size"] == 8


def test_interrupted_stream_resumes_to_the_same_file(target, scenarios, net, tmp_path):
    path = tmp_path / "s.rank0.h5"
    with pytest.raises(Stop):
        _stream(target, scenarios, net, path, on_batch=_stop_after(2))
    assert EncodingSet(path, require_complete=False).committed == 8
    with pytest.raises(EncodingsError, match="incomplete"):
        EncodingSet(path)
    resumed = _stream(target, scenarios, net, path)
    assert resumed.written == len(scenarios) - 8
    full = _stream(target, scenarios, net, tmp_path / "full.rank0.h5")
    got, want = EncodingSet(path), EncodingSet(full.path)
    for name in COLUMNS:
        np.testing.assert_array_equal(got.columns[name], want.columns[name], err_msg=name)
    for kind in ARRAYS:  # same batches as the uninterrupted run: bit-identical
        np.testing.assert_array_equal(got.array(kind), want.array(kind), err_msg=kind)
    assert _stream(target, scenarios, net, path).written == 0


def _other_scenarios(scenarios: ScenarioSet) -> ScenarioSet:
    changed = scenarios.subset(np.arange(len(scenarios)))
    changed.label_ids[0, 0] += 1
    return changed


@pytest.mark.parametrize("change, field", [
    ("target", "source_fingerprint"), ("encoder", "encoder_hash"), ("scenarios", "source_fingerprint"),
    ("scaler", "scaler"), ("world_size", "shard_world_size")])
def test_a_file_of_another_run_is_refused_and_left_alone(change, field, target, target_b_dir, scenarios, net,
                                                         tmp_path):
    from apmae.target.access import load_target

    path = tmp_path / "s.rank0.h5"
    with pytest.raises(Stop):
        _stream(target, scenarios, net, path, on_batch=_stop_after(1))
    args = {"target": target, "scenarios": scenarios, "net": net}
    kwargs = {}
    if change == "target":
        args["target"] = load_target(target_b_dir, device="cpu")
    elif change == "encoder":
        args["net"] = micro_apmae(seed=1)
    elif change == "scenarios":
        args["scenarios"] = _other_scenarios(scenarios)
    elif change == "scaler":
        kwargs["scaler"] = "log"
    else:
        kwargs["world_size"] = 2
    with pytest.raises(EncodingsMismatchError, match=field):
        _stream(args["target"], args["scenarios"], args["net"], path, **kwargs)
    assert EncodingSet(path, require_complete=False).committed == 4


def test_bad_arguments_are_refused_with_what_to_change(target, scenarios, net, tmp_path):
    with pytest.raises(EncodingsMismatchError, match="S=32 images"):
        _stream(target, scenarios, micro_apmae_of_side(32), tmp_path / "a.h5")
    with pytest.raises(ValueError, match="move the encoder"):
        _stream(target, scenarios, micro_apmae().to("meta"), tmp_path / "b.h5")
    with pytest.raises(ValueError, match="batch_size=0"):
        _stream(target, scenarios, net, tmp_path / "c.h5", batch_size=0)
    with pytest.raises(ValueError, match="unknown scaler"):
        _stream(target, scenarios, net, tmp_path / "d.h5", scaler="loog")
    with pytest.raises(ValueError, match=r"precision='fp8'; use one of \['32', 'bf16-mixed', '16-mixed'\]"):
        _stream(target, scenarios, net, tmp_path / "e.h5", precision="fp8")
    for setting in ({"heads": "layerwise:0.5"}, {"pattern_kind": "contribution"}):
        with pytest.raises(ValueError, match="set pattern_kind: attention and heads: all"):
            stream_encodings(target, scenarios, net, tmp_path / "f.h5", {**setting, "progress": False})
    with pytest.raises(TypeError, match=r"\['batch_size'\] moved into the extraction settings: pass "
                                        r"settings=ExtractionSettings\(batch_size=4\)"):
        stream_encodings(target, scenarios, net, tmp_path / "g.h5", batch_size=4)
    assert not list(tmp_path.iterdir())


def micro_apmae_of_side(seq_len: int):
    from apmae.model.net import APMAE, APMAEConfig
    from tests.stream.conftest import MICRO_APMAE

    return APMAE(APMAEConfig(**{**MICRO_APMAE, "seq_len": seq_len}))


def test_rank_shards_merge_into_the_single_file_in_scenario_order(target, scenarios, net, tmp_path):
    one = {"batch_size": 1}  # the same batches whatever the sharding
    single = EncodingSet(_stream(target, scenarios, net, shard_path(tmp_path / "one", "s", 0), **one).path)
    shards = [_stream(target, scenarios, net, shard_path(tmp_path / "two", "s", rank), rank=rank, world_size=2,
                      **one).path for rank in (0, 1)]
    firsts = [EncodingSet(p, require_complete=False).scenario_index[:3].tolist() for p in shards]
    assert firsts == [[0, 2, 4], [1, 3, 5]]
    merged = EncodingSet(str(tmp_path / "two" / "s.rank*.h5"))
    assert_same_encodings(merged, single)
    on_disk = EncodingSet(shards[::-1])  # not loaded: rows and heads read shard by shard
    rows = np.array([7, 0, 7, 13])
    np.testing.assert_array_equal(on_disk.rows(rows, "mean"), merged.array("mean")[rows])
    np.testing.assert_array_equal(on_disk.head(1, 3, "stats"), merged.array("stats")[:, 1, 3])
    with pytest.raises(EncodingsError, match="one of 2 shards"):
        EncodingSet(shards[:1])
    assert len(EncodingSet(shards[:1], require_complete=False)) == 15


def test_shards_of_different_runs_do_not_merge(target, scenarios, net, tmp_path):
    mine = _stream(target, scenarios, net, shard_path(tmp_path, "a", 0), rank=0, world_size=2).path
    other = _stream(target, scenarios, micro_apmae(seed=1), shard_path(tmp_path, "b", 1), rank=1, world_size=2).path
    with pytest.raises(EncodingsMismatchError, match="encoder_hash"):
        EncodingSet([mine, other])
    with pytest.raises(EncodingsError, match="repeat ranks"):
        EncodingSet([mine, mine])


def test_outcomes_written_with_rows_are_checked(target, scenarios, net, tmp_path):
    from apmae.encodings.store import EncodedRows, EncodingsWriter, placeholder_outcomes
    from apmae.encodings.stream import stream_columns, stream_spec

    spec = stream_spec(target, scenarios, net, scaler="log_normalize")
    rows = np.arange(len(scenarios))
    wide = np.zeros((2, 2, 4, 16), np.float16)
    enc = (EncodedRows(cls=wide, mean=wide, row_mean=wide, row_attn=wide, stats=np.zeros((2, 2, 4, 4), np.float32),
                       row=np.zeros((2, 2, 4, 5), np.float32),
                       row_attention=np.zeros((2, 2, 4, SEQ_LEN), np.float16)),)
    with EncodingsWriter.open(tmp_path / "w.h5", spec, stream_columns(scenarios, rows)) as writer:
        with pytest.raises(ValueError, match="not outcome columns"):
            writer.append(*enc, {"task": np.zeros(2)})
        with pytest.raises(ValueError, match="do not have the 2 rows"):
            writer.append(*enc, {"loss": np.zeros(3)})
        writer.append(*enc, {**placeholder_outcomes(2), "prediction": np.array([7, 9])})
        assert writer.committed == 2
    assert EncodingSet(tmp_path / "w.h5", require_complete=False).columns["prediction"].tolist() == [7, 9]


@pytest.mark.parametrize(("n", "world"), [(29, 3), (4, 5)])  # uneven shards; more ranks than scenarios
def test_uneven_rank_shards_merge_into_the_single_file(target, scenarios, net, tmp_path, n, world):
    some = scenarios.subset(np.arange(n))
    one = {"batch_size": 1}  # the same batches whatever the sharding
    single = EncodingSet(_stream(target, some, net, shard_path(tmp_path / "one", "s", 0), **one).path)
    sizes = [_stream(target, some, net, shard_path(tmp_path / "many", "s", rank), rank=rank, world_size=world,
                     **one).rows for rank in range(world)]
    assert sizes == [len(range(rank, n, world)) for rank in range(world)]
    merged = EncodingSet(str(tmp_path / "many" / "s.rank*.h5"))
    np.testing.assert_array_equal(merged.scenario_index, np.arange(n))  # no row lost, none twice
    assert_same_encodings(merged, single)


def test_a_stream_rank_outside_the_world_is_refused(target, scenarios, net, tmp_path):
    with pytest.raises(ValueError, match="rank 3 is outside world size 3"):
        _stream(target, scenarios, net, shard_path(tmp_path, "s", 3), rank=3, world_size=3)
    assert not list(tmp_path.iterdir())
