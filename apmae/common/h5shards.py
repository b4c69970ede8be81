"""The resumable, sharded HDF5 row store under the attention cache and the encodings file.

Glossary: N rows of one run (scenarios), R rank shards of one run, B rows appended at once.

A run writes one HDF5 file per rank, ``<name>.rank<k>.h5``; rank ``k`` of ``R``
holds the scenario rows :func:`shard_rows` gives it, in that order. Every
file carries a ``scenario_index`` dataset, the attributes ``schema_version``
and ``committed`` and an identity (what must agree before a file is appended
to, reused or merged). What a row holds, and which attributes make the
identity, is the business of each store (:mod:`apmae.cache.store`,
:mod:`apmae.encodings.store`); :class:`StoreFormat` tells this module. The
protocol, in the order its steps run:

1. Create (:func:`open_or_create`): every dataset at its final size, the
   store's attributes, ``schema_version`` and ``committed = 0``, written under
   ``<file>.creating`` and renamed into place. A rename is atomic, so a kill
   during creation never leaves a half-made file under the real name; a file
   under the real name always has its full layout.
2. Open or resume (:func:`open_checked`): the schema version is checked first
   (a file of another version may lack what the next checks read, and the
   only answer to it is to delete it), then the identity is parsed and
   ``committed`` must lie within the rows the file holds. An existing file is
   then compared with this run's identity; every differing key is named and
   the file is never appended to.
3. Append (:class:`RowWriter`): rows ``committed .. committed + B`` are
   written, the file flushed, ``committed`` moved, the file flushed again. The
   first flush puts the rows on disk before the count claims them, so a kill
   in between leaves them uncommitted and the resumed run rewrites them; the
   second makes the new count durable before the writer reports it.
   Readers never look past ``committed``.
4. Read and merge (:func:`read_shards`): each shard is opened as in 2, must
   share its run's identity but for its rank, and (when completeness is
   required) hold all its rows; ranks must not repeat, every rank must be
   there, and no ``scenario_index`` may appear twice. Rows are then ordered by
   a stable sort of ``scenario_index``, so any sharding of a run reads exactly
   as the single file of the whole run.

Plain h5py and numpy: readers stay light enough for DataLoader workers.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import h5py
import numpy as np

Attrs = Mapping[str, Any]


class StoreError(ValueError):
    """A store file cannot be used; the common base of each store's own errors."""


# ---------------------------------------------------------------- what differs between stores


@dataclass(frozen=True)
class StoreMessages:
    """How one store names itself and its remedies in errors (tests and users match on these words)."""

    noun: str  # one file: "attention cache"
    short_noun: str  # one shard, where the store is clear from context: "cache"
    shards_noun: str  # several files: "attention cache shards"
    schema: str  # "<path> has <schema> schema 1, ..."
    remedy: str  # what to do with a damaged file: "delete it to rebuild"
    foreign: str  # after "<path> is ": a file that is not this store's, with {error}
    refusal: str  # after "<noun> <path> ": a file of another run, with {diffs}
    resume: str  # what resumes an incomplete file: "run the extraction again to resume it"
    hints: Mapping[str, str] = field(default_factory=dict)  # identity key -> what a difference in it means


@dataclass(frozen=True)
class StoreFormat:
    """One kind of sharded row file: schema, row count, identity, errors."""

    version: int  # the schema_version this apmae writes and reads
    rows_dataset: str  # a dataset every file has; its first axis is the file's rows
    rows_attr: str  # the attribute holding the rows this shard is laid out for
    identity: Callable[[Attrs], dict[str, Any]]  # attributes -> identity (raises KeyError / ValueError)
    shard_identity: Callable[[Attrs], dict[str, Any]]  # what every shard of one run shares
    error: type[StoreError]
    mismatch_error: type[StoreError]  # a file of another run
    messages: StoreMessages


# ---------------------------------------------------------------- what the operating system refused

# HDF5 reports a refused write in its message text (h5py raises OSError or RuntimeError without errno)
_STORAGE_FULL = {"errno = 28": "no space left on the device", "errno = 27": "the file size limit was reached",
                 "errno = 122": "the disk quota was exceeded"}


# files a write was refused to in this process: HDF5 cannot close them (it crashes at exit trying to), so the
# command line ends the process at once after reporting (apmae.cli.reported_errors)
REFUSED: list[Path] = []


