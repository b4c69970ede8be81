"""File arguments as users give them (one path, a quoted glob, or a list of paths), and a file's sha256."""

from __future__ import annotations

import glob
import hashlib
from pathlib import Path
from typing import Sequence


def expand_files(paths: str | Path | Sequence[str | Path], *, what: str, hint: str,
                 error: type[Exception] = ValueError) -> list[Path]:
    """The existing files ``paths`` names (a glob sorted by name), or ``error`` saying what to do.

    ``what`` names the files in the message (e.g. "attention cache"), ``hint`` says how to
    make them (e.g. "build the cache first").
    """
    if isinstance(paths, (str, Path)):
        text = str(paths)
        found = sorted(glob.glob(text)) if any(c in text for c in "*?[") else [text]
    else:
        found = [str(p) for p in paths]
    if not found:
        raise error(f"no {what} files match {paths!r}; {hint}")
    missing = [p for p in found if not Path(p).is_file()]
    if missing:
        raise error(f"{what} file(s) {missing} do not exist; {hint}")
    return [Path(p) for p in found]


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """The file's sha256, read in 4 MB chunks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
