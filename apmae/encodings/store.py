"""AP-MAE encodings of every head of every scenario, computed once and stored next to a cache.

Glossary: N scenarios (rows), L layers, H query heads, D encoder width, S tokens,
F = 4 pattern statistics per head (:data:`STAT_NAMES`), R = 5 prediction-row scalars
(:data:`apmae.encodings.readouts.ROW_FEATURE_NAMES`).

A frozen AP-MAE maps each head's pattern to a CLS and a mean-patch embedding.
Probes, clustering and interventions need only those, so they are computed
once (batched, under ``torch.inference_mode``, optionally under autocast) and
written as one HDF5 file per (pattern source, encoder)::

    cls      (N, L, H, D) float16   final CLS token of the unmasked pattern
    mean     (N, L, H, D) float16   mean of the final patch tokens
    row_mean (N, L, H, D) float16   mean of the tokens of the patches holding the scored row
    row_attn (N, L, H, D) float16   the same tokens weighted by the scored row's attention mass
    stats    (N, L, H, F) float32   raw-pattern statistics (the pattern-statistics baseline)
    row      (N, L, H, R) float32   scalars of the scored row (:mod:`apmae.encodings.readouts`)
    row_attention (N, L, H, S) float16   the scored row itself (raw attention weights)
    the per-scenario columns of the attention cache (scenario_index, input_ids, label_ids,
    label_len, task, source_id, span_start, span_end, split, prediction, probability,
    correct, loss), row i of this file = row i of the source
    attrs: schema_version, source_fingerprint, encoder_hash, scaler, seq_len, n_layers,
           n_heads, dim, task_names, target (JSON), n_rows, scenario_fingerprint, patch_size,
           shard_rank, shard_world_size, group_fingerprint, created, committed

``source_fingerprint`` identifies the exact target, scenarios, rows and
pattern kind (:func:`source_fingerprint`; for a pattern cache :func:`cache_fingerprint`) and
``encoder_hash`` the exact encoder weights (:func:`encoder_hash`); a file whose
identity differs is refused, never used. Rows are appended in order and
``committed`` moves only after they are flushed, so an interrupted build
resumes where it stopped (the row-store protocol of :mod:`apmae.common.h5shards`,
shared with the attention cache).

Names: the encodings of a cache (or of a target's scenarios, streamed) under one encoder are the
files ``<cache name>.<encoder hash>.rank<k>.h5`` (:func:`encodings_path`), whichever DataModule, demo
or study step computes them: a cache encoded in one process is rank 0's file alone.

Shards: encodings streamed from a target under DDP (:mod:`apmae.encodings.stream`) are
one file per rank, ``<name>.rank<k>.h5``, each holding the rows
``apmae.common.h5shards.shard_rows(N, k, world)``. ``group_fingerprint`` is the
fingerprint of all N rows, the one a single file of the whole set has, so a
merged set of shards and a single file of the same scenarios, target and
encoder carry the same identity. :class:`EncodingSet` merges shards in
scenario order.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence, TYPE_CHECKING
from dataclasses import asdict
import contextlib

import h5py
import numpy as np
from tqdm.auto import tqdm

from apmae import __version__
from apmae.common import h5shards
from apmae.common.files import expand_files
from apmae.common.h5shards import RowWriter, StoreError, StoreFormat, StoreMessages, checksummed
from apmae.encodings.readouts import READOUTS, ROW_FEATURE_NAMES, row_features, row_readouts, scored_rows

if TYPE_CHECKING:  # annotations only: the classes' modules import torch or transformers
    from apmae.cache.store import AttentionCache
    from apmae.model.net import APMAE

SCHEMA_VERSION = 3  # 2: shard attributes (rank, world size, group fingerprint); 3: prediction-row readouts
STAT_NAMES = ("entropy", "mean_distance", "first_token_mass", "diagonal_mass")
KINDS = ("cls", "mean")  # pooled encodings of the whole image (the batches of the probe DataModules)
WIDE = (*KINDS, *READOUTS)  # every (N, L, H, D) array
_DTYPES = {**{k: np.float16 for k in WIDE}, "stats": np.float32, "row": np.float32, "row_attention": np.float16}
_SCALARS = {"stats": len(STAT_NAMES), "row": len(ROW_FEATURE_NAMES)}
# Per-scenario columns every encodings file carries (copied from the pattern source).
COLUMNS = ("scenario_index", "input_ids", "label_ids", "label_len", "task", "source_id", "span_start",
           "span_end", "split", "prediction", "probability", "correct", "loss")
# The outcome columns: known only after the target ran, so written row by row with the encodings.
OUTCOMES = {"prediction": np.int32, "probability": np.float32, "correct": np.bool_, "loss": np.float32}
_IDENTITY = ("source_fingerprint", "encoder_hash", "scaler", "seq_len", "n_layers", "n_heads", "dim", "n_rows",
             "shard_rank", "shard_world_size")
_STRINGS = ("source_fingerprint", "encoder_hash", "scaler")
# What every rank shard of one encoding run shares (each shard's source_fingerprint covers its own rows).
_RUN_IDENTITY = ("encoder_hash", "scaler", "seq_len", "n_layers", "n_heads", "dim", "shard_world_size")
_ROW_CHUNK = 64


class EncodingsError(StoreError):
    """An encodings file cannot be used (corrupt, incomplete or not an encodings file)."""


class EncodingsMismatchError(EncodingsError):
    """An encodings file was computed by another encoder, scaler or from other scenarios."""


# ---------------------------------------------------------------- identities


def encoder_hash(net: APMAE) -> str:
    """16 hex digits identifying an AP-MAE's configuration and exact weights."""
    h = hashlib.sha256(json.dumps(asdict(net.config), sort_keys=True).encode())
    for name, value in sorted(net.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def encodings_name(cache_name: str, encoder: str) -> str:
    """``<cache name>.<encoder hash>``: the shard name of a cache's encodings under one encoder."""
    return f"{cache_name}.{encoder}"


def encodings_path(folder: str | Path, cache_name: str, encoder: str, rank: int = 0) -> Path:
    """``<folder>/<cache name>.<encoder hash>.rank<k>.h5``: the file rank ``k`` writes of a cache's encodings.

    Rank 0's file of an encoding written before the one name, ``<cache name>.<encoder hash>.encodings.h5``,
    is read where it is (its identity is checked as any file's) until a file of the new name exists.
    """
    path = h5shards.shard_path(folder, encodings_name(cache_name, encoder), rank)
    former = _former_path(folder, cache_name, encoder)
    return former if rank == 0 and former.is_file() and not path.exists() else path


def encodings_files(folder: str | Path, cache_name: str, encoder: str) -> list[Path]:
    """Every file of a cache's encodings under one encoder, in rank order ([] when none is written yet)."""
    files = h5shards.shard_files(folder, encodings_name(cache_name, encoder))
    former = _former_path(folder, cache_name, encoder)
    return files or ([former] if former.is_file() else [])


def _former_path(folder: str | Path, cache_name: str, encoder: str) -> Path:
    return Path(folder) / f"{encodings_name(cache_name, encoder)}.encodings.h5"


def source_fingerprint(target: dict[str, Any], scenario_fingerprint: str, seq_len: int,
                       scenario_index: np.ndarray, pattern_kind: str = "attention") -> str:
    """16 hex digits identifying encodings' source: the target (its summary), scenario set, S, rows and
    the kind of pattern encoded (:data:`apmae.cache.PATTERN_KINDS`)."""
    h = hashlib.sha256(json.dumps(target, sort_keys=True, default=str).encode())
    h.update(str(scenario_fingerprint).encode())
    h.update(str(int(seq_len)).encode())
    h.update(np.ascontiguousarray(scenario_index, dtype=np.int64).tobytes())
    if pattern_kind != "attention":  # attention sources keep the fingerprints they had before kinds existed
        h.update(pattern_kind.encode())
    return h.hexdigest()[:16]


def cache_fingerprint(cache: AttentionCache) -> str:
    """The :func:`source_fingerprint` of a pattern cache's target, scenarios, rows and pattern kind."""
    return source_fingerprint(cache.target, str(cache.attrs["scenario_fingerprint"]), cache.seq_len,
                              cache.columns["scenario_index"], cache.pattern_kind)


# ---------------------------------------------------------------- statistics


def pattern_stats(patterns: Any) -> Any:
    """Per-head statistics of raw causal patterns: (..., S, S) -> (..., F) float32 torch.

    entropy: mean over query rows of -sum_j a_ij log a_ij (nats); mean_distance: mean
    over rows of sum_j a_ij (i - j); first_token_mass: mean over rows i >= 1 of a_i0
    (row 0 can only attend to itself); diagonal_mass: mean over rows of a_ii.
    """
    import torch  # import cost ~1.4 s: readers of an encodings file need only h5py and numpy

    a = torch.as_tensor(patterns).float()
    s = a.shape[-1]
    pos = torch.arange(s, device=a.device, dtype=a.dtype)
    entropy = -(a * torch.log(a.clamp_min(1e-30))).sum(-1).mean(-1)  # (...)
    distance = (a * (pos[:, None] - pos[None, :]).clamp_min(0)).sum(-1).mean(-1)
    first = a[..., 1:, 0].mean(-1) if s > 1 else a[..., 0, 0]
    diagonal = a.diagonal(dim1=-2, dim2=-1).mean(-1)
    return torch.stack([entropy, distance, first, diagonal], dim=-1)


# ---------------------------------------------------------------- writing


@dataclass(frozen=True)
class EncodingsSpec:
    """What identifies an encodings file before any row is written."""

    source_fingerprint: str
    encoder_hash: str
    scaler: str
    seq_len: int
    n_layers: int
    n_heads: int
    dim: int
    n_rows: int
    task_names: tuple[str, ...]
    target: dict[str, Any]
    scenario_fingerprint: str = ""  # the ScenarioSet's fingerprint
    shard_rank: int = 0
    shard_world_size: int = 1
    group_fingerprint: str = ""  # source fingerprint of all shards together; "" = source_fingerprint (one file)
    patch_size: int = 0  # the encoder's patch side (its row readouts' patch columns); 0 = not recorded

    def identity(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _IDENTITY}

    def attrs(self) -> dict[str, Any]:
        """Everything written as file attributes (identity and descriptive facts)."""
        return {**self.identity(), "scenario_fingerprint": self.scenario_fingerprint, "patch_size": self.patch_size,
                "group_fingerprint": self.group_fingerprint or self.source_fingerprint,
                "task_names": json.dumps(list(self.task_names)), "target": json.dumps(self.target)}


def _file_identity(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """A file's identity (the :class:`EncodingsSpec` fields it was written for) from its attributes."""
    return {k: (str(attrs[k]) if k in _STRINGS else int(attrs[k])) for k in _IDENTITY}


def _run_identity(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """What every rank shard of one encoding run shares: encoder, scaler, shapes, world size, all rows' source."""
    identity = _file_identity(attrs)
    return {**{k: identity[k] for k in _RUN_IDENTITY}, "group_fingerprint": str(attrs["group_fingerprint"])}


_SCENARIOS_HINT = "other scenarios or another target"
FORMAT = StoreFormat(
    version=SCHEMA_VERSION, rows_dataset="cls", rows_attr="n_rows", identity=_file_identity,
    shard_identity=_run_identity, error=EncodingsError, mismatch_error=EncodingsMismatchError,
    messages=StoreMessages(
        noun="encodings file", short_noun="encodings file", shards_noun="encodings shards", schema="encodings",
        remedy="delete it to recompute",
        foreign="not an apmae encodings file ({error}); delete it or choose another path",
        refusal="was computed for a different run ({diffs}); it is never used or appended to: delete it, or point "
                "encodings_path elsewhere",
        resume="run the encoding again to resume it",
        hints={"encoder_hash": "another AP-MAE encoder", "source_fingerprint": _SCENARIOS_HINT,
               "group_fingerprint": _SCENARIOS_HINT, "shard_world_size": "another number of ranks"}))


def check_identity(found: dict[str, Any], expected: dict[str, Any], path: Path) -> None:
    """Raise :class:`EncodingsMismatchError` naming every field in which ``found`` differs."""
    h5shards.check_identity(found, expected, path, FORMAT)


@dataclass(frozen=True)
class EncodedRows:
    """Everything an encodings file stores for B scenarios (numpy, the file's dtypes)."""

    cls: np.ndarray  # (B, L, H, D) float16
    mean: np.ndarray  # (B, L, H, D) float16
    row_mean: np.ndarray  # (B, L, H, D) float16
    row_attn: np.ndarray  # (B, L, H, D) float16
    stats: np.ndarray  # (B, L, H, F) float32
    row: np.ndarray  # (B, L, H, R) float32
    row_attention: np.ndarray  # (B, L, H, S) float16, the scored row

    def __len__(self) -> int:
        return len(self.cls)

    @classmethod
    def concatenate(cls, parts: Sequence["EncodedRows"], axis: int) -> "EncodedRows":
        """Parts of the same scenarios (``axis=1``: consecutive layers) or of consecutive scenarios (0)."""
        return cls(**{f: np.concatenate([getattr(p, f) for p in parts], axis=axis) for f in ARRAYS})


ARRAYS = (*WIDE, *_SCALARS, "row_attention")  # the per-head datasets of a file, EncodedRows' fields


class EncodingsWriter(RowWriter):
    """Appends rows of an encodings file in order; reopening a partial file resumes it."""

    _format = FORMAT

    def __init__(self, path: Path, file: h5py.File) -> None:
        super().__init__(path, file, n_rows=int(file.attrs["n_rows"]))

    @classmethod
    def open(cls, path: str | Path, spec: EncodingsSpec, columns: dict[str, np.ndarray]) -> "EncodingsWriter":
        """Create the file (with every column of ``columns`` written) or reopen it to resume.

        Raises:
            EncodingsMismatchError: the existing file belongs to another encoder / source.
            EncodingsError: the existing file is corrupt.
        """
        path = Path(path)
        missing = [c for c in COLUMNS if c not in columns]
        if missing and not path.exists():  # a file being resumed has its columns already
            raise ValueError(f"columns {missing} are missing; an encodings file carries {list(COLUMNS)}")
        return cls(path, h5shards.open_or_create(path, FORMAT, spec.identity(),
                                                 partial(_lay_out, spec=spec, columns=columns)))

    def append(self, rows: EncodedRows, outcomes: dict[str, np.ndarray] | None = None) -> None:
        """Write the next B rows of every array and optionally their :data:`OUTCOMES` columns (B,),
        all committed together.

        Raises:
            ValueError: the rows overrun the file, the shapes do not fit, or ``outcomes`` names a
                column that is not an outcome or has another number of rows.
        """
        wrong = {name: getattr(rows, name).shape[1:] for name in ARRAYS
                 if getattr(rows, name).shape[1:] != self._f[name].shape[1:] or len(getattr(rows, name)) != len(rows)}
        if wrong:
            raise ValueError(f"encodings of shapes {wrong} do not fit this file's "
                             f"{ {name: self._f[name].shape[1:] for name in wrong} }")
        checked = _checked_outcomes(outcomes or {}, len(rows))
        lo, hi = self._reserve(len(rows))
        with self._writing(lo, hi):
            for name in ARRAYS:
                self._f[name][lo:hi] = getattr(rows, name).astype(_DTYPES[name])
            for name, value in checked.items():
                self._f[name][lo:hi] = value
            self._commit(hi)


def _checked_outcomes(outcomes: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    unknown = sorted(set(outcomes) - set(OUTCOMES))
    if unknown:
        raise ValueError(f"{unknown} are not outcome columns; only {list(OUTCOMES)} are written with the rows")
    out = {name: np.asarray(value).astype(OUTCOMES[name]) for name, value in outcomes.items()}
    wrong = {name: len(v) for name, v in out.items() if v.shape != (n,)}
    if wrong:
        raise ValueError(f"outcome columns {wrong} do not have the {n} rows being appended")
    return out


def placeholder_outcomes(n: int) -> dict[str, np.ndarray]:
    """Outcome columns for a file whose outcomes arrive with its rows (never read before they do)."""
    return {"prediction": np.full(n, -1, np.int32), "probability": np.full(n, np.nan, np.float32),
            "correct": np.zeros(n, np.bool_), "loss": np.full(n, np.nan, np.float32)}


def _lay_out(f: h5py.File, spec: EncodingsSpec, columns: dict[str, np.ndarray]) -> None:
    """A new file's encodings datasets at their final size, its per-scenario columns and attributes."""
    n, shape = spec.n_rows, (spec.n_rows, spec.n_layers, spec.n_heads)
    chunks = (min(max(n, 1), _ROW_CHUNK), 1, spec.n_heads)
    for kind in WIDE:
        f.create_dataset(kind, shape=(*shape, spec.dim), dtype=_DTYPES[kind], chunks=(*chunks, spec.dim),
                         maxshape=h5shards.empty_maxshape(n, (*shape[1:], spec.dim)), **checksummed(_DTYPES[kind]))
    for name, width in (*_SCALARS.items(), ("row_attention", spec.seq_len)):
        f.create_dataset(name, shape=(*shape, width), dtype=_DTYPES[name], **checksummed(_DTYPES[name]))
    for name in COLUMNS:
        col = np.asarray(columns[name])
        if len(col) != n:
            raise ValueError(f"column {name!r} has {len(col)} rows, expected {n}")
        if col.dtype.kind in "UO":
            f.create_dataset(name, data=col.astype(object), dtype=h5py.string_dtype())
        else:
            f.create_dataset(name, data=col, **checksummed(col.dtype))
    f.attrs.update({**spec.attrs(), "stat_names": json.dumps(list(STAT_NAMES)),
                    "row_feature_names": json.dumps(list(ROW_FEATURE_NAMES)), "apmae_version": __version__,
                    "created": datetime.datetime.now(datetime.timezone.utc).isoformat()})


# ---------------------------------------------------------------- reading


def _expand(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    return expand_files(paths, what="encodings", hint="compute them first", error=EncodingsError)


class EncodingSet:
    """Read-only view of encodings: one file, a list of rank shards, or a glob merging them.

    Rows are ordered by scenario index, whatever the sharding; the per-scenario
    columns are in memory, the encodings are read on demand. ``load()`` reads
    ``cls``/``mean``/``stats`` into memory once (the demo's size); at paper
    scale read per head (:meth:`head`) or per row block (:meth:`rows`).
    ``identity`` of a complete set of shards is that of one file holding every
    row (see :mod:`apmae.encodings.store`), so it compares equal across world sizes.
    """

    def __init__(self, paths: str | Path | Sequence[str | Path], *, require_complete: bool = True) -> None:
        self.paths = _expand(paths)
        self.path = self.paths[0]
        merged = h5shards.read_shards(self.paths, FORMAT, COLUMNS, require_complete=require_complete)
        shards, first = merged.shards, merged.shards[0].attrs
        self.identity = _file_identity(first) if len(shards) == 1 else {
            **_file_identity(first), "source_fingerprint": str(first["group_fingerprint"]),
            "n_rows": sum(int(s.attrs["n_rows"]) for s in shards), "shard_rank": 0, "shard_world_size": 1}
        self.task_names, self.target = json.loads(first["task_names"]), json.loads(first["target"])
        self.scenario_fingerprint = str(first["scenario_fingerprint"])
        self._patch_size = int(first.get("patch_size", 0))
        self._files = [(s.path, s.committed) for s in shards]
        self._shard_of, self._local = merged.shard_of, merged.local
        self.columns = merged.columns
        self.columns["source_id"] = self.columns["source_id"].astype(str)
        self.columns["correct"] = self.columns["correct"].astype(bool)
        self.committed = len(self._local)
        self._memory: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return self.committed

    @property
    def n_layers(self) -> int:
        return self.identity["n_layers"]

    @property
    def n_heads(self) -> int:
        return self.identity["n_heads"]

    @property
    def dim(self) -> int:
        return self.identity["dim"]

    @property
    def patch_size(self) -> int:
        """The encoder's patch side (0 when the file did not record it)."""
        return self._patch_size

    @property
    def task(self) -> np.ndarray:
        return self.columns["task"]

    @property
    def correct(self) -> np.ndarray:
        return self.columns["correct"]

    @property
    def split(self) -> np.ndarray:
        return self.columns["split"]

    @property
    def probability(self) -> np.ndarray:
        return self.columns["probability"]

    @property
    def scenario_index(self) -> np.ndarray:
        return self.columns["scenario_index"]

    def load(self) -> "EncodingSet":
        """Read every encoding into memory (returns self)."""
        for name in ARRAYS:
            self.array(name)
        return self

    def array(self, name: str) -> np.ndarray:
        """The whole (N, L, H, D) array of a :data:`WIDE` name, or (N, L, H, F) ``stats`` / (N, L, H, R) ``row``."""
        if name not in self._memory:
            self._memory[name] = self._read_all(name, ())
        return self._memory[name]

    def rows(self, index: Sequence[int] | np.ndarray, name: str = "cls") -> np.ndarray:
        """(len(index), L, H, ...) of the given rows (from memory when loaded)."""
        index = np.asarray(index, dtype=np.int64)
        if name in self._memory:
            return self._memory[name][index]
        out = np.empty((len(index), *self._trailing(name)), dtype=_DTYPES[name])
        shard, local = self._shard_of[index], self._local[index]
        for k, (path, _) in enumerate(self._files):
            sel = np.flatnonzero(shard == k)
            if len(sel):
                wanted, inverse = np.unique(local[sel], return_inverse=True)  # h5py reads increasing rows
                with _reading(path) as f:
                    out[sel] = f[name][wanted][inverse]
        return out

    def head(self, layer: int, head: int, name: str = "cls") -> np.ndarray:
        """(N, D) encodings of one head over every row."""
        if name in self._memory:
            return self._memory[name][:, layer, head]
        return self._read_all(name, (layer, head))

    def _trailing(self, name: str) -> tuple[int, ...]:
        if name not in _DTYPES:
            raise ValueError(f"no encodings named {name!r}; use one of {tuple(_DTYPES)}")
        width = self.identity["seq_len"] if name == "row_attention" else _SCALARS.get(name, self.dim)
        return (self.n_layers, self.n_heads, width)

    def _read_all(self, name: str, key: tuple) -> np.ndarray:
        """``[:, *key]`` of one array over every row, in this set's row order."""
        self._trailing(name)
        parts = []
        for path, committed in self._files:
            with _reading(path) as f:
                parts.append(f[name][(slice(0, committed), *key)])
        if len(parts) == 1 and np.array_equal(self._local, np.arange(len(self._local))):
            return parts[0]  # already in scenario order: no copy
        merged = np.concatenate(parts)
        offsets = np.cumsum([0] + [c for _, c in self._files])[:-1]
        return merged[offsets[self._shard_of] + self._local]


class EncodingSubset:
    """Some rows of an :class:`EncodingSet`, read as a set of their own (row ``j`` is the set's row ``rows[j]``).

    What a stage that works on a sample of the scenarios reads (e.g. the recurring-pattern
    families of :mod:`apmae.patterns.run` on a seeded draw): the per-scenario columns and the
    arrays of those rows only.
    """

    def __init__(self, encodings: EncodingSet, rows: Sequence[int] | np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(encodings)):
            raise IndexError(f"rows run to {int(rows.max())}, past the {len(encodings)} rows of {encodings.path}")
        self.parent, self.row_index = encodings, rows
        self.path, self.paths, self.task_names, self.target = encodings.path, encodings.paths, \
            encodings.task_names, encodings.target
        self.identity = {**encodings.identity, "n_rows": len(rows)}
        self.columns = {name: column[rows] for name, column in encodings.columns.items()}
        self._patch_size = encodings.patch_size  # what EncodingSet.patch_size reads
        self._memory: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.row_index)

    n_layers, n_heads, dim, patch_size = EncodingSet.n_layers, EncodingSet.n_heads, EncodingSet.dim, \
        EncodingSet.patch_size
    task, correct, split, probability, scenario_index = EncodingSet.task, EncodingSet.correct, EncodingSet.split, \
        EncodingSet.probability, EncodingSet.scenario_index

    def array(self, name: str) -> np.ndarray:
        """The (n, L, H, ...) array ``name`` of these rows."""
        if name not in self._memory:
            self._memory[name] = self.parent.rows(self.row_index, name)
        return self._memory[name]

    def rows(self, index: Sequence[int] | np.ndarray, name: str = "cls") -> np.ndarray:
        return self.array(name)[np.asarray(index, dtype=np.int64)]

    def head(self, layer: int, head: int, name: str = "cls") -> np.ndarray:
        return self.array(name)[:, layer, head]

    def load(self) -> "EncodingSubset":
        for name in ARRAYS:
            self.array(name)
        return self


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[h5py.File]:
    """``path`` open for reading; a damaged chunk (its checksum fails) or a file changed since it was
    opened ends in :class:`EncodingsError` naming the file."""
    try:
        with h5py.File(path, "r") as f:
            yield f
    except (OSError, KeyError) as e:
        raise EncodingsError(f"encodings file {path} is corrupt ({e}); {FORMAT.messages.remedy}") from e


# ---------------------------------------------------------------- building from a pattern cache


def cache_columns(cache: AttentionCache) -> dict[str, np.ndarray]:
    """The per-scenario columns of an attention cache, in its row order."""
    return {name: cache.columns[name] for name in COLUMNS}


def iter_scenario_patterns(
    cache: AttentionCache, start: int, batch_size: int, *, prefetch: bool = True
) -> Iterator[np.ndarray]:
    """Raw patterns (B, L, H, S, S) float32 of consecutive cache rows from ``start``.

    With ``prefetch`` one background thread reads and decodes the next batch
    while the caller works on this one (the decoding is numpy, which releases
    the GIL); the batches and their order are the same either way.
    """
    def read(lo: int) -> np.ndarray:
        return np.stack([cache.scenario(i) for i in range(lo, min(lo + batch_size, len(cache)))])

    starts = range(start, len(cache), batch_size)
    if not prefetch:
        yield from map(read, starts)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="apmae-decode") as pool:
        pending = None
        for lo in starts:
            ahead = pool.submit(read, lo)
            if pending is not None:
                yield pending.result()
            pending = ahead
        if pending is not None:
            yield pending.result()


CHUNK = 256  # head images per encoder call: the float32 copies the encoder needs never exceed one chunk


def encode_patterns(net: APMAE, patterns: Any, *, scaler: str, input_ids: Any, query_pos: Any = None,
                    chunk: int = CHUNK, autocast_dtype: Any = None) -> EncodedRows:
    """Raw patterns (B, L, H, S, S) of prompts ``input_ids`` (B, S) scored at ``query_pos`` (B,) -> every array.

    ``query_pos`` None means S - 1 (mined scenarios). Runs on the net's device, ``chunk`` head
    images per encoder call; under autocast when ``autocast_dtype`` is given (the statistics and
    row scalars stay float32).
    """
    import torch  # import cost, as above

    from apmae.model.scaling import scale  # imports torch

    device = next(net.parameters()).device
    x = torch.as_tensor(patterns).to(device=device, dtype=torch.float32)
    b, n_layers, n_heads, s, _ = x.shape
    q = np.full(b, s - 1, dtype=np.int64) if query_pos is None else np.asarray(query_pos, dtype=np.int64)
    flat = x.reshape(b * n_layers * n_heads, 1, s, s)  # (B*L*H, 1, S, S)
    stats = pattern_stats(flat[:, 0]).reshape(b, n_layers, n_heads, -1)
    row = row_features(x, input_ids, q)  # (B, L, H, R)
    flat_q = torch.as_tensor(np.repeat(q, n_layers * n_heads), device=device)  # (B*L*H,)
    rows = scored_rows(x, q).reshape(b * n_layers * n_heads, s)  # (B*L*H, S)
    amp = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
           else contextlib.nullcontext())
    parts: dict[str, list] = {k: [] for k in WIDE}
    with torch.inference_mode(), amp:
        for lo in range(0, len(flat), chunk):
            enc = net.encode(scale(flat[lo:lo + chunk], scaler))
            readouts = row_readouts(enc.tokens.float(), rows[lo:lo + chunk], flat_q[lo:lo + chunk],
                                    net.config.patch_size)
            for name, value in zip(WIDE, (enc.cls, enc.mean, *readouts)):
                parts[name].append(value.float())
    shape = (b, n_layers, n_heads, -1)
    wide = {k: torch.cat(v).reshape(shape).half().cpu().numpy() for k, v in parts.items()}
    return EncodedRows(**wide, stats=stats.cpu().numpy(), row=row.cpu().numpy(),
                       row_attention=rows.reshape(b, n_layers, n_heads, s).half().cpu().numpy())


def check_encoder_seq_len(net: APMAE, seq_len: int, source: str) -> None:
    """Raise :class:`EncodingsMismatchError` when the encoder's image side is not the patterns' S."""
    if net.config.seq_len != seq_len:
        raise EncodingsMismatchError(
            f"the AP-MAE encoder takes S={net.config.seq_len} images but {source} holds S={seq_len} "
            f"patterns: train/export an AP-MAE for this sequence length, or use {source} of that length")


def encodings_spec(net: APMAE, cache: AttentionCache, scaler: str) -> EncodingsSpec:
    """The identity an encodings file of ``cache`` under ``net`` must have."""
    check_encoder_seq_len(net, cache.seq_len, "the cache")
    return EncodingsSpec(source_fingerprint=cache_fingerprint(cache), encoder_hash=encoder_hash(net), scaler=scaler,
                         seq_len=cache.seq_len, n_layers=cache.n_layers, n_heads=cache.n_heads,
                         dim=net.config.enc_dim, n_rows=len(cache), task_names=tuple(cache.task_names),
                         target=cache.target, scenario_fingerprint=str(cache.attrs["scenario_fingerprint"]),
                         patch_size=net.config.patch_size)


def ensure_encodings(net: APMAE, cache: AttentionCache, path: str | Path, *, scaler: str = "log_normalize",
                     batch_size: int = 4, autocast_dtype: Any = None, progress: bool = True) -> EncodingSet:
    """The encodings of every row of ``cache`` under ``net``: read from ``path`` or computed (and resumed).

    Raises:
        EncodingsMismatchError: ``path`` holds encodings of another encoder, scaler or cache,
            or the encoder's S differs from the cache's.
        CacheError: ``cache`` stores sampled heads (every head is encoded); see
            :meth:`AttentionCache.require_every_head`.
    """
    cache.require_every_head("ensure_encodings (AP-MAE encodes every head of each scenario)")
    spec = encodings_spec(net, cache, scaler)
    if Path(path).exists():  # complete files are only read, never reopened for writing
        existing = EncodingSet(path, require_complete=False)
        check_identity(existing.identity, spec.identity(), Path(path))
        if len(existing) == spec.n_rows:
            return existing
    was_training = net.training
    net.eval()
    try:
        with EncodingsWriter.open(path, spec, cache_columns(cache)) as writer:
            bar = tqdm(total=writer.n_rows, initial=writer.committed, unit="scenario", disable=not progress,
                       desc=f"AP-MAE encodings -> {Path(path).name}")
            lo = writer.committed
            for patterns in iter_scenario_patterns(cache, lo, batch_size):
                ids = cache.input_ids[lo:lo + len(patterns)]  # cached rows are mined: scored at S - 1
                writer.append(encode_patterns(net, patterns, scaler=scaler, input_ids=ids,
                                              autocast_dtype=autocast_dtype))
                lo += len(patterns)
                bar.update(len(patterns))
            bar.close()
    finally:
        net.train(was_training)
    return EncodingSet(path)


__all__ = ["ARRAYS", "CHUNK", "COLUMNS", "EncodedRows", "OUTCOMES", "WIDE", "EncodingSet", "EncodingSubset",
           "EncodingsError", "EncodingsMismatchError", "EncodingsSpec", "EncodingsWriter", "STAT_NAMES",
           "cache_columns", "cache_fingerprint", "check_encoder_seq_len", "check_identity", "encode_patterns",
           "encoder_hash", "encodings_files", "encodings_name", "encodings_path", "encodings_spec",
           "ensure_encodings", "pattern_stats", "placeholder_outcomes", "source_fingerprint"]
