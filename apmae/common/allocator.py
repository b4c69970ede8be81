"""Process-wide glibc allocator tuning for extraction: an explicit opt-in of entry points.

Each extraction batch allocates (B, H, S, S) attention tensors of several MB
per layer. glibc hands blocks that large back to the OS when they are freed
and the next batch page-faults them in again, which costs more than the
arithmetic of a small model (measured on the demo target on a CPU: 16 -> 10 ms
per scenario with the tuning below). Library functions never change it: the
entry points that extract (``python -m apmae``, the demo, the benchmarks) call
:func:`keep_freed_memory` once at start.
"""

from __future__ import annotations

import ctypes

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory() -> bool:
    """Keep freed large blocks in this process's heap for reuse; True when applied (glibc only).

    Raises glibc's mmap threshold to 32 MiB (its maximum) and its trim threshold
    to 1 GiB, for the whole process and for good: glibc cannot report the
    previous values, and setting them switches off its dynamic threshold, so
    there is nothing to restore. The cost is freed memory the process keeps
    (up to about 1 GiB) instead of returning it to the OS. Elsewhere (macOS,
    musl) nothing changes and it returns False.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1
        return libc.mallopt(_M_MMAP_THRESHOLD, 1 << 25) == 1 and ok
    except (OSError, AttributeError):  # not glibc
        return False
