"""The CPU cores this process may run on, and torch's thread count over a block."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator


def usable_cores() -> int:
    """Cores this process may use: its CPU affinity where the OS reports one (Linux), else the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's CPU thread count set to ``threads`` for the block (None: left as it is), restored after.

    The one way the project changes the thread count: extraction splits the threads between its
    workers, the head metrics take every core, a training module takes its ``num_threads``.
    """
    import torch  # import cost ~1.4 s: usable_cores is read without torch

    before = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"a thread count must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
