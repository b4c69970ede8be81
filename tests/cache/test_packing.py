"""Packing lower triangles and the bfloat16 encoding of probabilities."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apmae.cache.codec import (decode_patterns, decode_stored, encode_attentions, encode_patterns, encode_stored,
                         from_14bit, packed_width, stored_attentions, to_14bit, to_14bit_torch,
                         triangle_bits_torch)
from apmae.common.triangle import from_triangle, lower_triangle_index, to_triangle


@pytest.mark.parametrize("seq_len", [1, 7, 32])
def test_pack_unpack_round_trip_is_exact(seq_len):
    rng = np.random.default_rng(seq_len)
    full = np.tril(rng.standard_normal((3, 2, seq_len, seq_len)).astype(np.float32))
    packed = to_triangle(full)
    assert packed.shape == (3, 2, {1: 1, 7: 28, 32: 528}[seq_len])
    np.testing.assert_array_equal(from_triangle(packed, seq_len), full)


def test_packed_order_is_row_major_and_matches_the_flat_index():
    full = np.tril(np.arange(16, dtype=np.float32).reshape(4, 4) + 1)
    np.testing.assert_array_equal(to_triangle(full), [1, 5, 6, 9, 10, 11, 13, 14, 15, 16])
    index = lower_triangle_index(4)
    np.testing.assert_array_equal(index, [0, 4, 5, 8, 9, 10, 12, 13, 14, 15])
    np.testing.assert_array_equal(full.reshape(-1)[index], to_triangle(full))


def test_unpack_rejects_a_wrong_size():
    with pytest.raises(ValueError, match="does not match S=4"):
        from_triangle(np.zeros(11, dtype=np.float32), 4)


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


@pytest.mark.parametrize("n", [1, 3, 4, 5, 31, 32, 33, 528])
def test_14bit_packing_is_a_lossless_little_endian_bit_stream(n):
    bits = np.random.default_rng(n).integers(0, 0x4000, size=(2, 3, n)).astype(np.uint16)
    bits[0, 0, 0] = 0x3F80  # 1.0
    bits[0, 0, -1] = 0x3FFF  # every payload bit set
    stored = to_14bit(bits)
    assert stored.dtype == np.uint8 and stored.shape == (2, 3, packed_width(n)) == (2, 3, 7 * -(-n // 4))
    np.testing.assert_array_equal(from_14bit(stored, n), bits)
    stream = int.from_bytes(stored[1, 2].tobytes(), "little")
    assert [(stream >> (14 * i)) & 0x3FFF for i in range(n)] == bits[1, 2].tolist()


def test_14bit_packing_refuses_values_outside_zero_to_two():
    for value in (2.0, -0.5, float("nan")):
        bits = encode_patterns(torch.tensor([0.5, value]))
        with pytest.raises(ValueError, match="outside \\[0, 2\\).*bfloat16-bits"):
            to_14bit(bits)
    with pytest.raises(ValueError, match="do not hold"):
        from_14bit(np.zeros(8, np.uint8), 4)


@pytest.mark.parametrize("encoding", ["bfloat16-14bit", "bfloat16-bits"])
def test_both_encodings_decode_to_the_same_bfloat16_values(encoding):
    x = torch.softmax(torch.randn(3, 2, 36) * 8, dim=-1)
    bits = encode_patterns(x)
    np.testing.assert_array_equal(decode_stored(encode_stored(bits, encoding), encoding, 36), decode_patterns(bits))


def test_encode_attentions_gathers_and_rounds_like_the_reference():
    seq_len = 9
    causal = torch.ones(seq_len, seq_len, dtype=torch.bool).triu(1)
    layers = [torch.softmax(torch.randn(2, 3, seq_len, seq_len).masked_fill(causal, float("-inf")), -1)
              for _ in range(2)]
    layers[1][1, 2, 5, 3] = 1e-44  # a float32 subnormal that bfloat16 rounding would flush to zero
    layers[0][0, 1, 6, 0] = 0.0  # a true zero stays zero
    bits = encode_attentions(layers)
    lower = ~causal  # boolean indexing walks the triangle row-major: a second gather, independent of the index
    reference = encode_patterns(torch.stack([a[..., lower] for a in layers], dim=1))
    np.testing.assert_array_equal(bits, reference)
    packed = decode_patterns(bits)
    assert packed[1, 1, 2, 5 * 6 // 2 + 3] > 0  # row 5 starts after 1 + 2 + 3 + 4 + 5 cells
    assert packed[0, 0, 1, 6 * 7 // 2 + 0] == 0


# ---------------------------------------------------------------- the torch (device) path, run on CPU tensors


def _as_int16(bits: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(bits).view(np.int16))


@pytest.mark.parametrize("n", [1, 3, 4, 5, 31, 32, 33, 528])
def test_torch_14bit_packing_is_byte_identical_to_numpy(n):
    bits = np.random.default_rng(n).integers(0, 0x4000, size=(2, 3, n)).astype(np.uint16)
    bits[0, 0, 0], bits[0, 0, -1], bits[1, 1, 0] = 0x3F80, 0x3FFF, 0  # 1.0, every payload bit, zero
    stored = to_14bit_torch(_as_int16(bits))
    assert stored.dtype == torch.uint8
    np.testing.assert_array_equal(stored.numpy(), to_14bit(bits))


def test_torch_14bit_packing_refuses_values_outside_zero_to_two():
    for value in (2.0, -0.5, float("nan")):
        bits = encode_patterns(torch.tensor([0.5, value]))
        with pytest.raises(ValueError, match="outside \\[0, 2\\).*bfloat16-bits"):
            to_14bit_torch(_as_int16(bits))


def _real_like_layers(seq_len: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """Softmax patterns with values that need the subnormal repair, a true zero and values just above the edge."""
    causal = torch.ones(seq_len, seq_len, dtype=torch.bool).triu(1)
    gen = torch.Generator().manual_seed(seq_len)
    layers = [torch.softmax((torch.randn(2, 3, seq_len, seq_len, generator=gen) * 6).masked_fill(causal, float("-inf")),
                            -1) for _ in range(3)]
    if dtype == torch.float32:
        # 2**-149 .. 2**-120 down one row: the first few round to zero in bfloat16 (repaired), the rest do not
        layers[1][0, 2, seq_len - 1, :30] = (2.0 ** torch.arange(-149, -119, dtype=torch.float64)).float()
        layers[2][1, 0, 5, 2] = 1e-44
    layers[0][0, 1, 6, 0] = 0.0  # a true zero stays zero
    return [a.to(dtype) for a in layers]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_torch_triangle_bits_equal_numpy_including_the_subnormal_repair(dtype):
    layers = _real_like_layers(40, dtype)
    bits = triangle_bits_torch(layers)
    assert bits.dtype == torch.int16 and bits.shape == (2, 3, 3, 40 * 41 // 2)
    np.testing.assert_array_equal(bits.numpy().view(np.uint16), encode_attentions(layers))
    if dtype == torch.float32:
        decoded = decode_patterns(bits.numpy().view(np.uint16))
        row = decoded[0, 1, 2, 39 * 40 // 2:39 * 40 // 2 + 30]  # the planted row's first 30 columns
        assert (row > 0).all() and decoded[0, 0, 1, 6 * 7 // 2] == 0


@pytest.mark.parametrize("encoding", ["bfloat16-14bit", "bfloat16-bits"])
def test_device_path_stores_the_same_bytes_as_the_host_path(encoding, target, scenarios):
    from apmae.target.access import run_batch

    out = run_batch(target, torch.from_numpy(scenarios.input_ids[:5]), torch.from_numpy(scenarios.label_ids[:5, 0]))
    real = list(out.attentions.unbind(1))  # the micro target's own patterns, (B, H, S, S) per layer
    for layers in (real, _real_like_layers(37, torch.float32)):  # T = 703: a last group of three values
        host = stored_attentions(layers, encoding, on_device=False)
        device = stored_attentions(layers, encoding, on_device=True)
        assert device.dtype == host.dtype and device.shape == host.shape
        np.testing.assert_array_equal(device, host)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("encoding", ["bfloat16-14bit", "bfloat16-bits"])
def test_cuda_attentions_are_packed_on_the_device_into_the_cpu_bytes(encoding):
    layers = _real_like_layers(40, torch.float32)
    on_gpu = stored_attentions([a.cuda() for a in layers], encoding)  # the default path for a CUDA model
    np.testing.assert_array_equal(on_gpu, stored_attentions(layers, encoding))