def storage_refused(err: BaseException) -> str | None:
    """Why the storage refused a write, when ``err`` says so: a full disk, a file size limit or a quota."""
    own = f"errno = {getattr(err, 'errno', None)}"  # an OSError that carries its errno
    key = own if own in _STORAGE_FULL else next((k for k in _STORAGE_FULL if k in str(err)), None)
    return _STORAGE_FULL[key] if key else None


def file_locked(err: BaseException) -> bool:
    """Whether opening a file failed because another process holds its HDF5 lock."""
    return "unable to lock file" in str(err)


def _in_use(path: Path, fmt: StoreFormat) -> StoreError:
    return fmt.error(f"{fmt.messages.noun} {path} is in use by another process (it holds the file's HDF5 lock, "
                     "as a run extracting or encoding into it does): wait for that run to finish, or give this "
                     "run another output folder; the file is left as it is")


# ---------------------------------------------------------------- shard files of a run


def shard_path(directory: str | Path, name: str, rank: int) -> Path:
    """``<directory>/<name>.rank<k>.h5``: the file rank ``k`` writes."""
    return Path(directory) / f"{name}.rank{rank}.h5"


def checksummed(dtype: Any) -> dict[str, Any]:
    """``create_dataset`` keywords that give a dataset of ``dtype`` a Fletcher-32 checksum per chunk.

    A damaged chunk then fails to read (OSError) instead of returning wrong values. HDF5 cannot
    filter variable-length strings, so string columns go without.
    """
    return {} if h5py.check_string_dtype(np.dtype(dtype)) is not None else {"fletcher32": True}


def empty_maxshape(n_rows: int, trailing: tuple[int, ...]) -> tuple[int | None, ...] | None:
    """``maxshape`` for a chunked dataset of ``n_rows`` rows: unlimited rows when there are none.

    HDF5 refuses a chunk larger than a fixed-size dataset, and a rank with no rows (more ranks
    than scenarios) lays out datasets of 0 rows; an unlimited first axis admits the chunk.
    """
    return (None, *trailing) if n_rows == 0 else None


