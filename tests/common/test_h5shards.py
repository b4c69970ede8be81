"""The row-store protocol on a toy store: resume, identity, schema, shard merge."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from apmae.common.h5shards import (RowWriter, StoreError, StoreFormat, StoreMessages, open_or_create, read_shards,
                                   shard_files, shard_path, shard_rows)


class ToyError(StoreError):
    """A toy file cannot be used."""


class ToyMismatchError(ToyError):
    """A toy file of another run."""


def _identity(attrs) -> dict:
    return {"name": str(attrs["name"]), "shard_rank": int(attrs["shard_rank"]),
            "shard_world_size": int(attrs["shard_world_size"])}


def _run_identity(attrs) -> dict:
    return {k: v for k, v in _identity(attrs).items() if k != "shard_rank"}


TOY = StoreFormat(
    version=1, rows_dataset="value", rows_attr="n_rows", identity=_identity, shard_identity=_run_identity,
    error=ToyError, mismatch_error=ToyMismatchError,
    messages=StoreMessages(noun="toy file", short_noun="toy", shards_noun="toy shards", schema="toy",
                           remedy="delete it", foreign="not a toy file ({error}); delete it",
                           refusal="was written for a different run ({diffs}); delete it",
                           resume="write it again", hints={"name": "another toy"}))


class ToyWriter(RowWriter):
    def append(self, index: np.ndarray, value: np.ndarray) -> None:
        lo, hi = self._reserve(len(index))
        self._f["scenario_index"][lo:hi] = index
        self._f["value"][lo:hi] = value
        self._commit(hi)


def open_toy(path: Path, *, name: str = "a", rank: int = 0, world: int = 1, n: int = 6) -> ToyWriter:
    """A toy shard of ``n`` scenarios: rank ``rank`` of ``world`` holds ``shard_rows(n, rank, world)``."""
    rows = len(shard_rows(n, rank, world))
    identity = {"name": name, "shard_rank": rank, "shard_world_size": world}

    def lay_out(f: h5py.File) -> None:
        f.create_dataset("scenario_index", shape=(rows,), dtype=np.int64)
        f.create_dataset("value", shape=(rows,), dtype=np.float64)
        f.attrs.update({**identity, "n_rows": rows})

    return ToyWriter(path, open_or_create(path, TOY, identity, lay_out), n_rows=rows)


def write_shard(directory: Path, rank: int, world: int, *, index: np.ndarray | None = None, name: str = "a") -> Path:
    path = shard_path(directory, "toy", rank)
    index = shard_rows(6, rank, world) if index is None else index
    with open_toy(path, name=name, rank=rank, world=world) as w:
        w.append(index, 10.0 * index)
    return path


def test_a_new_file_appears_whole_with_nothing_committed(tmp_path):
    path = tmp_path / "t.h5"
    path.with_name("t.h5.creating").write_bytes(b"left by a kill during creation")
    with open_toy(path) as w:
        assert (w.committed, w.n_rows, w.complete) == (0, 6, False)
    with h5py.File(path, "r") as f:
        assert (f.attrs["schema_version"], f.attrs["committed"], f.attrs["name"]) == (1, 0, "a")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.h5"]


def test_resume_after_an_uncommitted_write_keeps_only_committed_rows(tmp_path):
    path = tmp_path / "t.h5"
    with open_toy(path) as w:
        w.append(np.array([0, 1]), np.array([0.0, 10.0]))
    with h5py.File(path, "r+") as f:  # a batch written and flushed, then killed before its commit
        f["scenario_index"][2:4] = [99, 98]
        f["value"][2:4] = -1.0
    with pytest.raises(ToyError, match="toy .* is incomplete \\(2 of 6 rows\\); write it again"):
        read_shards([path], TOY, ["value"])
    partial = read_shards([path], TOY, ["value"], require_complete=False)
    assert partial.columns["scenario_index"].tolist() == [0, 1] and partial.columns["value"].tolist() == [0.0, 10.0]
    with open_toy(path) as w:
        assert w.committed == 2
        w.append(np.arange(2, 6), 10.0 * np.arange(2, 6))
        assert w.complete
        with pytest.raises(ValueError, match="appending 1 rows overruns the file's 6 rows"):
            w.append(np.array([6]), np.array([60.0]))
    merged = read_shards([path], TOY, ["value"])
    assert merged.columns["scenario_index"].tolist() == [0, 1, 2, 3, 4, 5]
    assert merged.columns["value"].tolist() == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]


def test_a_file_of_another_run_is_refused_naming_the_key(tmp_path):
    path = tmp_path / "t.h5"
    with open_toy(path) as w:
        w.append(np.array([0]), np.array([0.0]))
    with pytest.raises(ToyMismatchError, match=r"toy file .*t\.h5 was written for a different run "
                                               r"\(name: file has 'a', this run 'b' \(another toy\)\); delete it"):
        open_toy(path, name="b")
    with pytest.raises(ToyMismatchError, match="shard_world_size: file has 1, this run 2") as raised:
        open_toy(path, world=2)
    assert "name" not in str(raised.value)  # only the keys that differ
    with h5py.File(path, "r") as f:
        assert f.attrs["committed"] == 1 and f.attrs["name"] == "a"  # refused files are never written


def test_damaged_foreign_or_other_schema_files_are_refused(tmp_path):
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not hdf5" * 64)
    with pytest.raises(ToyError, match="toy file .* is truncated or corrupt .*; delete it"):
        open_toy(garbage)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(ToyError, match="is not a toy file"):
        read_shards([foreign], TOY, [])
    path = tmp_path / "t.h5"
    open_toy(path).close()
    with h5py.File(path, "r+") as f:
        f.attrs["schema_version"] = 9
    with pytest.raises(ToyError, match="has toy schema 9, this apmae reads 1; delete it"):
        open_toy(path)
    with h5py.File(path, "r+") as f:
        f.attrs.update({"schema_version": 1, "committed": 7})
    with pytest.raises(ToyError, match="claims 7 committed rows but holds 6"):
        read_shards([path], TOY, [])


def test_two_shards_merge_in_scenario_index_order(tmp_path):
    rank0, rank1 = write_shard(tmp_path, 0, 2), write_shard(tmp_path, 1, 2)
    merged = read_shards([rank1, rank0], TOY, ["value"])
    assert merged.columns["scenario_index"].tolist() == [0, 1, 2, 3, 4, 5]
    assert merged.columns["value"].tolist() == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]
    assert merged.shard_of.tolist() == [1, 0, 1, 0, 1, 0]  # shards in the order given: rank 1 first
    assert merged.local.tolist() == [0, 0, 1, 1, 2, 2]
    assert [s.committed for s in merged.shards] == [3, 3]
    assert shard_files(tmp_path, "toy") == [rank0, rank1]


def test_shards_that_overlap_repeat_miss_or_mix_runs_are_refused(tmp_path):
    rank0 = write_shard(tmp_path, 0, 2)
    overlapping = write_shard(tmp_path / "o", 1, 2, index=np.array([1, 2, 5]))
    with pytest.raises(ToyError, match=r"toy shards .* hold scenarios \[2\] more than once"):
        read_shards([rank0, overlapping], TOY, [])
    with pytest.raises(ToyError, match="repeat ranks \\[0, 0\\]"):
        read_shards([rank0, rank0], TOY, [])
    with pytest.raises(ToyError, match="toy .* is one of 2 shards but 1 were given"):
        read_shards([rank0], TOY, [])
    assert len(read_shards([rank0], TOY, [], require_complete=False).local) == 3
    other = write_shard(tmp_path / "b", 1, 2, name="b")
    with pytest.raises(ToyMismatchError, match=r"belong to different runs \(name: file has 'b', this run 'a'"):
        read_shards([rank0, other], TOY, [])


def test_shard_files_are_found_in_rank_order(tmp_path):
    for name in ("run.rank10.h5", "run.rank2.h5", "run.rank0.h5", "run.rankx.h5", "run.other.rank1.h5"):
        (tmp_path / name).touch()
    assert [p.name for p in shard_files(tmp_path, "run")] == ["run.rank0.h5", "run.rank2.h5", "run.rank10.h5"]
    assert shard_rows(7, 1, 3).tolist() == [1, 4]
    with pytest.raises(ValueError, match="rank 3 is outside world size 3"):
        shard_rows(7, 3, 3)
