"""Damaged, foreign, future and miscounted attention caches and encodings files: each a clear store error."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from apmae.cache.store import AttentionCache, CacheError
from apmae.encodings.store import EncodingSet, EncodingsError, ensure_encodings
from apmae.model.net import APMAE
from tests.faults.damage import damaged_chunk, flipped, truncated, with_attrs
from tests.probe.synthetic_cache import write_planted_cache

MICRO = dict(seq_len=16, patch_size=4, enc_dim=16, enc_depth=1, enc_heads=2, enc_mlp=32, dec_dim=16, dec_depth=1,
             dec_heads=2, dec_mlp=32)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    (cache_path,) = write_planted_cache(root / "cache", n=20, layers=2, heads=2, seq_len=16, planted=(1, 1))
    torch.manual_seed(0)
    net = APMAE.from_preset("tiny", **MICRO).eval()
    encodings_path = root / "enc.rank0.h5"
    ensure_encodings(net, AttentionCache(cache_path), encodings_path, progress=False)
    return {"cache": cache_path, "encodings": encodings_path, "net": net}


def read_cache(path):
    cache = AttentionCache(path)
    return [cache.scenario(i) for i in range(len(cache))]


def read_encodings(path):
    return EncodingSet(path).load()


STORES = {"cache": (read_cache, CacheError, "attention cache", "delete it to rebuild"),
          "encodings": (read_encodings, EncodingsError, "encodings file", "delete it to recompute")}


@pytest.mark.parametrize("store", STORES)
def test_a_truncated_file_says_to_delete_it(files, tmp_path, store):
    read, error, noun, remedy = STORES[store]
    for fraction in (0.0, 0.3, 0.9):
        cut = truncated(files[store], tmp_path / "cut.rank0.h5", fraction)
        with pytest.raises(error, match=rf"{noun} {cut} is truncated or corrupt .*{remedy}"):
            read(cut)


@pytest.mark.parametrize("store", STORES)
def test_a_damaged_superblock_is_named(files, tmp_path, store):
    read, error, noun, remedy = STORES[store]
    damaged = flipped(files[store], tmp_path / "head.rank0.h5", at=0, n=8)
    with pytest.raises(error, match=rf"{noun} .* is truncated or corrupt \(.*file signature not found.*{remedy}"):
        read(damaged)


@pytest.mark.parametrize(("store", "dataset"), [("cache", "correct"), ("cache", "scenario_index"),
                                                ("encodings", "cls"), ("encodings", "stats"),
                                                ("encodings", "correct")])
def test_a_damaged_chunk_fails_its_checksum(files, tmp_path, store, dataset):
    """Every numeric dataset carries a Fletcher-32 checksum: a flipped byte is an error, not a wrong value."""
    read, error, noun, remedy = STORES[store]
    with h5py.File(files[store], "r") as f:
        assert f[dataset].fletcher32
    damaged = damaged_chunk(files[store], tmp_path / "chunk.rank0.h5", dataset)
    with pytest.raises(error, match=rf"{damaged} .*corrupt.*{remedy}"):
        read(damaged)


@pytest.mark.parametrize("store", STORES)
def test_a_file_of_a_newer_schema_names_both_versions(files, tmp_path, store):
    read, error, noun, remedy = STORES[store]
    with h5py.File(files[store], "r") as f:
        current = int(f.attrs["schema_version"])
    future = with_attrs(files[store], tmp_path / "future.rank0.h5", schema_version=current + 1)
    with pytest.raises(error, match=rf"schema {current + 1}, this apmae reads {current}; {remedy} \(a newer apmae "
                                    "wrote it: upgrade apmae"):
        read(future)


@pytest.mark.parametrize("store", STORES)
def test_a_committed_count_that_disagrees_with_the_rows_is_refused(files, tmp_path, store):
    read, error, noun, remedy = STORES[store]
    over = with_attrs(files[store], tmp_path / "over.rank0.h5", committed=21)
    with pytest.raises(error, match=rf"claims 21 committed rows but holds 20; {remedy}"):
        read(over)
    negative = with_attrs(files[store], tmp_path / "negative.rank0.h5", committed=-1)
    with pytest.raises(error, match=rf"claims -1 committed rows but holds 20; {remedy}"):
        read(negative)
    short = with_attrs(files[store], tmp_path / "short.rank0.h5", committed=7)
    with pytest.raises(error, match=r"is incomplete \(7 of 20 rows\); run the .* again to resume it"):
        read(short)


def test_an_incomplete_file_reads_only_its_committed_rows(files, tmp_path):
    short = with_attrs(files["cache"], tmp_path / "short.rank0.h5", committed=7)
    cache, full = AttentionCache(short, require_complete=False), AttentionCache(files["cache"])
    assert len(cache) == 7
    np.testing.assert_array_equal(cache.scenario(6), full.scenario(6))
    partial = EncodingSet(with_attrs(files["encodings"], tmp_path / "e.rank0.h5", committed=7), require_complete=False)
    np.testing.assert_array_equal(partial.array("cls"), EncodingSet(files["encodings"]).array("cls")[:7])


@pytest.mark.parametrize("store", STORES)
def test_a_foreign_hdf5_file_is_refused(tmp_path, store):
    read, error, noun, remedy = STORES[store]
    foreign = tmp_path / "foreign.rank0.h5"
    with h5py.File(foreign, "w") as f:
        f["weights"] = np.zeros(3)
    with pytest.raises(error, match=rf"{foreign} is not a"):
        read(foreign)