def shard_rows(n_scenarios: int, rank: int, world_size: int) -> np.ndarray:
    """Scenario rows that rank ``rank`` of ``world_size`` writes (strided, so shards are balanced)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    return np.arange(rank, n_scenarios, world_size, dtype=np.int64)


def shard_files(directory: str | Path, name: str) -> list[Path]:
    """Every shard file of run ``name`` in ``directory``, in rank order."""
    pattern = re.compile(re.escape(name) + r"\.rank(\d+)\.h5")
    ranked = [(int(m.group(1)), p) for p in Path(directory).glob(f"{name}.rank*.h5")
              if (m := pattern.fullmatch(p.name))]
    return [p for _, p in sorted(ranked)]


# ---------------------------------------------------------------- opening and identity


_UNSET = object()  # an identity key one side lacks (a store may record some keys only for some files)


def identity_diffs(found: Attrs, expected: Attrs, hints: Mapping[str, str], *, both_ways: bool = False) -> list[str]:
    """``key: file has X, this run Y (hint)`` for every key of ``expected`` on which ``found`` differs.

    ``both_ways`` (two whole identities) also compares the keys only ``found`` has; a key one side
    lacks shows as ``unset``.
    """
    keys = dict.fromkeys([*expected, *(found if both_ways else ())])
    pairs = {k: (found.get(k, _UNSET), expected.get(k, _UNSET)) for k in keys}
    return [f"{k}: file has {_shown(a)}, this run {_shown(b)}" + (f" ({hints[k]})" if k in hints else "")
            for k, (a, b) in pairs.items() if a != b]


def _shown(value: Any) -> str:
    return "unset" if value is _UNSET else repr(value)


def check_identity(found: Attrs, expected: Attrs, path: str | Path, fmt: StoreFormat, *,
                   both_ways: bool = False) -> None:
    """Raise ``fmt.mismatch_error`` naming every key of ``expected`` (with ``both_ways``, of either) on which
    ``found`` differs."""
    words = fmt.messages
    diffs = identity_diffs(found, expected, words.hints, both_ways=both_ways)
    if diffs:
        raise fmt.mismatch_error(f"{words.noun} {path} " + words.refusal.format(diffs="; ".join(diffs)))


def open_checked(path: Path, mode: str, fmt: StoreFormat) -> h5py.File:
    """The file opened in ``mode``, its schema version, identity and ``committed`` checked (step 2).

    Raises:
        fmt.error: the file is unreadable, not of this store, of another schema version,
            or claims more committed rows than it holds.
    """
    words = fmt.messages
    try:
        f = h5py.File(path, mode)
    except OSError as e:
        if file_locked(e):
            raise _in_use(path, fmt) from e
        raise fmt.error(f"{words.noun} {path} is truncated or corrupt ({e}); {words.remedy}") from e
    try:
        _check_schema(f, path, fmt)
    except StoreError:
        f.close()
        raise
    return f


def _check_schema(f: h5py.File, path: Path, fmt: StoreFormat) -> None:
    words = fmt.messages
    try:
        version = int(f.attrs["schema_version"])
        if version == fmt.version:  # another version may lack what is read below
            fmt.identity(f.attrs)
            committed, rows = int(f.attrs["committed"]), f[fmt.rows_dataset].shape[0]
    except (KeyError, OSError, ValueError) as e:
        raise fmt.error(f"{path} is " + words.foreign.format(error=e)) from e
    if version != fmt.version:
        newer = " (a newer apmae wrote it: upgrade apmae to read it as it is)" if version > fmt.version else ""
        raise fmt.error(f"{path} has {words.schema} schema {version}, this apmae reads {fmt.version}; "
                        f"{words.remedy}{newer}")
    if not 0 <= committed <= rows:
        raise fmt.error(f"{path} claims {committed} committed rows but holds {rows}; {words.remedy}")


def open_or_create(path: str | Path, fmt: StoreFormat, identity: Attrs,
                   create: Callable[[h5py.File], None]) -> h5py.File:
    """An existing file of this run reopened for appending, or a new one (steps 1 and 2).

    ``create`` lays out a new file: every dataset at its final size and the store's
    attributes; ``schema_version`` and ``committed`` are written here.

    Raises:
        fmt.mismatch_error: the existing file belongs to another run (names every difference).
        fmt.error: the existing file is corrupt, truncated or not of this store.
    """
    path = Path(path)
    if path.exists():
        _pad_after_refused_write(path)
        f = open_checked(path, "r+", fmt)
        try:
            check_identity(fmt.identity(f.attrs), identity, path, fmt, both_ways=True)
        except StoreError:
            f.close()
            raise
        return f
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".creating")
    try:
        with h5py.File(tmp, "w") as f:
            create(f)
            f.attrs.update({"schema_version": fmt.version, "committed": 0})
    except OSError as e:
        if file_locked(e):  # another process is creating the same file
            raise _in_use(tmp, fmt) from e
        reason = storage_refused(e)
        if reason:
            raise fmt.error(f"{fmt.messages.noun} {path} could not be laid out: {reason} ({e}); "
                            f"free space under {path.parent} and run again") from e
        raise
    tmp.replace(path)  # a kill during creation never leaves a half-made file under the real name
    return open_checked(path, "r+", fmt)


def refused_marker(path: Path) -> Path:
    """``<file>.refused``: left beside a file when the disk refused a write to it (an empty file: no blocks)."""
    return path.with_name(path.name + ".refused")


def _pad_after_refused_write(path: Path) -> None:
    """A file whose last write the disk refused can end short of the size its superblock states (HDF5
    wrote the superblock, then not the tail). When the writer left its marker, the tail held only space
    for rows not yet committed, so the file is padded back to that size and opened as usual: identity,
    schema and ``committed`` are checked as for any file, and a damaged committed row still fails its
    chunk checksum. Without the marker a short file stays an error."""
    marker = refused_marker(path)
    if not marker.exists():
        return
    try:
        with h5py.File(path, "r"):
            found = None
    except OSError as e:
        found = re.search(r"truncated file: eof = (\d+), sblock->base_addr = 0, stored_eof = (\d+)", str(e))
        if file_locked(e):
            return  # another process has it: open_checked says so
    if found and int(found.group(1)) == path.stat().st_size < int(found.group(2)):
        os.truncate(path, int(found.group(2)))
    marker.unlink()


# ---------------------------------------------------------------- appending


class RowWriter:
    """Appends rows of one file in order and commits them (step 3); resumes where ``committed`` stands.

    Subclasses write their datasets for :meth:`_reserve`'s rows, then call :meth:`_commit`.
    """

    _unit = "file"  # how overrun errors name what holds the rows
    _format: StoreFormat  # the store's format (its error class and words), set by each subclass

    def __init__(self, path: Path, file: h5py.File, *, n_rows: int) -> None:
        """``file`` open for writing (:func:`open_or_create`), laid out for ``n_rows`` rows."""
        self.path, self._f, self.n_rows = path, file, n_rows
        self.committed = int(file.attrs["committed"])
        self._refused = False  # a write was refused: the file closes without flushing again

    @contextlib.contextmanager
    def _writing(self, lo: int, hi: int) -> Iterator[None]:
        """Rows ``lo..hi`` being written: a write the storage refuses (full disk, size limit, quota) becomes
        the store's error, saying how many rows are kept and how to resume."""
        try:
            yield
        except (OSError, RuntimeError) as e:
            reason = storage_refused(e)
            if reason is None:
                raise
            self._refused = True
            REFUSED.append(self.path)
            with contextlib.suppress(OSError):
                refused_marker(self.path).touch()
            raise self._format.error(self._refusal(lo, hi, reason)) from e

    def _refusal(self, lo: int, hi: int, reason: str) -> str:
        words = self._format.messages
        try:
            per_row = self.path.stat().st_size / max(self.committed, 1)
            need = f" (about {(self.n_rows - self.committed) * per_row / 1e9:.2f} GB more for the rest)"
        except OSError:
            need = ""
        return (f"{words.noun} {self.path}: {reason} while writing rows {lo}..{hi - 1}. {self.committed} of "
                f"{self.n_rows} rows are committed and kept; free space under {self.path.parent}{need}, then "
                f"{words.resume}: it goes on at row {self.committed} (end this Python process first: HDF5 cannot "
                "close a file after a refused write)")

    @property
    def complete(self) -> bool:
        return self.committed == self.n_rows

    def _reserve(self, b: int) -> tuple[int, int]:
        """``(lo, hi)``: the next ``b`` rows, or ValueError when they overrun the file."""
        lo, hi = self.committed, self.committed + b
        if hi > self.n_rows:
            raise ValueError(f"appending {b} rows overruns the {self._unit}'s {self.n_rows} rows")
        return lo, hi

    def _commit(self, hi: int) -> None:
        """Rows below ``hi`` are written: flush, commit, flush (see the module docstring)."""
        self._f.flush()
        self._f.attrs["committed"] = hi
        self._f.flush()
        self.committed = hi

    def close(self) -> None:
        if self._f.id.valid:
            try:
                self._f.close()
            except (OSError, RuntimeError):
                if not self._refused:
                    raise  # after a refused write HDF5 cannot flush its buffers: the committed rows are on disk

    def __enter__(self) -> "RowWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ---------------------------------------------------------------- reading and merging


