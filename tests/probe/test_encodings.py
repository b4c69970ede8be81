"""Encodings files: agreement with a direct encoder call, statistics by hand, refusal of foreign files, resume."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from apmae.cache.store import AttentionCache
from apmae.encodings.store import (EncodingSet, EncodingsMismatchError, encoder_hash, ensure_encodings,
                                   iter_scenario_patterns, pattern_stats)
from apmae.model.net import APMAE
from apmae.model.scaling import scale
from tests.probe.synthetic_cache import write_planted_cache

MICRO = dict(seq_len=32, patch_size=8, enc_dim=32, enc_depth=1, enc_heads=2, enc_mlp=64, dec_dim=32, dec_depth=1,
             dec_heads=2, dec_mlp=64)


def micro_net(seed: int = 0) -> APMAE:
    torch.manual_seed(seed)
    return APMAE.from_preset("tiny", **MICRO).eval()


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> AttentionCache:
    return AttentionCache(write_planted_cache(tmp_path_factory.mktemp("c"), n=24))


def test_stored_encodings_equal_a_direct_encoder_call(cache, tmp_path) -> None:
    net = micro_net()
    enc = ensure_encodings(net, cache, tmp_path / "e.h5", batch_size=5, progress=False)
    row, layer, head = 7, 1, 3
    image = scale(torch.from_numpy(cache.pattern(row, layer, head))[None, None], "log_normalize")
    with torch.no_grad():
        direct = net.encode(image)
    np.testing.assert_allclose(enc.rows([row], "cls")[0, layer, head], direct.cls[0].numpy(), atol=2e-3, rtol=2e-3)
    np.testing.assert_allclose(enc.head(layer, head, "mean")[row], direct.mean[0].numpy(), atol=2e-3, rtol=2e-3)
    np.testing.assert_array_equal(enc.correct, cache.correct)
    np.testing.assert_array_equal(enc.columns["scenario_index"], cache.columns["scenario_index"])


def test_pattern_statistics_by_hand() -> None:
    a = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.0, 1.0, 0.0]])
    entropy, distance, first, diagonal = pattern_stats(a).tolist()
    assert entropy == pytest.approx(np.log(2) / 3, rel=1e-5)  # only row 1 is spread
    assert distance == pytest.approx((0 + 0.5 + 1) / 3)
    assert first == pytest.approx((0.5 + 0.0) / 2)  # rows 1 and 2
    assert diagonal == pytest.approx((1 + 0.5 + 0) / 3)


def test_another_encoder_is_refused_with_a_message(cache, tmp_path) -> None:
    ensure_encodings(micro_net(0), cache, tmp_path / "e.h5", progress=False)
    with pytest.raises(EncodingsMismatchError, match="another AP-MAE encoder"):
        ensure_encodings(micro_net(1), cache, tmp_path / "e.h5", progress=False)
    with pytest.raises(EncodingsMismatchError, match="scaler"):
        ensure_encodings(micro_net(0), cache, tmp_path / "e.h5", scaler="log", progress=False)


def test_another_cache_is_refused(cache, tmp_path) -> None:
    other = AttentionCache(write_planted_cache(tmp_path / "other", n=24, seed=5))
    ensure_encodings(micro_net(), cache, tmp_path / "e.h5", progress=False)
    with pytest.raises(EncodingsMismatchError, match="other scenarios or another target"):
        ensure_encodings(micro_net(), other, tmp_path / "e.h5", progress=False)


def test_an_interrupted_file_resumes_to_the_same_contents(cache, tmp_path) -> None:
    net = micro_net()
    full = ensure_encodings(net, cache, tmp_path / "full.h5", batch_size=4, progress=False).load()
    partial = tmp_path / "partial.h5"
    ensure_encodings(net, cache, partial, batch_size=4, progress=False)
    with h5py.File(partial, "r+") as f:  # as if killed after two batches: rows past `committed` are garbage
        f.attrs["committed"] = 8
        f["cls"][8:] = 0
    with pytest.raises(ValueError, match="incomplete"):
        EncodingSet(partial)
    resumed = ensure_encodings(net, cache, partial, batch_size=4, progress=False).load()
    np.testing.assert_array_equal(resumed.array("cls"), full.array("cls"))
    np.testing.assert_array_equal(resumed.array("stats"), full.array("stats"))


def test_encoder_hash_follows_the_weights() -> None:
    a, b = micro_net(0), micro_net(0)
    assert encoder_hash(a) == encoder_hash(b)
    with torch.no_grad():
        b.patch_embed.weight[0, 0] += 1e-3
    assert encoder_hash(a) != encoder_hash(b)


def test_a_file_that_is_not_encodings_is_refused(tmp_path) -> None:
    path = Path(tmp_path) / "junk.h5"
    path.write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="corrupt"):
        EncodingSet(path)


def test_prefetched_batches_are_the_batches_read_in_turn(cache) -> None:
    read = list(iter_scenario_patterns(cache, 3, 5, prefetch=False))
    ahead = list(iter_scenario_patterns(cache, 3, 5))
    assert [len(b) for b in ahead] == [5, 5, 5, 5, 1]  # rows 3..23
    for a, b in zip(read, ahead, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ahead[0][0], cache.scenario(3))


class _FailingCache:
    """Rows 0-5 of a real cache, whose row 4 cannot be read."""

    def __init__(self, cache: AttentionCache) -> None:
        self.cache = cache

    def __len__(self) -> int:
        return 6

    def scenario(self, i: int) -> np.ndarray:
        if i == 4:
            raise OSError("row 4 is unreadable")
        return self.cache.scenario(i)


def test_a_read_error_in_the_prefetch_thread_reaches_the_caller_after_the_good_batches(cache) -> None:
    batches = iter_scenario_patterns(_FailingCache(cache), 0, 2)
    assert len(next(batches)) == 2 and len(next(batches)) == 2
    with pytest.raises(OSError, match="row 4"):
        next(batches)
