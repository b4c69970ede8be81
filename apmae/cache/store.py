"""The HDF5 attention cache: one file per (target model, scenario set, rank).

Glossary: N scenarios, S tokens, L layers, H query heads, k heads stored per layer
(H, or fewer in a sampled cache), K label tokens, T = S(S+1)/2 entries of a causal lower
triangle (diagonal included), W stored elements per head (``apmae.cache.codec.packed_width``).

Layout of one file::

    patterns      (N, L, k, W) uint8    the lower triangles, 14 bits per value (apmae.cache.codec)
    heads         (N, L, k) int16       sampled caches only: the head each pattern slot holds, ascending
    scenario_index (N,) int64            row of the scenario in its ScenarioSet
    input_ids (N, S) int32, label_ids (N, K) int32, label_len, prediction (int32),
    probability, loss (float32), correct (uint8), task (int16), source_id (str),
    span_start, span_end (int64), split (int8)
    attrs: schema_version, encoding, pattern_kind, target (JSON), seq_len, n_layers, n_heads,
           scenario_fingerprint, scenario_meta, task_names, n_scenarios,
           shard_rank, shard_world_size, shard_rows, apmae_version, created,
           compression, committed; sampled caches also heads (``layerwise:<f>``), head_seed

Values: each head's lower triangle (row-major, :mod:`apmae.common.triangle`) in the
stored form of the file's ``encoding``, W elements per head; the encodings
(bfloat16 bits, 14-bit packing) and their precision live in :mod:`apmae.cache.codec`.
Compression stays optional. Measured on the demo target's patterns
(benchmarks/bench_extraction.py): on 14-bit data LZF gains nothing and deflate
1 %; on uint16 bit patterns deflate gains 1.28x and LZF 1.09x, but either
encodes and writes ~50-60 MB/s per core against ~170 MB/s for the 14-bit
packing, so on a CPU machine it costs more time than the model's forward
pass. ``compression="gzip"`` (chunks deflated in parallel threads) with
``encoding="bfloat16-bits"`` is the smallest option when disk matters more
than time.

``pattern_kind`` says what the patterns are: ``attention`` (the softmax
weights) or ``contribution`` (each head's norm-based contribution weights,
:mod:`apmae.target.contribution`; same shape, non-negative, rows sum to
1). It is part of the file's identity, so one file, or one set of shards,
never mixes the two; files written before the attribute hold attention.

A sampled cache (``heads="layerwise:<f>"``, :mod:`apmae.cache.heads`) stores only the
round(f*H) heads of each layer that the layerwise draw seeded by ``head_seed`` keeps for each
scenario: the writer is given every head and keeps the drawn ones, the reader serves those
and refuses the others. The sample and its seed are attributes, and part of the identity,
of sampled caches only, so a cache of every head keeps the attributes and identity it had.

Creating, resuming, committing and merging rank shards follow the row-store
protocol of :mod:`apmae.common.h5shards`: ``committed`` is written only after a
batch's rows are flushed, so a run killed at any point resumes exactly where
it stopped. The reader needs only
numpy and h5py and opens its file handles lazily per process, so DataLoader
workers can share one :class:`AttentionCache` object.
"""

from __future__ import annotations

import datetime
import json
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import h5py
import numpy as np

from apmae import __version__
from apmae.cache.codec import DEFAULT_ENCODING, ENCODINGS, decode_stored, encode_stored, packed_width, stored_dtype
from apmae.cache.heads import ALL, canonical_sample, heads_per_layer, layerwise_fraction, sampled_heads
from apmae.common import h5shards
from apmae.common.cores import usable_cores
from apmae.common.files import expand_files
from apmae.common.h5shards import RowWriter, StoreError, StoreFormat, StoreMessages, checksummed
from apmae.common.h5shards import shard_path, shard_rows  # noqa: F401 (the cache's file names and rank rows, as before)
from apmae.common.triangle import from_triangle, triangle_size

