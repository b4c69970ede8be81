"""Packing lower triangles and the bfloat16 encoding of probabilities."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apmae.cache import decode_patterns, encode_patterns, pack, triangle_size, unpack
from apmae.target import lower_triangle_index


@pytest.mark.parametrize("seq_len", [1, 7, 32])
def test_pack_unpack_round_trip_is_exact(seq_len):
    rng = np.random.default_rng(seq_len)
    full = np.tril(rng.standard_normal((3, 2, seq_len, seq_len)).astype(np.float32))
    packed = pack(full)
    assert packed.shape == (3, 2, triangle_size(seq_len))
    np.testing.assert_array_equal(unpack(packed, seq_len), full)


def test_packed_order_is_row_major_and_matches_the_torch_index():
    full = np.tril(np.arange(16, dtype=np.float32).reshape(4, 4) + 1)
    np.testing.assert_array_equal(pack(full), [1, 5, 6, 9, 10, 11, 13, 14, 15, 16])
    index = lower_triangle_index(4).numpy()
    np.testing.assert_array_equal(full.reshape(-1)[index], pack(full))


def test_unpack_rejects_a_wrong_size():
    with pytest.raises(ValueError, match="does not match S=4"):
        unpack(np.zeros(11, dtype=np.float32), 4)


def test_encoding_never_zeroes_a_probability_and_stays_within_bfloat16_precision():
    rng = np.random.default_rng(0)
    exponents = rng.uniform(-149, 0, size=200_000)  # log2: every float32 decade, subnormals included
    x = (2.0 ** exponents).astype(np.float32)
    x[::7] = 0.0
    x[1] = 1.0
    decoded = decode_patterns(encode_patterns(torch.from_numpy(x)))
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded == 0, x == 0)  # zero if and only if zero
    normal = x >= np.finfo(np.float32).tiny
    rel = np.abs(decoded[normal] - x[normal]) / x[normal]
    assert rel.max() <= 2.0 ** -8  # round to nearest with 8 significant bits: < 0.4 %
    assert decoded[1] == 1.0


def test_bfloat16_values_round_trip_exactly():
    bits = np.arange(0, 0x7F80, 37, dtype=np.uint16)  # every finite positive bfloat16 sampled
    values = decode_patterns(bits)
    np.testing.assert_array_equal(encode_patterns(torch.from_numpy(values)), bits)
