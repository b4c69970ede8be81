"""Streaming iteration over Java source files, from wherever a corpus lives.

A *source* is one of:

- a directory tree (every ``*.java`` below it, in sorted order),
- a ``.zip``, ``.tar``, ``.tar.gz`` / ``.tgz`` archive (e.g. a JDK's ``src.zip``),
- a ``.jsonl`` / ``.jsonl.gz`` or ``.parquet`` file with a ``content`` column
  (the schema of the public Stackless Java dataset; an ``id``/path column, when
  present, names the file),
- a Hugging Face dataset, written ``hf:NAME?split=train&config=...&data_files=...``
  and read with ``datasets.load_dataset(..., streaming=True)``, or a directory
  written by ``Dataset.save_to_disk``.

Files are read one at a time, never a whole corpus in memory. Each yielded file
has a stable id ``<path inside the source>@<content hash>``. Exact duplicates
(same content) are yielded once; empty, over-size, binary (NUL bytes) and
non-UTF-8 files are skipped and counted by reason in :attr:`JavaSources.skipped`.
A source that cannot be read as what its name says (a truncated archive, a JSONL line
that is not JSON) raises :class:`SourceError` naming the file, and the line where there is one.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tarfile
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence
from urllib.parse import parse_qs

import pyarrow.parquet as pq

SKIP_REASONS = ("empty", "oversize", "binary", "non_utf8", "duplicate")
ID_COLUMNS = ("id", "path", "max_stars_repo_path", "file_path", "filename")  # first present one names a row
HF_PREFIX = "hf:"


class SourceError(ValueError):
    """A source cannot be read: a damaged or truncated archive, or a JSONL line that is not JSON."""


@dataclass(frozen=True)
class SourceFile:
    """One Java file, decoded."""

    source_id: str  # "<path inside the source>@<12 hex of sha1(content)>"
    data: bytes  # the UTF-8 bytes (tree-sitter offsets index these)
    text: str  # the same content decoded


@dataclass(frozen=True)
class HFSource:
    """A Hugging Face dataset read in streaming mode (no full download)."""

    name: str  # hub name, or a builder such as "json"/"parquet" with data_files
    split: str = "train"
    config: str | None = None
    data_files: str | None = None
    content_column: str = "content"
    id_column: str | None = None  # None: the first of ID_COLUMNS present

    @classmethod
    def parse(cls, spec: str) -> "HFSource":
        """``hf:NAME?split=train&config=java&data_files=...`` -> :class:`HFSource`."""
        name, _, query = spec[len(HF_PREFIX):].partition("?")
        params = {k: v[-1] for k, v in parse_qs(query).items()}
        unknown = set(params) - {"split", "config", "data_files", "content_column", "id_column"}
        if not name or unknown:
            raise ValueError(f"bad Hugging Face source {spec!r}: write hf:NAME?split=train"
                             f"{' (unknown keys ' + str(sorted(unknown)) + ')' if unknown else ''}")
        return cls(name=name, **params)

    def __str__(self) -> str:
        extra = {k: v for k, v in (("config", self.config), ("data_files", self.data_files)) if v}
        return f"{HF_PREFIX}{self.name}?split={self.split}" + "".join(f"&{k}={v}" for k, v in extra.items())


Source = str | os.PathLike | HFSource


class JavaSources:
    """Iterate the Java files of one or more sources, deduplicated, with skip counts.

    Args:
        sources: one source or a list of them (see the module docstring).
        max_bytes: files larger than this are skipped as ``oversize``.

    Iterating twice re-reads the sources; counts describe the last iteration.
    """

    def __init__(self, sources: Source | Sequence[Source], *, max_bytes: int = 1_000_000) -> None:
        if isinstance(sources, (str, os.PathLike, HFSource)):
            sources = [sources]
        if not sources:
            raise ValueError("no sources given; pass a directory, archive, JSONL/Parquet file or hf:NAME")
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.sources = [s if isinstance(s, HFSource) else _normalise(s) for s in sources]
        self.max_bytes = max_bytes
        self.skipped: Counter[str] = Counter()
        self.yielded = 0

    def describe(self) -> list[str]:
        """The sources as strings (for metadata and cache keys)."""
        return [str(s) for s in self.sources]

    def __iter__(self) -> Iterator[SourceFile]:
        self.skipped = Counter()
        self.yielded = 0
        seen: set[bytes] = set()
        for source in self.sources:
            for path, raw in _raw_files(source, self.max_bytes):
                file = self._check(path, raw, seen)
                if file is not None:
                    self.yielded += 1
                    yield file

    def _check(self, path: str, raw: bytes | str | None, seen: set[bytes]) -> SourceFile | None:
        reason, data, text = _decode(raw, self.max_bytes)
        if reason is None:
            digest = hashlib.sha1(data).digest()
            if digest in seen:
                reason = "duplicate"
            seen.add(digest)
        if reason is not None:
            self.skipped[reason] += 1
            return None
        return SourceFile(source_id=f"{path}@{digest.hex()[:12]}", data=data, text=text)


def _decode(raw: bytes | str | None, max_bytes: int) -> tuple[str | None, bytes, str]:
    """(skip reason or None, bytes, text) for one raw file; ``None`` raw means over-size unread."""
    if raw is None:
        return "oversize", b"", ""
    if isinstance(raw, str):
        try:
            data = raw.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates in a dataset row
            return "non_utf8", b"", ""
    else:
        data = raw
    if not data.strip():
        return "empty", b"", ""
    if len(data) > max_bytes:
        return "oversize", b"", ""
    if b"\0" in data:
        return "binary", b"", ""
    if isinstance(raw, str):
        return None, data, raw
    try:
        return None, data, data.decode("utf-8")
    except UnicodeDecodeError:
        return "non_utf8", b"", ""


def _normalise(source: str | os.PathLike) -> str | Path:
    if isinstance(source, str) and source.startswith(HF_PREFIX):
        return source
    path = Path(source).expanduser()
    if not path.exists():
        raise ValueError(f"source {str(source)!r} does not exist; pass a directory, archive, "
                         "JSONL/Parquet file or hf:NAME?split=...")
    return path


def _raw_files(source: str | Path | HFSource, max_bytes: int) -> Iterator[tuple[str, bytes | str | None]]:
    """(path inside the source, raw content) pairs; content is None when known to be over-size."""
    if isinstance(source, str):
        return _hf_rows(HFSource.parse(source))
    if isinstance(source, HFSource):
        return _hf_rows(source)
    name = source.name.lower()
    if source.is_dir():
        if (source / "dataset_info.json").exists() and (source / "state.json").exists():
            return _saved_dataset_rows(source)
        return _dir_files(source, max_bytes)
    if name.endswith(".zip"):
        return _zip_files(source, max_bytes)
    if name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
        return _tar_files(source, max_bytes)
    if name.endswith((".jsonl", ".jsonl.gz", ".json", ".ndjson")):
        return _jsonl_rows(source)
    if name.endswith(".parquet"):
        return _parquet_rows(source)
    if name.endswith(".java"):
        return iter([(source.name, _read_capped(source, max_bytes))])
    raise ValueError(f"unsupported source {str(source)!r}: expected a directory, .zip, .tar(.gz), "
                     ".jsonl(.gz), .parquet, a .java file or hf:NAME")


def _read_capped(path: Path, max_bytes: int) -> bytes | None:
    return None if path.stat().st_size > max_bytes else path.read_bytes()


def _dir_files(root: Path, max_bytes: int) -> Iterator[tuple[str, bytes | None]]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()  # os.walk order is file-system dependent; sorting makes ids and order stable
        for fname in sorted(filenames):
            if fname.endswith(".java"):
                path = Path(dirpath, fname)
                yield path.relative_to(root).as_posix(), _read_capped(path, max_bytes)


def _zip_files(path: Path, max_bytes: int) -> Iterator[tuple[str, bytes | None]]:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise SourceError(f"{path} is not a readable zip archive ({e}): it is truncated or damaged; fetch it "
                          "again, or unpack what is readable and pass the folder") from e
    with zf:
        for info in zf.infolist():
            if info.is_dir() or not info.filename.endswith(".java"):
                continue
            try:
                data = None if info.file_size > max_bytes else zf.read(info)
            except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
                raise SourceError(f"{path}: member {info.filename} cannot be read ({e}): the archive is damaged; "
                                  "fetch it again, or unpack what is readable and pass the folder") from e
            yield info.filename, data


def _tar_files(path: Path, max_bytes: int) -> Iterator[tuple[str, bytes | None]]:
    try:
        with tarfile.open(path, "r|*") as tf:  # stream mode: members are read in order, never all at once
            for member in tf:
                if not member.isfile() or not member.name.endswith(".java"):
                    continue
                if member.size > max_bytes:
                    yield member.name, None
                    continue
                handle = tf.extractfile(member)
                yield member.name, handle.read() if handle is not None else b""
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise SourceError(f"{path} is not a readable tar archive ({e}): it is truncated or damaged; fetch it "
                          "again, or unpack what is readable and pass the folder") from e


def _row_id(row: dict, id_column: str | None, fallback: str) -> str:
    if id_column is not None:
        return str(row[id_column])
    for col in ID_COLUMNS:
        if row.get(col) not in (None, ""):
            return str(row[col])
    return fallback


def _rows(rows: Iterable[dict], where: str, content: str = "content",
          id_column: str | None = None) -> Iterator[tuple[str, str | None]]:
    for i, row in enumerate(rows):
        if content not in row:
            raise ValueError(f"{where} has no {content!r} column (columns: {sorted(row)}); "
                             "sources need the Java text in a 'content' column")
        yield _row_id(row, id_column, f"{where}:{i}"), row[content] or ""


def _jsonl_rows(path: Path) -> Iterator[tuple[str, str | None]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        yield from _rows(_json_lines(f, path), path.name)


def _json_lines(lines: Iterable[str], path: Path) -> Iterator[dict]:
    """The JSON object of every non-blank line; a line that is not one is an error naming its number."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise SourceError(f"{path} line {number} is not valid JSON ({e.msg}, column {e.colno}): fix or remove "
                              "that line (every line must be one JSON object with a 'content' field)") from None
        if not isinstance(row, dict):
            raise SourceError(f"{path} line {number} is a JSON {type(row).__name__}, not an object with a "
                              "'content' field")
        yield row


