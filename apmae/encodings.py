"""AP-MAE encodings of every head of every scenario, computed once and stored next to a cache.

Glossary: N scenarios (rows), L layers, H query heads, D encoder width, S tokens,
F = 4 pattern statistics per head (:data:`STAT_NAMES`).

A frozen AP-MAE maps each head's pattern to a CLS and a mean-patch embedding.
Probes, clustering and interventions need only those, so they are computed
once (batched, under ``torch.inference_mode``, optionally under autocast) and
written as one HDF5 file per (pattern source, encoder)::

    cls   (N, L, H, D) float16   final CLS token of the unmasked pattern
    mean  (N, L, H, D) float16   mean of the final patch tokens
    stats (N, L, H, F) float32   raw-pattern statistics (the pattern-statistics baseline)
    the per-scenario columns of the attention cache (scenario_index, input_ids, label_ids,
    label_len, task, source_id, span_start, span_end, split, prediction, probability,
    correct, loss), row i of this file = row i of the source
    attrs: schema_version, source_fingerprint, encoder_hash, scaler, seq_len, n_layers,
           n_heads, dim, task_names, target (JSON), n_rows, created, committed

``source_fingerprint`` identifies the exact scenarios and target (for a pattern
cache: :func:`cache_fingerprint`) and ``encoder_hash`` the exact encoder weights
(:func:`encoder_hash`); a file whose identity differs is refused, never used.
Rows are appended in order and ``committed`` moves only after they are
flushed, so an interrupted build resumes where it stopped.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import h5py
import numpy as np

SCHEMA_VERSION = 1
STAT_NAMES = ("entropy", "mean_distance", "first_token_mass", "diagonal_mass")
KINDS = ("cls", "mean")
# Per-scenario columns every encodings file carries (copied from the pattern source).
COLUMNS = ("scenario_index", "input_ids", "label_ids", "label_len", "task", "source_id", "span_start",
           "span_end", "split", "prediction", "probability", "correct", "loss")
_IDENTITY = ("source_fingerprint", "encoder_hash", "scaler", "seq_len", "n_layers", "n_heads", "dim", "n_rows")
_ROW_CHUNK = 64


class EncodingsError(ValueError):
    """An encodings file cannot be used (corrupt, incomplete or not an encodings file)."""


class EncodingsMismatchError(EncodingsError):
    """An encodings file was computed by another encoder, scaler or from other scenarios."""


# ---------------------------------------------------------------- identities


def encoder_hash(net: Any) -> str:
    """16 hex digits identifying an AP-MAE's configuration and exact weights."""
    from dataclasses import asdict

    h = hashlib.sha256(json.dumps(asdict(net.config), sort_keys=True).encode())
    for name, value in sorted(net.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def cache_fingerprint(cache: Any) -> str:
    """16 hex digits identifying an attention cache's target, scenarios and rows."""
    h = hashlib.sha256()
    for key in ("model", "n_layers", "n_heads", "dtype"):
        h.update(str(cache.target.get(key)).encode())
    h.update(str(cache.attrs["scenario_fingerprint"]).encode())
    h.update(str(cache.seq_len).encode())
    h.update(np.ascontiguousarray(cache.columns["scenario_index"]).tobytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- statistics


def pattern_stats(patterns: Any) -> Any:
    """Per-head statistics of raw causal patterns: (..., S, S) -> (..., F) float32 torch.

    entropy: mean over query rows of -sum_j a_ij log a_ij (nats); mean_distance: mean
    over rows of sum_j a_ij (i - j); first_token_mass: mean over rows i >= 1 of a_i0
    (row 0 can only attend to itself); diagonal_mass: mean over rows of a_ii.
    """
    import torch

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

    def identity(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _IDENTITY}


def _file_identity(f: h5py.File) -> dict[str, Any]:
    a = f.attrs
    return {k: (str(a[k]) if k in ("source_fingerprint", "encoder_hash", "scaler") else int(a[k])) for k in _IDENTITY}


def _open(path: Path, mode: str) -> h5py.File:
    try:
        f = h5py.File(path, mode)
    except OSError as e:
        raise EncodingsError(f"encodings file {path} is truncated or corrupt ({e}); delete it to recompute") from e
    try:
        version = int(f.attrs["schema_version"])
        _file_identity(f)
    except (KeyError, ValueError) as e:
        f.close()
        raise EncodingsError(f"{path} is not an apmae encodings file ({e}); delete it or choose another path") from e
    if version != SCHEMA_VERSION:
        f.close()
        raise EncodingsError(f"{path} has encodings schema {version}, this apmae reads {SCHEMA_VERSION}; "
                             "delete it to recompute")
    return f


def check_identity(found: dict[str, Any], expected: dict[str, Any], path: Path) -> None:
    """Raise :class:`EncodingsMismatchError` naming every field in which ``found`` differs."""
    hints = {"encoder_hash": "another AP-MAE encoder", "source_fingerprint": "other scenarios or another target"}
    diffs = [f"{k}: file has {found[k]!r}, this run {expected[k]!r}" + (f" ({hints[k]})" if k in hints else "")
             for k in _IDENTITY if found[k] != expected[k]]
    if diffs:
        raise EncodingsMismatchError(
            f"encodings file {path} was computed for a different run ({'; '.join(diffs)}); it is never "
            "used or appended to: delete it, or point encodings_path elsewhere")


class EncodingsWriter:
    """Appends rows of an encodings file in order; reopening a partial file resumes it."""

    def __init__(self, path: Path, file: h5py.File) -> None:
        self.path, self._f = path, file
        self.committed = int(file.attrs["committed"])
        self.n_rows = int(file.attrs["n_rows"])

    @classmethod
    def open(cls, path: str | Path, spec: EncodingsSpec, columns: dict[str, np.ndarray]) -> "EncodingsWriter":
        """Create the file (with every column of ``columns`` written) or reopen it to resume.

        Raises:
            EncodingsMismatchError: the existing file belongs to another encoder / source.
            EncodingsError: the existing file is corrupt.
        """
        path = Path(path)
        if path.exists():
            f = _open(path, "r+")
            try:
                check_identity(_file_identity(f), spec.identity(), path)
            except EncodingsError:
                f.close()
                raise
            return cls(path, f)
        missing = [c for c in COLUMNS if c not in columns]
        if missing:
            raise ValueError(f"columns {missing} are missing; an encodings file carries {list(COLUMNS)}")
        path.parent.mkdir(parents=True, exist_ok=True)
        return cls(path, _create(path, spec, columns))

    @property
    def complete(self) -> bool:
        return self.committed == self.n_rows

    def append(self, cls_: np.ndarray, mean: np.ndarray, stats: np.ndarray) -> None:
        """Write the next B rows: cls, mean (B, L, H, D) and stats (B, L, H, F)."""
        b = len(cls_)
        lo, hi = self.committed, self.committed + b
        if hi > self.n_rows:
            raise ValueError(f"appending {b} rows overruns the file's {self.n_rows} rows")
        expected = self._f["cls"].shape[1:]
        if cls_.shape[1:] != expected or mean.shape != cls_.shape or stats.shape[:-1] != cls_.shape[:-1]:
            raise ValueError(f"encodings of shape {cls_.shape[1:]} / {mean.shape[1:]} / {stats.shape[1:]} do not "
                             f"fit this file's {expected}")
        self._f["cls"][lo:hi] = cls_.astype(np.float16)
        self._f["mean"][lo:hi] = mean.astype(np.float16)
        self._f["stats"][lo:hi] = stats.astype(np.float32)
        self._f.flush()
        self._f.attrs["committed"] = hi
        self._f.flush()
        self.committed = hi

    def close(self) -> None:
        if self._f.id.valid:
            self._f.close()

    def __enter__(self) -> "EncodingsWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _create(path: Path, spec: EncodingsSpec, columns: dict[str, np.ndarray]) -> h5py.File:
    from apmae import __version__

    tmp = path.with_name(path.name + ".creating")
    n, shape = spec.n_rows, (spec.n_rows, spec.n_layers, spec.n_heads)
    with h5py.File(tmp, "w") as f:
        chunks = (min(max(n, 1), _ROW_CHUNK), 1, spec.n_heads)
        for kind in KINDS:
            f.create_dataset(kind, shape=(*shape, spec.dim), dtype=np.float16, chunks=(*chunks, spec.dim))
        f.create_dataset("stats", shape=(*shape, len(STAT_NAMES)), dtype=np.float32)
        for name in COLUMNS:
            col = np.asarray(columns[name])
            if len(col) != n:
                raise ValueError(f"column {name!r} has {len(col)} rows, expected {n}")
            if col.dtype.kind in "UO":
                f.create_dataset(name, data=col.astype(object), dtype=h5py.string_dtype())
            else:
                f.create_dataset(name, data=col)
        f.attrs.update({**spec.identity(), "schema_version": SCHEMA_VERSION, "task_names": json.dumps(list(spec.task_names)),
                        "target": json.dumps(spec.target), "stat_names": json.dumps(list(STAT_NAMES)),
                        "apmae_version": __version__, "committed": 0,
                        "created": datetime.datetime.now(datetime.timezone.utc).isoformat()})
    tmp.replace(path)  # a kill during creation never leaves a half-made file under the real name
    return _open(path, "r+")


# ---------------------------------------------------------------- reading


class EncodingSet:
    """Read-only view of a complete encodings file; columns in memory, encodings on demand.

    ``load()`` reads ``cls``/``mean``/``stats`` into memory once (the demo's size);
    at paper scale read per head (:meth:`head`) or per row block (:meth:`rows`).
    """

    def __init__(self, path: str | Path, *, require_complete: bool = True) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise EncodingsError(f"encodings file {self.path} does not exist; compute it first")
        with _open(self.path, "r") as f:
            self.identity = _file_identity(f)
            self.committed = int(f.attrs["committed"])
            if require_complete and self.committed != self.identity["n_rows"]:
                raise EncodingsError(f"encodings file {self.path} is incomplete ({self.committed} of "
                                     f"{self.identity['n_rows']} rows); run the encoding again to resume it")
            self.task_names: list[str] = json.loads(f.attrs["task_names"])
            self.target: dict[str, Any] = json.loads(f.attrs["target"])
            self.columns = {name: f[name][: self.committed] for name in COLUMNS}
        self.columns["source_id"] = self.columns["source_id"].astype(str)
        self.columns["correct"] = self.columns["correct"].astype(bool)
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

    def load(self) -> "EncodingSet":
        """Read every encoding into memory (returns self)."""
        with h5py.File(self.path, "r") as f:
            for name in (*KINDS, "stats"):
                self._memory[name] = f[name][: self.committed]
        return self

    def array(self, name: str) -> np.ndarray:
        """The whole (N, L, H, D) ``cls`` / ``mean`` or (N, L, H, F) ``stats`` array."""
        if name not in (*KINDS, "stats"):
            raise ValueError(f"no encodings named {name!r}; use one of {(*KINDS, 'stats')}")
        if name not in self._memory:
            with h5py.File(self.path, "r") as f:
                self._memory[name] = f[name][: self.committed]
        return self._memory[name]

    def rows(self, index: Sequence[int] | np.ndarray, name: str = "cls") -> np.ndarray:
        """(len(index), L, H, ...) of the given rows (from memory when loaded)."""
        index = np.asarray(index, dtype=np.int64)
        if name in self._memory:
            return self._memory[name][index]
        order = np.argsort(index)
        with h5py.File(self.path, "r") as f:
            block = f[name][index[order]] if len(index) else f[name][:0]
        out = np.empty_like(block)
        out[order] = block
        return out

    def head(self, layer: int, head: int, name: str = "cls") -> np.ndarray:
        """(N, D) encodings of one head over every row."""
        if name in self._memory:
            return self._memory[name][:, layer, head]
        with h5py.File(self.path, "r") as f:
            return f[name][: self.committed, layer, head]


# ---------------------------------------------------------------- building from a pattern cache


def cache_columns(cache: Any) -> dict[str, np.ndarray]:
    """The per-scenario columns of an attention cache, in its row order."""
    return {name: cache.columns[name] for name in COLUMNS}


def iter_scenario_patterns(cache: Any, start: int, batch_size: int) -> Iterator[np.ndarray]:
    """Raw patterns (B, L, H, S, S) float32 of consecutive cache rows from ``start``."""
    for lo in range(start, len(cache), batch_size):
        yield np.stack([cache.scenario(i) for i in range(lo, min(lo + batch_size, len(cache)))])


def encode_patterns(net: Any, patterns: Any, *, scaler: str, chunk: int = 256,
                    autocast_dtype: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw patterns (B, L, H, S, S) -> cls, mean (B, L, H, D) float16 and stats (B, L, H, F) float32.

    Runs on the net's device, ``chunk`` head images per encoder call; under
    autocast when ``autocast_dtype`` is given (the statistics stay float32).
    """
    import contextlib

    import torch

    from apmae.scaling import scale

    device = next(net.parameters()).device
    x = torch.as_tensor(patterns).to(device=device, dtype=torch.float32)
    b, n_layers, n_heads, s, _ = x.shape
    flat = x.reshape(b * n_layers * n_heads, 1, s, s)  # (B*L*H, 1, S, S)
    stats = pattern_stats(flat[:, 0]).reshape(b, n_layers, n_heads, -1)
    amp = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
           else contextlib.nullcontext())
    cls_parts, mean_parts = [], []
    with torch.inference_mode(), amp:
        for lo in range(0, len(flat), chunk):
            enc = net.encode(scale(flat[lo:lo + chunk], scaler))
            cls_parts.append(enc.cls.float())
            mean_parts.append(enc.mean.float())
    shape = (b, n_layers, n_heads, -1)
    return (torch.cat(cls_parts).reshape(shape).half().cpu().numpy(),
            torch.cat(mean_parts).reshape(shape).half().cpu().numpy(), stats.cpu().numpy())


def encodings_spec(net: Any, cache: Any, scaler: str) -> EncodingsSpec:
    """The identity an encodings file of ``cache`` under ``net`` must have."""
    if net.config.seq_len != cache.seq_len:
        raise EncodingsMismatchError(
            f"the AP-MAE encoder takes S={net.config.seq_len} images but the cache holds S={cache.seq_len} "
            "patterns: train/export an AP-MAE for this sequence length, or use a cache of that length")
    return EncodingsSpec(source_fingerprint=cache_fingerprint(cache), encoder_hash=encoder_hash(net), scaler=scaler,
                         seq_len=cache.seq_len, n_layers=cache.n_layers, n_heads=cache.n_heads,
                         dim=net.config.enc_dim, n_rows=len(cache), task_names=tuple(cache.task_names),
                         target=cache.target)


def ensure_encodings(net: Any, cache: Any, path: str | Path, *, scaler: str = "log_normalize",
                     batch_size: int = 4, autocast_dtype: Any = None, progress: bool = True) -> EncodingSet:
    """The encodings of every row of ``cache`` under ``net``: read from ``path`` or computed (and resumed).

    Raises:
        EncodingsMismatchError: ``path`` holds encodings of another encoder, scaler or cache,
            or the encoder's S differs from the cache's.
    """
    from tqdm.auto import tqdm

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
            for patterns in iter_scenario_patterns(cache, writer.committed, batch_size):
                writer.append(*encode_patterns(net, patterns, scaler=scaler, autocast_dtype=autocast_dtype))
                bar.update(len(patterns))
            bar.close()
    finally:
        net.train(was_training)
    return EncodingSet(path)


__all__ = ["COLUMNS", "EncodingSet", "EncodingsError", "EncodingsMismatchError", "EncodingsSpec", "EncodingsWriter",
           "STAT_NAMES", "cache_columns", "cache_fingerprint", "check_identity", "encode_patterns", "encoder_hash",
           "encodings_spec", "ensure_encodings", "pattern_stats"]
