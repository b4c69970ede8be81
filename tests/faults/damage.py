"""Ways to damage a file the way disks, copies and killed writers do, each into a new file."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py


def truncated(src: Path, dst: Path, fraction: float = 0.5) -> Path:
    """The first ``fraction`` of ``src``'s bytes (a copy or a download cut short)."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * fraction)])
    return Path(dst)


def flipped(src: Path, dst: Path, at: int, n: int = 16) -> Path:
    """``src`` with bits flipped in bytes ``at .. at + n`` (a damaged sector).

    The mask is 0x5A, not 0xFF: Fletcher-32 sums 16-bit words modulo 65535, so it cannot
    tell a word 0x0000 from 0xFFFF, and inverting the zero high bytes of small integers
    would go unnoticed (a limit of HDF5's checksum, not of the readers).
    """
    data = bytearray(Path(src).read_bytes())
    for i in range(at, min(at + n, len(data))):
        data[i] ^= 0x5A
    Path(dst).write_bytes(bytes(data))
    return Path(dst)


def damaged_chunk(src: Path, dst: Path, dataset: str, chunk: int = 0) -> Path:
    """An HDF5 file whose ``dataset`` has bytes inverted inside one of its stored chunks."""
    with h5py.File(src, "r") as f:
        info = f[dataset].id.get_chunk_info(chunk)
    return flipped(src, dst, info.byte_offset + info.size // 2, 4)


def with_attrs(src: Path, dst: Path, **attrs) -> Path:
    """A copy of an HDF5 file with some attributes overwritten (a file of another version, a bad count)."""
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        f.attrs.update(attrs)
    return Path(dst)
