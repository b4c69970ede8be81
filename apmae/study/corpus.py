"""The study's Java corpus: a given one, else the JDK's own source, else the Debian source package.

The JDK's source is real, well-formed Java that any Debian or Ubuntu machine can fetch without root:
``apt-get download openjdk-17-source`` (47 MB) holds ``usr/lib/jvm/openjdk-17/lib/src.zip``, 15,143
Java files (202 MB). :func:`resolve_corpus` takes, in this order:

1. ``given`` (the study's ``CORPUS=``): a folder, an archive, a JSONL/Parquet file or ``hf:<name>``;
2. ``$JAVA_HOME/lib/src.zip``, then the ``lib/src.zip`` of the JDK whose ``javac`` is on ``PATH``
   (Debian links it to the source package, so it is often a dangling link);
3. the Debian package, fetched and unpacked into ``<study dir>/jdk-source`` once.

It says which it used, and :meth:`Corpus.identity` (file, size, sha256) goes into the study's record.
With none of them it stops with a :class:`CorpusError` that says what to pass.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from apmae.common.files import file_sha256

DEBIAN_PACKAGE = "openjdk-17-source"
SRC_ZIP_IN_PACKAGE = Path("usr/lib/jvm/openjdk-17/lib/src.zip")


class CorpusError(ValueError):
    """No corpus could be found or fetched; the message says what to pass."""


@dataclass(frozen=True)
class Corpus:
    """The corpus the study reads, and where it came from."""

    path: str  # a file or folder, or an ``hf:`` name
    origin: str  # how it was chosen: "CORPUS", "JAVA_HOME", "javac on PATH", "Debian openjdk-17-source"
    size: int | None  # bytes of the file, or of every file of the folder (None for hf: names)
    sha256: str | None  # of the file's bytes, or of the folder's sorted (name, size, sha256) list

    def identity(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        size = f", {self.size / 1e6:.1f} MB" if self.size is not None else ""
        digest = f", sha256 {self.sha256[:16]}" if self.sha256 else ""
        return f"corpus: {self.path} ({self.origin}{size}{digest})"


def resolve_corpus(given: str | None, study_dir: str | Path, *, environ: Mapping[str, str] | None = None,
                   fetch: Callable[[Path], Path] | None = None) -> Corpus:
    """The corpus to read, by the order of the module docstring.

    ``fetch(folder)`` returns the ``src.zip`` of the Debian package unpacked under ``folder`` (default:
    :func:`fetch_debian_source`; tests pass their own).

    Raises:
        CorpusError: ``given`` does not exist, or no JDK source is there and none can be fetched.
    """
    environ = os.environ if environ is None else environ
    if given:
        if given.startswith("hf:"):
            return Corpus(path=given, origin="CORPUS", size=None, sha256=None)
        if not Path(given).exists():
            raise CorpusError(f"CORPUS={given} does not exist: pass a folder, an archive (.zip, .tar.gz), a "
                              "JSONL/Parquet file of Java sources or hf:<dataset name>")
        return _described(Path(given), "CORPUS")
    for where, origin in ((environ.get("JAVA_HOME"), "JAVA_HOME"), (_javac_home(environ), "javac on PATH")):
        if where and (Path(where) / "lib" / "src.zip").is_file():  # is_file follows links: a dangling one is no file
            return _described((Path(where) / "lib" / "src.zip").resolve(), origin)
    folder = Path(study_dir) / "jdk-source"
    unpacked = folder / SRC_ZIP_IN_PACKAGE
    if not unpacked.is_file():
        unpacked = (fetch or fetch_debian_source)(folder)
    return _described(unpacked, f"Debian {DEBIAN_PACKAGE}")


def fetch_debian_source(folder: Path) -> Path:
    """``apt-get download openjdk-17-source`` into ``folder`` and unpack it there (no root needed)."""
    apt, dpkg = shutil.which("apt-get"), shutil.which("dpkg-deb")
    if apt is None or dpkg is None:
        raise CorpusError("no Java corpus: pass CORPUS=<folder, archive, JSONL/Parquet file or hf:name>, or set "
                          "JAVA_HOME to a JDK that ships lib/src.zip; on Debian or Ubuntu the study fetches "
                          f"{DEBIAN_PACKAGE} itself, but apt-get and dpkg-deb are not on PATH here")
    folder.mkdir(parents=True, exist_ok=True)
    fetched = subprocess.run([apt, "download", DEBIAN_PACKAGE], cwd=folder, capture_output=True, text=True)
    debs = sorted(folder.glob(f"{DEBIAN_PACKAGE}_*.deb"))
    if fetched.returncode != 0 or not debs:
        raise CorpusError(f"apt-get download {DEBIAN_PACKAGE} failed ({fetched.stderr.strip()[-300:]}): pass "
                          "CORPUS=<folder, archive, JSONL/Parquet file or hf:name>, or set JAVA_HOME to a JDK "
                          "that ships lib/src.zip")
    subprocess.run([dpkg, "-x", str(debs[-1]), str(folder)], check=True, capture_output=True)
    unpacked = folder / SRC_ZIP_IN_PACKAGE
    if not unpacked.is_file():
        raise CorpusError(f"{debs[-1].name} holds no {SRC_ZIP_IN_PACKAGE}: pass CORPUS=<a JDK's lib/src.zip or "
                          "another Java corpus>")
    return unpacked


def _javac_home(environ: Mapping[str, str]) -> str | None:
    """The JDK folder of the ``javac`` on ``PATH`` (links followed), or None."""
    javac = shutil.which("javac", path=environ.get("PATH"))
    return str(Path(javac).resolve().parent.parent) if javac else None


def _described(path: Path, origin: str) -> Corpus:
    if path.is_dir():
        entries = sorted(p for p in path.rglob("*") if p.is_file())
        listing = hashlib.sha256()
        for p in entries:
            listing.update(f"{p.relative_to(path)}\0{p.stat().st_size}\0{file_sha256(p)}\n".encode())
        return Corpus(path=str(path), origin=origin, size=sum(p.stat().st_size for p in entries),
                      sha256=listing.hexdigest())
    return Corpus(path=str(path), origin=origin, size=path.stat().st_size, sha256=file_sha256(path))


__all__ = ["Corpus", "CorpusError", "DEBIAN_PACKAGE", "fetch_debian_source", "resolve_corpus"]
