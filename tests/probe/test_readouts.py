"""Prediction-row scalars and AP-MAE row readouts, against a second computation written out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apmae.cache.store import AttentionCache
from apmae.encodings.readouts import ROW_FEATURE_NAMES, row_features, row_readouts
from apmae.encodings.store import ensure_encodings
from apmae.model.scaling import scale
from tests.probe.synthetic_cache import planted_patterns, write_planted_cache
from tests.probe.test_encodings import micro_net


def _row_by_hand(pattern: np.ndarray, ids: np.ndarray, q: int) -> list[float]:
    a = pattern[q, :q + 1].astype(np.float64)
    entropy = -sum(x * np.log(x) for x in a if x > 0)
    previous = a[q - 1] if q > 0 else 0.0
    repeat = sum(a[j] for j in range(q) if ids[j] == ids[q])
    return [entropy, previous, a[0], a.max(), repeat]


def test_row_scalars_equal_a_loop_over_heads_at_any_scored_position():
    patterns = planted_patterns(np.array([True, False, True]), layers=2, heads=3, seq_len=12, planted=(1, 2), seed=3)
    ids = np.array([[5, 7, 5, 9, 7, 5, 1, 2, 3, 5, 7, 5], [1] * 12, [2, 3, 4, 5, 6, 7, 8, 9, 1, 2, 3, 4]])
    query = np.array([11, 6, 0])  # the last row, a middle row whose token repeats everywhere, the first row
    got = row_features(patterns, ids, query).numpy()
    assert got.shape == (3, 2, 3, len(ROW_FEATURE_NAMES))
    for b in range(3):
        for layer in range(2):
            for head in range(3):
                want = _row_by_hand(patterns[b, layer, head].numpy(), ids[b], int(query[b]))
                np.testing.assert_allclose(got[b, layer, head], want, rtol=1e-5, atol=1e-6)
    assert got[0, 0, 0, 4] > 0 and got[2, 0, 0, 1] == 0  # copies of token 5 found; row 0 has no previous token


def test_row_readouts_pick_the_patches_of_the_scored_row_and_weight_them_by_its_attention():
    g, p, dim = 4, 3, 5  # S = 12, Q = 10 patches
    tokens = torch.randn(2, g * (g + 1) // 2, dim)
    rows = torch.zeros(2, g * p)
    rows[0, [0, 4, 11]] = torch.tensor([0.5, 0.3, 0.2])  # query 11: grid row 3, patches 6..9
    rows[1, [1, 6]] = torch.tensor([0.25, 0.75])  # query 7: grid row 2, patches 3..5
    mean, weighted = row_readouts(tokens, rows, torch.tensor([11, 7]), p)
    torch.testing.assert_close(mean[0], tokens[0, 6:10].mean(0))
    torch.testing.assert_close(weighted[0], 0.5 * tokens[0, 6] + 0.3 * tokens[0, 7] + 0.2 * tokens[0, 9])
    torch.testing.assert_close(mean[1], tokens[1, 3:6].mean(0))
    torch.testing.assert_close(weighted[1], 0.25 * tokens[1, 3] + 0.75 * tokens[1, 5])


@pytest.mark.parametrize("row", [3, 10])
def test_stored_readouts_and_row_scalars_equal_a_direct_computation(tmp_path, row):
    cache = AttentionCache(write_planted_cache(tmp_path, n=12))
    net = micro_net()
    enc = ensure_encodings(net, cache, tmp_path / "e.h5", batch_size=5, progress=False)
    layer, head, s = 1, 2, cache.seq_len
    pattern = cache.pattern(row, layer, head)
    image = scale(torch.from_numpy(pattern)[None, None], "log_normalize")
    with torch.no_grad():
        tokens = net.encode(image).tokens[0]  # (Q, D)
    first = (s // net.config.patch_size - 1) * (s // net.config.patch_size) // 2  # first patch of the bottom grid row
    bottom = tokens[first:]
    np.testing.assert_allclose(enc.rows([row], "row_mean")[0, layer, head], bottom.mean(0).numpy(),
                               atol=2e-3, rtol=2e-3)
    mass = pattern[-1].reshape(-1, net.config.patch_size).sum(1)
    np.testing.assert_allclose(enc.rows([row], "row_attn")[0, layer, head], (mass[:, None] * bottom.numpy()).sum(0),
                               atol=2e-3, rtol=2e-3)
    np.testing.assert_allclose(enc.rows([row], "row")[0, layer, head],
                               _row_by_hand(pattern, cache.input_ids[row], s - 1), rtol=1e-4, atol=1e-6)
