"""Child processes that a test SIGKILLs when they report a given line (the writers' kill-and-resume tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]


def start(code: str, *args: str) -> subprocess.Popen:
    """``python -c code args...`` from the repository root, its stdout readable line by line."""
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def kill_when(child: subprocess.Popen, ready: Callable[[str], bool]) -> None:
    """SIGKILL ``child`` as soon as it prints a line ``ready`` accepts; it must die of that signal."""
    for line in child.stdout:
        if ready(line.strip()):
            child.send_signal(signal.SIGKILL)
            break
    child.wait()
    assert child.returncode == -signal.SIGKILL, f"the child ended with {child.returncode} before it was killed"