@dataclass
class Shard:
    """One file of a run as read: where it is, its attributes and how many rows it committed."""

    path: Path
    attrs: dict[str, Any]  # every file attribute as a Python value, ``committed`` included
    committed: int


@dataclass
class MergedRows:
    """Shards merged into scenario order: merged row ``i`` is row ``local[i]`` of ``shards[shard_of[i]]``."""

    shards: list[Shard]
    shard_of: np.ndarray  # (N,) int64
    local: np.ndarray  # (N,) int64
    columns: dict[str, np.ndarray]  # (N, ...) per column, ordered by scenario_index


def read_shards(paths: Sequence[Path], fmt: StoreFormat, columns: Sequence[str], *,
                require_complete: bool = True, optional: Sequence[str] = ()) -> MergedRows:
    """The committed rows of one run's shard files, merged in ``scenario_index`` order (step 4).

    ``columns`` are read into memory (``scenario_index`` always is); so are the ``optional`` ones a
    run's files hold (a column of some files of a run but not of all is a damaged file).

    Raises:
        fmt.mismatch_error: a shard belongs to another run (names every difference).
        fmt.error: a shard is unreadable or incomplete, ranks repeat, ranks are missing
            (``require_complete``), a scenario appears in two rows, or an optional column is missing
            from some shards only.
    """
    columns = tuple(dict.fromkeys(("scenario_index", *columns)))
    shards: list[Shard] = []
    parts: dict[str, list[np.ndarray]] = {name: [] for name in (*columns, *optional)}
    lacking: dict[str, list[Path]] = {name: [] for name in optional}  # the shards without an optional column
    for path in paths:
        shard, data = _read_shard(path, fmt, columns, require_complete, optional)
        if shards:  # before the rank checks: a file of another run is named as such
            _check_same_run(shard, shards[0], fmt)
        shards.append(shard)
        for name in data:
            parts[name].append(data[name])
        for name in optional:
            if name not in data:
                lacking[name].append(shard.path)
    _check_ranks(shards, fmt, require_complete)
    for name, without in lacking.items():
        if 0 < len(without) < len(shards):
            raise fmt.error(f"{fmt.messages.noun} {without[0]} is corrupt (it lacks {name!r}, which the other "
                            f"shards of its run hold); {fmt.messages.remedy}")
    columns = (*columns, *(name for name in optional if parts[name] and not lacking[name]))
    index = np.concatenate(parts["scenario_index"])
    order = np.argsort(index, kind="stable")
    _check_unique(index[order], shards, fmt)
    return MergedRows(
        shards=shards,
        shard_of=np.concatenate([np.full(s.committed, k, dtype=np.int64) for k, s in enumerate(shards)])[order],
        local=np.concatenate([np.arange(s.committed, dtype=np.int64) for s in shards])[order],
        columns={name: np.concatenate(parts.pop(name))[order] for name in columns})


