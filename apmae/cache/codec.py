"""The value codec of attention patterns: bfloat16 bit patterns and their 14-bit packing.

How the cache stores each probability (its ``encoding`` attribute); AP-MAE's
encodings of heads are another thing, in :mod:`apmae.encodings.store`.

Glossary: B batch, L layers, H query heads, S tokens, T = S(S+1)/2 entries of
a causal lower triangle, W stored elements per head (:func:`packed_width`).

Values: bfloat16 bit patterns. Attention probabilities live in [0, 1] and span
many decades; bfloat16 keeps float32's exponent range, so its relative error
is at most 2**-8 (0.4 %) on every normal float32 and no probability flushes to
zero (the rare float32 subnormal that would round to zero is stored as the
smallest positive bfloat16). float16 of probabilities loses precision below
6e-5 and flushes to zero below 3e-8; float16 of log-probabilities exceeds 1 %
relative error below 1e-14 (its absolute step grows with |log p|).

Encoding ``bfloat16-14bit`` (the default): for every value in [0, 2) the two
leading bits of its bfloat16 pattern (sign and the exponent's top bit) are 0,
so the 14 others are stored, four values in 7 bytes (little-endian, value k
of a group in bits 14k..14k+13), W = 7 * ceil(T / 4) bytes per head: exactly
bfloat16, in 12.5 % fewer bytes than ``bfloat16-bits`` (uint16, W = T), the
encoding to choose for models whose "attention" leaves [0, 2). With the packed
triangle a head costs 57.6 KB at S=256 instead of 262 KB of float32.

Two implementations give the same bytes: numpy on the host (the CPU path,
faster there) and torch ops on the model's device (:func:`triangle_bits_torch`,
:func:`to_14bit_torch`), so a GPU extraction moves only the stored bytes,
7/16 of the float32 triangle, to the host. torch is imported lazily, so the
cache reader needs only numpy.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from apmae.common.triangle import lower_triangle_index

ENCODINGS = ("bfloat16-14bit", "bfloat16-bits")
DEFAULT_ENCODING = "bfloat16-14bit"


def round_to_bfloat16(values: Any) -> Any:
    """Float patterns (torch tensor on any device) -> the bfloat16 tensor the cache stores, on that device.

    Rounds to nearest; a non-zero value that would round to zero (only float32
    subnormals below 2**-133) becomes the smallest positive bfloat16, so zero
    in the cache always means zero in float32.
    """
    import torch  # import cost ~1.4 s: readers decode with numpy; torch only on the device path

    y = values.to(torch.bfloat16)
    lost = (y == 0) & (values != 0)
    if bool(lost.any()):  # rare: only for values below 2**-133
        tiny = torch.finfo(torch.bfloat16).smallest_normal / 128  # smallest positive subnormal
        y = torch.where(lost, torch.where(values > 0, tiny, -tiny).to(torch.bfloat16), y)
    return y


def encode_patterns(values: Any) -> np.ndarray:
    """Float patterns (torch tensor on any device) -> bfloat16 bits as uint16 numpy (:func:`round_to_bfloat16`)."""
    import torch  # import cost ~1.4 s: readers decode with numpy; torch only on the device path

    return round_to_bfloat16(values).view(torch.int16).cpu().numpy().view(np.uint16)


def decode_patterns(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32, exactly (bfloat16 is float32's top half)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def encode_attentions(attentions: Sequence[Any]) -> np.ndarray:
    """Per-layer attention tensors (B, H, S, S) -> bfloat16 bits of their lower triangles (B, L, H, T) uint16.

    On CPU each layer is rounded to bfloat16 first, so only half the bytes
    are gathered, with numpy's ``take`` (several times faster than a torch
    gather there); on another device the bits are computed there
    (:func:`triangle_bits_torch`) and only they are copied. Non-zero values
    that round to zero are repaired as in :func:`encode_patterns`.
    """
    import torch  # import cost ~1.4 s: readers decode with numpy; torch only on the device path

    first = attentions[0]
    if first.device.type != "cpu":
        return triangle_bits_torch(attentions).cpu().numpy().view(np.uint16)
    b, h, s, _ = first.shape
    idx = lower_triangle_index(s)
    out = np.empty((b, len(attentions), h, len(idx)), dtype=np.uint16)
    for layer, a in enumerate(attentions):
        y = a.to(torch.bfloat16).view(torch.int16).flatten(-2)  # (B, H, S*S)
        out[:, layer] = np.take(y.numpy().view(np.uint16), idx, axis=-1, mode="clip")
        zeros = np.flatnonzero(out[:, layer] == 0)  # true zeros are rare in a causal triangle
        if len(zeros):  # re-encode those values alone: encode_patterns repairs any that were not zero
            bi, hi, ti = np.unravel_index(zeros, (b, h, len(idx)))
            original = a.flatten(-2)[torch.from_numpy(bi), torch.from_numpy(hi), torch.from_numpy(idx[ti])]
            out[bi, layer, hi, ti] = encode_patterns(original)
    return out


_OUTSIDE_14BIT = ("attention values outside [0, 2) (negative, >= 2 or NaN) cannot be stored with "
                  "encoding='bfloat16-14bit'; use encoding='bfloat16-bits'")
_MASK14 = np.uint64(0x3FFF)
_MASK56 = np.uint64((1 << 56) - 1)
_U64 = [np.uint64(k) for k in range(65)]


_STORED_DTYPE = {"bfloat16-14bit": np.dtype(np.uint8), "bfloat16-bits": np.dtype(np.uint16)}


def stored_dtype(encoding: str) -> np.dtype:
    """The element type a cache with ``encoding`` stores (bytes for 14-bit, uint16 bit patterns otherwise)."""
    return _STORED_DTYPE[encoding]


def packed_width(n_values: int, encoding: str = DEFAULT_ENCODING) -> int:
    """Stored elements per head for ``n_values`` triangle entries (bytes for 14-bit, uint16 values otherwise)."""
    return 7 * -(-n_values // 4) if encoding == "bfloat16-14bit" else n_values


def to_14bit(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bits (..., T) uint16 of values in [0, 2) -> (..., 7 * ceil(T / 4)) uint8.

    The result is a little-endian bit stream with value i in bits 14i..14i+13
    (zero-padded to whole 7-byte groups of four values). Four values read as
    one 64-bit word hold their payload at bits 0, 16, 32 and 48; shifts close
    the gaps to 56 bits and the empty top byte is dropped.

    Raises:
        ValueError: a value is negative, >= 2 or not finite (its two leading bits are not 0).
    """
    bits = np.asarray(bits, dtype="<u2")  # little-endian, so four values read as one "<u8" word
    if bits.size and int(bits.max()) >= 0x4000:
        raise ValueError(_OUTSIDE_14BIT)
    lead, n = bits.shape[:-1], bits.shape[-1]
    groups = -(-n // 4)
    if n % 4 or not bits.flags.c_contiguous:
        padded = np.zeros((*lead, groups * 4), dtype="<u2")
        padded[..., :n] = bits
        bits = padded
    word = bits.view("<u8")  # (..., groups)
    out, tmp = word & _MASK14, np.empty_like(word)
    for k in (1, 2, 3):  # in place: no temporaries per step
        np.right_shift(word, _U64[2 * k], out=tmp)
        np.bitwise_and(tmp, _MASK14 << _U64[14 * k], out=tmp)
        np.bitwise_or(out, tmp, out=out)
    # Store the 56-bit words 7 bytes apart as overlapping 8-byte writes. Each word's top byte
    # first gets the next word's lowest byte, so the overlapping bytes agree and the result
    # does not depend on the order the writes happen in (a strided byte copy is ~3x slower).
    flat, nxt = out.reshape(-1), tmp.reshape(-1)
    np.left_shift(flat[1:], _U64[56], out=nxt[:-1])
    nxt[-1:] = 0
    np.bitwise_or(flat, nxt, out=flat)
    buf = np.empty(flat.size * 7 + 1, dtype=np.uint8)
    np.ndarray((flat.size,), dtype="<u8", buffer=buf, strides=(7,))[...] = flat
    return buf[:-1].reshape(*lead, groups * 7)


def from_14bit(data: np.ndarray, n_values: int) -> np.ndarray:
    """Inverse of :func:`to_14bit`: (..., 7 * ceil(T / 4)) uint8 -> (..., T) uint16."""
    data = np.asarray(data, dtype=np.uint8)
    lead = data.shape[:-1]
    if data.shape[-1] % 7 or data.shape[-1] // 7 * 4 < n_values:
        raise ValueError(f"{data.shape[-1]} bytes per head do not hold {n_values} 14-bit values")
    groups = data.shape[-1] // 7
    buf = np.empty(data.size + 1, dtype=np.uint8)  # one spare byte: the last 8-byte read
    buf[:-1] = data.reshape(-1)
    buf[-1] = 0
    packed = np.ndarray((data.size // 7,), dtype="<u8", buffer=buf, strides=(7,)) & _MASK56
    packed = packed.reshape(*lead, groups)
    word, tmp = packed & _MASK14, np.empty_like(packed)
    for k in (1, 2, 3):
        np.left_shift(packed, _U64[2 * k], out=tmp)
        np.bitwise_and(tmp, _MASK14 << _U64[16 * k], out=tmp)
        np.bitwise_or(word, tmp, out=word)
    return word.view("<u2").reshape(*lead, groups * 4)[..., :n_values]


def stored_attentions(attentions: Sequence[Any], encoding: str, *, on_device: bool | None = None) -> np.ndarray:
    """Per-layer attentions (B, H, S, S) -> the stored form of their lower triangles (B, L, H, W) on the host.

    ``on_device`` (default: the attentions are not on the CPU) computes the bits
    and the 14-bit packing with torch ops where the attentions are
    (:func:`triangle_bits_torch`, :func:`to_14bit_torch`) and copies only the
    stored bytes to the host; otherwise numpy does it on the host
    (:func:`encode_attentions`, :func:`encode_stored`). Both give the same bytes.
    """
    if on_device is None:
        on_device = attentions[0].device.type != "cpu"
    if not on_device:
        return encode_stored(encode_attentions(attentions), encoding)
    bits = triangle_bits_torch(attentions)  # (B, L, H, T) int16 on the device
    if encoding == "bfloat16-14bit":
        return to_14bit_torch(bits).cpu().numpy()
    return bits.cpu().numpy().view(np.uint16)


def triangle_bits_torch(attentions: Sequence[Any]) -> Any:
    """Per-layer attentions (B, H, S, S) -> bfloat16 bits of their lower triangles (B, L, H, T) int16, in place.

    The bits of :func:`encode_attentions`, computed with torch ops on the
    attentions' device: gather, round to bfloat16, and repair a non-zero value
    that rounded to +0 (only float32 subnormals below 2**-133) to the smallest
    positive bfloat16, so zero still means zero.
    """
    import torch  # import cost ~1.4 s: readers decode with numpy; torch only on the device path

    index = torch.tensor(lower_triangle_index(attentions[0].shape[-1]), device=attentions[0].device)
    layers = []
    for a in attentions:
        values = a.flatten(-2).index_select(-1, index)  # (B, H, T) in the model's dtype
        bits = values.to(torch.bfloat16).view(torch.int16)  # (B, H, T)
        layers.append(bits.masked_fill((bits == 0) & (values != 0), 1))  # 1 = smallest positive subnormal
    return torch.stack(layers, dim=1)  # (B, L, H, T)


def to_14bit_torch(bits: Any) -> Any:
    """:func:`to_14bit` with torch ops on the tensor's device: (..., T) int16 -> (..., 7 * ceil(T / 4)) uint8.

    Byte for byte the same little-endian stream. Each group of four 14-bit
    values a, b, c, d becomes seven bytes read straight off the 56-bit word
    ``a | b << 14 | c << 28 | d << 42``, so every step stays in int16.

    Raises:
        ValueError: a value is negative, >= 2 or not finite (its two leading bits are not 0).
    """
    import torch  # import cost ~1.4 s: readers decode with numpy; torch only on the device path

    if bits.numel() and bool(((bits < 0) | (bits >= 0x4000)).any()):  # int16 < 0: the sign bit is set
        raise ValueError(_OUTSIDE_14BIT)
    n = bits.shape[-1]
    groups = -(-n // 4)
    if n % 4:
        bits = torch.cat([bits, bits.new_zeros(*bits.shape[:-1], groups * 4 - n)], dim=-1)
    a, b, c, d = bits.reshape(*bits.shape[:-1], groups, 4).unbind(-1)  # (..., G) each
    out = torch.stack([a & 0xFF, (a >> 8) | ((b & 0x3) << 6), (b >> 2) & 0xFF, (b >> 10) | ((c & 0xF) << 4),
                       (c >> 4) & 0xFF, (c >> 12) | ((d & 0x3F) << 2), d >> 6], dim=-1)  # (..., G, 7)
    return out.to(torch.uint8).flatten(-2)


def encode_stored(bits: np.ndarray, encoding: str) -> np.ndarray:
    """bfloat16 bits (..., T) -> what a cache with ``encoding`` stores."""
    return to_14bit(bits) if encoding == "bfloat16-14bit" else np.asarray(bits, dtype=np.uint16)


def decode_stored(stored: np.ndarray, encoding: str, n_values: int) -> np.ndarray:
    """What a cache with ``encoding`` stores -> float32 values (..., T)."""
    bits = from_14bit(stored, n_values) if encoding == "bfloat16-14bit" else stored
    return decode_patterns(bits)