SCHEMA_VERSION = 2
COMPRESSIONS = ("none", "lzf", "gzip")
DEFAULT_COMPRESSION = "none"
PATTERN_KINDS = ("attention", "contribution")
DEFAULT_PATTERN_KIND = "attention"
_CHUNK_BYTES = 1 << 16  # a chunk holds about one S=256 head: one head read touches one chunk
_GZIP_LEVEL = 1  # level 4 saves only ~2 % more on attention patterns and compresses much slower

# Scenario columns copied from the ScenarioSet, then the per-scenario results of the target.
_SCENARIO_COLUMNS = ("input_ids", "label_ids", "label_len", "task", "source_id", "span_start", "span_end", "split")
_RESULT_COLUMNS = {"prediction": np.int32, "probability": np.float32, "correct": np.uint8, "loss": np.float32}
_COLUMNS = ("scenario_index", *_SCENARIO_COLUMNS, *_RESULT_COLUMNS)


class CacheError(StoreError):
    """A cache file cannot be used (corrupt, truncated, incomplete or foreign)."""


class CacheMismatchError(CacheError):
    """A cache file was written for another model, sequence length, scenario set or sharding."""


def check_pattern_kind(pattern_kind: str) -> str:
    """``pattern_kind`` itself when it is one of :data:`PATTERN_KINDS`.

    Raises:
        ValueError: another kind, saying which exist.
    """
    if pattern_kind not in PATTERN_KINDS:
        raise ValueError(f"pattern_kind={pattern_kind!r}; use one of {PATTERN_KINDS}")
    return pattern_kind


# ---------------------------------------------------------------- writing


@dataclass
class CacheSpec:
    """Everything that identifies a shard file before any row is written."""

    target: dict[str, Any]  # apmae.target.Target.summary()
    seq_len: int
    scenario_fingerprint: str
    n_scenarios: int  # rows of the whole scenario set
    shard_rank: int = 0
    shard_world_size: int = 1
    compression: str = DEFAULT_COMPRESSION
    encoding: str = DEFAULT_ENCODING
    pattern_kind: str = DEFAULT_PATTERN_KIND  # one of PATTERN_KINDS
    heads: str = ALL  # which heads are stored: all, or layerwise:<f> (apmae.cache.heads)
    head_seed: int = 0  # seeds the layerwise draw (recorded for sampled caches only)

    def attrs(self) -> dict[str, Any]:
        """The file attributes this spec fixes (what :func:`identity_of` reads back, plus compression).

        Raises:
            ValueError: ``heads`` is neither ``all`` nor ``layerwise:<fraction in (0, 1]>``.
        """
        t = self.target
        heads = canonical_sample(self.heads)
        sample = {} if heads == ALL else {"heads": heads, "head_seed": int(self.head_seed)}
        return {"target": json.dumps(t), "seq_len": self.seq_len, "n_layers": t["n_layers"], "n_heads": t["n_heads"],
                "scenario_fingerprint": self.scenario_fingerprint, "n_scenarios": self.n_scenarios,
                "shard_rank": self.shard_rank, "shard_world_size": self.shard_world_size,
                "encoding": self.encoding, "pattern_kind": self.pattern_kind, "compression": self.compression,
                **sample}

    def identity(self) -> dict[str, Any]:
        return identity_of(self.attrs())