def _read_shard(path: Path, fmt: StoreFormat, columns: Sequence[str], require_complete: bool,
                optional: Sequence[str] = ()) -> tuple[Shard, dict[str, np.ndarray]]:
    """One file's attributes and the committed rows of ``columns`` and of the ``optional`` ones it holds."""
    words = fmt.messages
    with open_checked(path, "r", fmt) as f:
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
        committed, n_rows = int(attrs["committed"]), int(attrs[fmt.rows_attr])
        if require_complete and committed != n_rows:
            raise fmt.error(f"{words.short_noun} {path} is incomplete ({committed} of {n_rows} rows); "
                            f"{words.resume}")
        try:
            data = {name: f[name][:committed] for name in (*columns, *(n for n in optional if n in f))}
        except (KeyError, OSError) as e:
            raise fmt.error(f"{words.noun} {path} is corrupt ({e}); {words.remedy}") from e
    return Shard(path, attrs, committed), data


def _check_same_run(shard: Shard, first: Shard, fmt: StoreFormat) -> None:
    words = fmt.messages
    diffs = identity_diffs(fmt.shard_identity(shard.attrs), fmt.shard_identity(first.attrs), words.hints,
                           both_ways=True)
    if diffs:
        raise fmt.mismatch_error(f"{words.shards_noun} {shard.path} and {first.path} belong to different runs "
                                 f"({'; '.join(diffs)}); pass the shards of one run")


def _check_ranks(shards: list[Shard], fmt: StoreFormat, require_complete: bool) -> None:
    words = fmt.messages
    ranks = [int(s.attrs["shard_rank"]) for s in shards]
    world = int(shards[0].attrs["shard_world_size"])
    if len(set(ranks)) != len(ranks):
        raise fmt.error(f"{words.shards_noun} {[str(s.path) for s in shards]} repeat ranks {sorted(ranks)}; "
                        "pass each <name>.rank<k>.h5 file once")
    if require_complete and len(shards) != world:
        raise fmt.error(f"{words.short_noun} {shards[0].path} is one of {world} shards but {len(shards)} were "
                        "given; pass every <name>.rank<k>.h5 file")


def _check_unique(sorted_index: np.ndarray, shards: list[Shard], fmt: StoreFormat) -> None:
    """No scenario is held twice (shards that overlap would count it twice in every statistic)."""
    twice = np.unique(sorted_index[1:][sorted_index[1:] == sorted_index[:-1]])
    if len(twice):
        raise fmt.error(f"{fmt.messages.shards_noun} {[str(s.path) for s in shards]} hold scenarios "
                        f"{twice[:5].tolist()}{' ...' if len(twice) > 5 else ''} more than once; pass the "
                        "shards of one run, each once")
