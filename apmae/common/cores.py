"""The CPU cores this process may run on."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """Cores this process may use: its CPU affinity where the OS reports one (Linux), else the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
