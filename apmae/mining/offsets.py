"""Character and UTF-8 byte offsets of a text, and which characters are whitespace.

tree-sitter reports UTF-8 byte offsets, tokenizers report character offsets:
task spans, scenario assembly and the demo target's FIM holes convert between
them with these tables (one entry per offset, so a whole file converts at once).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

# Unicode White_Space code points (what regex \s matches)
WHITESPACE = np.array([9, 10, 11, 12, 13, 32, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029,
                       0x202F, 0x205F, 0x3000], dtype=np.uint32)


def code_points(text: str) -> np.ndarray:
    """(n,) uint32 code point of every character of ``text``."""
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def is_whitespace(codes: np.ndarray) -> np.ndarray:
    """Bool mask of the code points (from :func:`code_points`) that are Unicode whitespace."""
    return np.isin(codes, WHITESPACE)


def char_to_byte_table(text: str) -> np.ndarray:
    """(n + 1,) int64: entry c is the UTF-8 byte offset of character offset c."""
    codes = code_points(text)
    # UTF-8 length of each code point: 1 below 0x80, 2 below 0x800, 3 below 0x10000, else 4
    lengths = 1 + (codes >= 0x80) + (codes >= 0x800) + (codes >= 0x10000)
    return np.concatenate([[0], np.cumsum(lengths)])


def byte_to_char(data: bytes, text: str) -> Callable[[int], int]:
    """A function mapping byte offsets (at character starts) of ``data`` to character offsets of ``text``.

    ``data`` is ``text`` in UTF-8; for an ASCII text the offsets are the same.
    """
    if len(data) == len(text):
        return int
    is_start = (np.frombuffer(data, dtype=np.uint8) & 0xC0) != 0x80  # UTF-8 continuation bytes are 10xxxxxx
    table = np.concatenate([[0], np.cumsum(is_start)])
    return lambda b: int(table[b])
