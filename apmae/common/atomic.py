"""Directories and files that appear complete or not at all.

A build step or an export writes into a temporary sibling directory and
renames it into place only when everything is written, so an interrupted run
never leaves a directory that looks finished (the demo's completion markers
and ``from_pretrained`` both trust what they find).
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_dir(out_dir: str | Path) -> Iterator[Path]:
    """A temporary directory next to ``out_dir``, renamed to ``out_dir`` when the block succeeds.

    An existing ``out_dir`` is replaced at that moment; when the block raises,
    the temporary directory is removed and ``out_dir`` is left as it was.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp.", dir=out_dir.parent))
    try:
        yield tmp
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to a temporary sibling and rename it over ``path``: a kill leaves the old file or the new."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