def identity_of(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """What must agree before a shard file is appended to, merged with others or reused, from its attributes."""
    target = json.loads(attrs["target"])
    return {"model": target["model"], "n_layers": int(attrs["n_layers"]), "n_heads": int(attrs["n_heads"]),
            "seq_len": int(attrs["seq_len"]), "dtype": target["dtype"],
            "scenario_fingerprint": str(attrs["scenario_fingerprint"]), "n_scenarios": int(attrs["n_scenarios"]),
            "shard_rank": int(attrs["shard_rank"]), "shard_world_size": int(attrs["shard_world_size"]),
            "encoding": str(attrs["encoding"]),
            # files written before the attribute hold attention
            "pattern_kind": str(attrs.get("pattern_kind", DEFAULT_PATTERN_KIND)),
            # only a sampled cache records its sample: a cache of every head keeps the identity it had
            **({"heads": str(attrs["heads"]), "head_seed": int(attrs["head_seed"])} if "heads" in attrs else {})}


def _run_identity(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """What every shard of one cache shares: its identity but for the rank."""
    identity = identity_of(attrs)
    del identity["shard_rank"]
    return identity


FORMAT = StoreFormat(
    version=SCHEMA_VERSION, rows_dataset="patterns", rows_attr="shard_rows", identity=identity_of,
    shard_identity=_run_identity, error=CacheError, mismatch_error=CacheMismatchError,
    messages=StoreMessages(
        noun="attention cache", short_noun="cache", shards_noun="attention cache shards", schema="cache",
        remedy="delete it to rebuild", foreign="not a complete apmae attention cache ({error}); delete it to rebuild",
        refusal="was written for a different run ({diffs}); it is never appended to or reused: delete it or "
                "choose another cache_dir/name",
        resume="run the extraction again to resume it",
        hints={"pattern_kind": "attention and contribution patterns never share a file",
               "heads": "a cache of sampled heads and one of every head never share a file",
               "head_seed": "another draw of the sampled heads"}))


def check_identity(found: Mapping[str, Any], expected: Mapping[str, Any], path: str | Path) -> None:
    """Raise :class:`CacheMismatchError` naming every key of ``expected`` on which ``found`` differs."""
    h5shards.check_identity(found, expected, path, FORMAT)


class CacheWriter(RowWriter):
    """Appends scenario rows of one shard in a fixed order; resumes after a kill.

    Use :meth:`open`; then :meth:`append` the results for :meth:`pending`
    rows in order, a batch at a time. A sampled cache is given every head too
    and keeps each row's drawn ones (:mod:`apmae.cache.heads`).
    """

    _unit = "shard"
    _format = FORMAT

    def __init__(self, path: Path, file: h5py.File, scenarios: Any, rows: np.ndarray) -> None:
        super().__init__(path, file, n_rows=len(rows))
        self._scenarios, self.rows = scenarios, rows
        identity = identity_of(file.attrs)
        self.encoding, self.pattern_kind = identity["encoding"], identity["pattern_kind"]
        self.head_sample, self.head_seed = identity.get("heads", ALL), identity.get("head_seed")
        # HDF5 runs its filters in one thread; deflate in Python threads (zlib releases the GIL) scales
        self._pool = ThreadPoolExecutor(_compress_threads()) if file["patterns"].compression == "gzip" else None

    @classmethod
    def open(cls, path: str | Path, spec: CacheSpec, scenarios: Any) -> "CacheWriter":
        """Create the shard file or reopen it to resume.

        Raises:
            CacheMismatchError: the existing file was written for another
                model, S, scenario set, sharding, encoding, pattern kind or head sample (names every difference).
            CacheError: the existing file is corrupt or truncated.
            ValueError: an unknown compression, encoding, pattern kind or head sample.
        """
        path = Path(path)
        canonical_sample(spec.heads)  # a bad head sample fails before any file
        if spec.compression not in COMPRESSIONS:
            raise ValueError(f"compression={spec.compression!r}; use one of {COMPRESSIONS}")
        if spec.encoding not in ENCODINGS:
            raise ValueError(f"encoding={spec.encoding!r}; use one of {ENCODINGS}")
        check_pattern_kind(spec.pattern_kind)
        rows = shard_rows(spec.n_scenarios, spec.shard_rank, spec.shard_world_size)
        f = h5shards.open_or_create(path, FORMAT, spec.identity(),
                                    partial(_lay_out, spec=spec, scenarios=scenarios, n_rows=len(rows)))
        return cls(path, f, scenarios, rows)

    def pending(self) -> np.ndarray:
        """Scenario rows still to extract, in the order they must be appended."""
        return self.rows[self.committed:]

    def encode(self, bits: np.ndarray) -> np.ndarray:
        """bfloat16 bits of packed triangles (B, L, H, T) -> this file's stored form (thread-safe, no I/O)."""
        return encode_stored(bits, self.encoding)

    def append(self, patterns: np.ndarray, prediction: Any, probability: Any, correct: Any, loss: Any) -> None:
        """Write the next ``B`` rows: patterns (B, L, H, W) of every head as :meth:`encode` returns them, plus
        their outcomes; a sampled cache keeps each row's drawn heads (its scenario index is ``rows[lo:hi]``).

        The rows are flushed before ``committed`` moves, so a kill in between
        leaves them uncommitted and the resumed run rewrites them
        (:meth:`apmae.common.h5shards.RowWriter._commit`).

        Raises:
            ValueError: the rows overrun the shard or the patterns have the wrong shape or type.
        """
        lo, hi = self._reserve(len(patterns))
        ds = self._f["patterns"]
        every_head = (ds.shape[1], int(self._f.attrs["n_heads"]), ds.shape[3])  # (L, H, W)
        if patterns.shape[1:] != every_head or patterns.dtype != ds.dtype:
            raise ValueError(f"patterns of shape {patterns.shape[1:]} {patterns.dtype} do not fit this cache's "
                             f"{every_head} {ds.dtype} ({self.encoding}); encode them with CacheWriter.encode")
        f, idx = self._f, self.rows[lo:hi]
        heads = None
        if self.head_sample != ALL:
            heads = sampled_heads(self.head_seed, idx, ds.shape[1], every_head[1], ds.shape[2])  # (B, L, k)
            patterns = np.take_along_axis(patterns, heads[..., None].astype(np.intp), axis=2)  # (B, L, k, W)
        with self._writing(lo, hi):
            _write_patterns(f["patterns"], lo, patterns, self._pool)
            if heads is not None:
                f["heads"][lo:hi] = heads
            f["scenario_index"][lo:hi] = idx
            for name in _SCENARIO_COLUMNS:
                f[name][lo:hi] = getattr(self._scenarios, name)[idx]
            for name, value in zip(_RESULT_COLUMNS, (prediction, probability, correct, loss)):
                f[name][lo:hi] = np.asarray(value).astype(_RESULT_COLUMNS[name])
            self._commit(hi)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
        super().close()


def chunk_heads(n_heads: int, head_bytes: int) -> int:
    """Heads per chunk: the largest divisor of H whose chunk stays within ~64 KiB (at least 1)."""
    fitting = [d for d in range(1, n_heads + 1) if n_heads % d == 0 and d * head_bytes <= _CHUNK_BYTES]
    return max(fitting, default=1)


def _compression_kwargs(name: str) -> dict[str, Any]:
    if name == "gzip":  # chunks are deflated by apmae (zlib's Adler-32 detects damage)
        return {"compression": name, "shuffle": True, "compression_opts": _GZIP_LEVEL}
    # a Fletcher-32 checksum per chunk makes damaged data an error instead of wrong values
    return {"fletcher32": True, **({"compression": name, "shuffle": True} if name == "lzf" else {})}


def _compress_threads() -> int:
    return max(1, min(8, usable_cores()))


def _write_patterns(ds: h5py.Dataset, lo: int, patterns: np.ndarray, pool: ThreadPoolExecutor | None) -> None:
    """Rows ``lo..`` of the patterns; gzip chunks are compressed in parallel and written as they are stored."""
    if pool is None:
        ds[lo:lo + len(patterns)] = patterns
        return
    per_chunk = ds.chunks[2]
    keys = [(r, layer, h) for r in range(len(patterns)) for layer in range(patterns.shape[1])
            for h in range(0, patterns.shape[2], per_chunk)]
    blobs = pool.map(lambda k: _shuffle_deflate(patterns[k[0], k[1], k[2]:k[2] + per_chunk]), keys)
    for (r, layer, h), blob in zip(keys, blobs):
        ds.id.write_direct_chunk((lo + r, layer, h, 0), blob)


def _shuffle_deflate(block: np.ndarray) -> bytes:
    """What HDF5's shuffle + deflate filters store for one chunk: byte k of every element together, zlib."""
    size = block.dtype.itemsize
    flat = np.ascontiguousarray(block, dtype=block.dtype.newbyteorder("<")).view(np.uint8)
    shuffled = flat.reshape(-1, size).T if size > 1 else flat  # (itemsize, elements)
    return zlib.compress(shuffled.tobytes(), _GZIP_LEVEL)


def _lay_out(f: h5py.File, spec: CacheSpec, scenarios: Any, n_rows: int) -> None:
    """A new shard file's datasets, every one at its final size, and its attributes."""
    n_layers, s = spec.target["n_layers"], spec.seq_len
    fraction = layerwise_fraction(spec.heads)  # None: every head
    stored = heads_per_layer(fraction, spec.target["n_heads"])  # k
    width, dtype = packed_width(triangle_size(s), spec.encoding), stored_dtype(spec.encoding)
    f.create_dataset("patterns", shape=(n_rows, n_layers, stored, width), dtype=dtype,
                     chunks=(1, 1, chunk_heads(stored, width * dtype.itemsize), width),
                     maxshape=h5shards.empty_maxshape(n_rows, (n_layers, stored, width)),
                     **_compression_kwargs(spec.compression))
    if fraction is not None:
        f.create_dataset("heads", shape=(n_rows, n_layers, stored), dtype=np.int16, **checksummed(np.int16))
    f.create_dataset("scenario_index", shape=(n_rows,), dtype=np.int64, **checksummed(np.int64))
    for name in _SCENARIO_COLUMNS:
        col = getattr(scenarios, name)
        dtype = h5py.string_dtype() if col.dtype.kind in "UO" else col.dtype
        f.create_dataset(name, shape=(n_rows, *col.shape[1:]), dtype=dtype, **checksummed(dtype))
    for name, dtype in _RESULT_COLUMNS.items():
        f.create_dataset(name, shape=(n_rows,), dtype=dtype, **checksummed(dtype))
    _write_attrs(f, spec, scenarios, n_rows)


def _write_attrs(f: h5py.File, spec: CacheSpec, scenarios: Any, n_rows: int) -> None:
    f.attrs.update({
        **spec.attrs(), "scenario_meta": json.dumps(scenarios.meta, default=str),
        "task_names": json.dumps(list(scenarios.task_names)), "shard_rows": n_rows, "apmae_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    })


# ---------------------------------------------------------------- reading


class AttentionCache:
    """Read-only view of one cache: a file, a list of shard files, or a glob merging them.

    Rows are ordered by scenario index, whatever the sharding. Metadata columns
    are numpy arrays, as properties (``cache.correct``, ``cache.task``, ...) and
    by name in the ``columns`` dict; patterns are read on demand through handles
    opened lazily in each process (safe to pickle into DataLoader workers).

    ``pattern_kind`` (one of :data:`PATTERN_KINDS`), when given, is the kind
    the files must hold; ``None`` accepts either (see :attr:`pattern_kind`).

    A sampled cache (:attr:`head_sample` is not ``all``) serves :meth:`pattern` for
    the heads it stores of each row (:meth:`stored_heads`); reading every head
    (:meth:`packed`, :meth:`scenario`, iteration) raises :class:`CacheError`.

    Raises:
        CacheMismatchError: shards of different caches (another model, kind, ...)
            or files of another ``pattern_kind``.
        CacheError: missing, corrupt or (with ``require_complete``) incomplete files, or shards
            that repeat a rank or a scenario.
    """

    def __init__(self, paths: str | Path | Sequence[str | Path], *, require_complete: bool = True,
                 pattern_kind: str | None = None) -> None:
        if pattern_kind is not None:
            check_pattern_kind(pattern_kind)
        self.paths = _expand(paths)
        merged = h5shards.read_shards(self.paths, FORMAT, _COLUMNS, require_complete=require_complete,
                                      optional=("heads",))
        self._shards = merged.shards
        self.attrs: dict[str, Any] = dict(self._shards[0].attrs)
        self.attrs.pop("committed")
        self._shard_of, self._local = merged.shard_of, merged.local
        self.columns = merged.columns
        self.columns["source_id"] = self.columns["source_id"].astype(str)
        self.columns["correct"] = self.columns["correct"].astype(bool)
        self._handles: dict[int, h5py.File] = {}
        self._pid = os.getpid()
        if pattern_kind is not None:
            check_identity(self.identity, {"pattern_kind": pattern_kind}, self.paths[0])
        self._heads: np.ndarray | None = self.columns.pop("heads", None)  # (N, L, k) int16, sampled caches only
        if (self._heads is None) != (self.head_sample == ALL):
            raise CacheError(f"cache {self.paths[0]} is corrupt: its heads ({self.head_sample}) and its stored-heads "
                             "dataset disagree; delete it to rebuild")

    def _file(self, shard: int) -> h5py.File:
        if self._pid != os.getpid():  # forked into a worker: never share the parent's HDF5 handles
            self._handles, self._pid = {}, os.getpid()
        if shard not in self._handles:
            self._handles[shard] = h5shards.open_checked(self._shards[shard].path, "r", FORMAT)
        return self._handles[shard]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def close(self) -> None:
        for f in self._handles.values():
            if f.id.valid:
                f.close()
        self._handles = {}

    # -- facts
    def __len__(self) -> int:
        return len(self._local)

    @property
    def seq_len(self) -> int:
        return int(self.attrs["seq_len"])

    @property
    def n_layers(self) -> int:
        return int(self.attrs["n_layers"])

    @property
    def n_heads(self) -> int:
        return int(self.attrs["n_heads"])

    @property
    def target(self) -> dict[str, Any]:
        return json.loads(self.attrs["target"])

    @property
    def pattern_kind(self) -> str:
        """``attention`` or ``contribution``: what the stored patterns are."""
        return self.identity["pattern_kind"]

    @property
    def head_sample(self) -> str:
        """Which heads the cache stores: ``all``, or ``layerwise:<f>`` (:mod:`apmae.cache.heads`)."""
        return self.identity.get("heads", ALL)

    @property
    def head_seed(self) -> int | None:
        """The seed of a sampled cache's layerwise draw; None for a cache of every head."""
        return self.identity.get("head_seed")

    @property
    def heads_stored(self) -> int:
        """k: heads stored of each layer (:attr:`n_heads` unless sampled)."""
        return heads_per_layer(layerwise_fraction(self.head_sample), self.n_heads)

    @property
    def task_names(self) -> list[str]:
        return json.loads(self.attrs["task_names"])

    @property
    def identity(self) -> dict[str, Any]:
        """The first shard's :func:`identity_of` (every shard agrees on it but for ``shard_rank``)."""
        return identity_of(self.attrs)

    # -- columns (N,) per scenario row, ordered by scenario index; also in ``columns`` by name
    @property
    def scenario_index(self) -> np.ndarray:
        """(N,) int64 row of each scenario in its ScenarioSet."""
        return self.columns["scenario_index"]

    @property
    def input_ids(self) -> np.ndarray:
        """(N, S) int32 FIM prompts."""
        return self.columns["input_ids"]

    @property
    def label_ids(self) -> np.ndarray:
        """(N, K) int32 tokens of each hole, zero-padded."""
        return self.columns["label_ids"]

    @property
    def label_len(self) -> np.ndarray:
        """(N,) int32 real tokens in ``label_ids``."""
        return self.columns["label_len"]

    @property
    def task(self) -> np.ndarray:
        """(N,) int16 index into :attr:`task_names`."""
        return self.columns["task"]

    @property
    def source_id(self) -> np.ndarray:
        """(N,) str the file each scenario was mined from (empty for noise)."""
        return self.columns["source_id"]

    @property
    def span_start(self) -> np.ndarray:
        """(N,) int64 UTF-8 byte offset where the hole starts in its file."""
        return self.columns["span_start"]

    @property
    def span_end(self) -> np.ndarray:
        """(N,) int64 UTF-8 byte offset where the hole ends (exclusive)."""
        return self.columns["span_end"]

    @property
    def split(self) -> np.ndarray:
        """(N,) int8 index into :data:`apmae.mining.scenario_set.SPLITS`."""
        return self.columns["split"]

    @property
    def prediction(self) -> np.ndarray:
        """(N,) int32 the target's first predicted token."""
        return self.columns["prediction"]

    @property
    def probability(self) -> np.ndarray:
        """(N,) float32 the target's probability of its prediction."""
        return self.columns["probability"]

    @property
    def correct(self) -> np.ndarray:
        """(N,) bool prediction == the hole's first token."""
        return self.columns["correct"]

    @property
    def loss(self) -> np.ndarray:
        """(N,) float32 cross-entropy of the hole's first token."""
        return self.columns["loss"]

    # -- patterns
    def _read(self, i: int, key: tuple) -> np.ndarray:
        if not -len(self) <= i < len(self):
            raise IndexError(f"row {i} is outside the cache's {len(self)} rows")
        shard, local = int(self._shard_of[i]), int(self._local[i])
        try:
            return self._file(shard)["patterns"][(local, *key)]
        except (OSError, KeyError) as e:
            raise CacheError(f"cannot read row {i} of {self._shards[shard].path} ({e}); the file is "
                             "corrupt: delete it to rebuild") from e

    def _decode(self, stored: np.ndarray) -> np.ndarray:
        return decode_stored(stored, str(self.attrs["encoding"]), triangle_size(self.seq_len))

    def stored_heads(self, i: int) -> np.ndarray:
        """(L, k) int the heads row ``i`` stores of each layer, ascending (every head unless sampled)."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"row {i} is outside the cache's {len(self)} rows")
        if self._heads is None:
            return np.tile(np.arange(self.n_heads), (self.n_layers, 1))
        return self._heads[i].astype(np.int64)

    def require_every_head(self, reader: str) -> None:
        """Raises :class:`CacheError` when the cache is sampled, saying that ``reader`` needs every head."""
        if self._heads is not None:
            raise CacheError(f"cache {self.paths[0]} holds {self.heads_stored} of {self.n_heads} heads per layer "
                             f"(heads: {self.head_sample}), so {reader} cannot read every head: reading every "
                             "head needs a cache extracted with extraction.heads: all")

    def packed(self, i: int) -> np.ndarray:
        """(L, H, T) float32 lower triangles of row ``i``.

        Raises:
            CacheError: a sampled cache (see :meth:`require_every_head`).
        """
        self.require_every_head("packed()")
        return self._decode(self._read(i, ()))

    def pattern(self, i: int, layer: int, head: int) -> np.ndarray:
        """(S, S) float32 pattern of one head of row ``i``.

        Raises:
            CacheError: a sampled cache does not store ``head`` of ``layer`` for row ``i`` (names those it stores).
        """
        return from_triangle(self._decode(self._read(i, (layer, self._slot(i, layer, head)))), self.seq_len)

    def _slot(self, i: int, layer: int, head: int) -> int:
        """Where ``head`` of ``layer`` is stored in row ``i``: the head itself unless the cache is sampled."""
        if self._heads is None:
            return head
        stored = self.stored_heads(i)[layer]  # (k,)
        slot = np.flatnonzero(stored == head)
        if len(slot) == 0:
            raise CacheError(f"cache {self.paths[0]} stores heads {stored.tolist()} of layer {layer} for row {i} "
                             f"(heads: {self.head_sample}, head_seed: {self.head_seed}), not head {head}; select "
                             f"heads with head_selection: {self.head_sample} and seed: {self.head_seed}, or "
                             "extract with extraction.heads: all")
        return int(slot[0])

    def scenario(self, i: int) -> np.ndarray:
        """(L, H, S, S) float32 patterns of every head of row ``i``.

        Raises:
            CacheError: a sampled cache (see :meth:`require_every_head`).
        """
        self.require_every_head("scenario()")
        return from_triangle(self._decode(self._read(i, ())), self.seq_len)

    def __iter__(self) -> Iterator[np.ndarray]:
        """Every row's :meth:`scenario`.

        Raises:
            CacheError: a sampled cache (see :meth:`require_every_head`), before any row is read.
        """
        self.require_every_head("iterating over the cache")
        for i in range(len(self)):
            yield self.scenario(i)


def _expand(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    return expand_files(paths, what="attention cache", hint="build the cache first", error=CacheError)


def cache_files(cache_dir: str | Path, name: str) -> list[Path]:
    """Every shard file of cache ``name`` in ``cache_dir``, in rank order."""
    return h5shards.shard_files(cache_dir, name)