def _parquet_rows(path: Path) -> Iterator[tuple[str, str | None]]:
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    columns = ["content"] + [c for c in ID_COLUMNS if c in names][:1]
    if "content" not in names:
        raise ValueError(f"{path.name} has no 'content' column (columns: {names})")
    batches = pf.iter_batches(batch_size=256, columns=columns)
    yield from _rows((row for batch in batches for row in batch.to_pylist()), path.name)


def _hf_rows(spec: HFSource) -> Iterator[tuple[str, str | None]]:
    try:
        import datasets  # optional: the `hf` extra
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ValueError("reading hf: sources needs the `datasets` package: pip install 'apmae[hf]'") from e
    kwargs = {"data_files": spec.data_files} if spec.data_files else {}
    ds = datasets.load_dataset(spec.name, spec.config, split=spec.split, streaming=True, **kwargs)
    yield from _rows(ds, spec.name, spec.content_column, spec.id_column)


def _saved_dataset_rows(path: Path) -> Iterator[tuple[str, str | None]]:
    import datasets  # optional: the `hf` extra

    ds = datasets.load_from_disk(str(path))  # memory-mapped Arrow: rows are read lazily
    if isinstance(ds, datasets.DatasetDict):
        raise ValueError(f"{path} holds several splits {list(ds)}; pass the directory of one split")
    yield from _rows(ds, path.name)
