"""A set of mined completion scenarios: the hand-over between mining and extraction.

Glossary: N scenarios, S prompt tokens (``seq_len``), K tokens of the longest label.

Stored as one ``.npz`` file (plain numpy arrays + a JSON metadata string) so
that any project can read it without apmae.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SPLITS = ("train", "val", "test")
FORMAT_VERSION = 1


class ScenarioSetError(ValueError):
    """A saved scenario set cannot be read: damaged, not a scenario set, or of another format version."""


@dataclass
class ScenarioSet:
    """Column-wise scenarios; row ``i`` of every array is scenario ``i``."""

    input_ids: np.ndarray  # (N, S) int32, prompt ending right before the hole (FIM: with <fim_middle>)
    label_ids: np.ndarray  # (N, K) int32, the hole's tokens, padded with 0
    label_len: np.ndarray  # (N,) int32, valid entries of label_ids (>= 1)
    middle_pos: np.ndarray  # (N,) int32, the scored position in input_ids (FIM: <fim_middle>; mined: S - 1)
    task: np.ndarray  # (N,) int16, index into task_names
    source_id: np.ndarray  # (N,) str, stable id of the source file ("" for noise)
    span_start: np.ndarray  # (N,) int64, byte offset of the hole in the file (-1 for noise)
    span_end: np.ndarray  # (N,) int64, byte offset after the hole (-1 for noise)
    split: np.ndarray  # (N,) int8, index into SPLITS
    task_names: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # tokenizer, seq_len, seed, ...

    def __post_init__(self) -> None:
        n = len(self.input_ids)
        for name in ("label_ids", "label_len", "middle_pos", "task", "source_id",
                     "span_start", "span_end", "split"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"ScenarioSet column {name!r} has {len(getattr(self, name))} rows, expected {n}")
        if self.input_ids.ndim != 2:
            raise ValueError(f"input_ids must be (N, S), got shape {self.input_ids.shape}")

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def prompt_format(self) -> str:
        """``fim`` or ``causal`` (:mod:`apmae.mining.prompts`); sets mined before formats existed are FIM."""
        return str(self.meta.get("prompt_format", "fim"))

    def labels(self, i: int) -> list[int]:
        """The hole's token ids of scenario ``i``."""
        return self.label_ids[i, : self.label_len[i]].tolist()

    def split_indices(self, name: str) -> np.ndarray:
        """Row indices of one split (``train``, ``val`` or ``test``)."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        return np.flatnonzero(self.split == SPLITS.index(name))

    def subset(self, index: np.ndarray) -> "ScenarioSet":
        """A new set holding the given rows, in that order."""
        cols = {k: getattr(self, k)[index] for k in _COLUMNS}
        return ScenarioSet(**cols, task_names=list(self.task_names), meta=dict(self.meta))

    def fingerprint(self) -> str:
        """A content hash identifying this exact scenario set (used by caches)."""
        h = hashlib.sha256()
        for k in _COLUMNS:
            h.update(np.ascontiguousarray(getattr(self, k)).tobytes())
        h.update(json.dumps(self.task_names).encode())
        if self.prompt_format != "fim":  # FIM sets keep the fingerprint they had before formats existed
            h.update(f"prompt_format={self.prompt_format}".encode())
        return h.hexdigest()[:16]

    def save(self, path: str | Path) -> Path:
        """Write to ``path`` (``.npz``) atomically: a crash never leaves half a file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        header = json.dumps({"format_version": FORMAT_VERSION, "task_names": self.task_names, "meta": self.meta})
        np.savez(tmp, header=np.array(header), **{k: getattr(self, k) for k in _COLUMNS})
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ScenarioSet":
        """Read a set written by :meth:`save`.

        Raises:
            ScenarioSetError: the file is missing, truncated, damaged (a zip member fails its
                CRC), not a scenario set, or of another format version.
        """
        path = Path(path)
        header, cols = _read_npz(path)
        version = header.get("format_version")
        if version != FORMAT_VERSION:
            newer = isinstance(version, int) and version > FORMAT_VERSION
            raise ScenarioSetError(
                f"scenario set {path} has format {version}, this apmae reads {FORMAT_VERSION}"
                + ("; it was written by a newer apmae: upgrade apmae, or delete it and mine again" if newer
                   else "; delete it and mine again"))
        try:
            return cls(**cols, task_names=header["task_names"], meta=header["meta"])
        except (KeyError, ValueError) as e:
            raise ScenarioSetError(f"scenario set {path} is inconsistent ({e}); delete it and mine again") from e


_DAMAGE = (OSError, EOFError, ValueError, KeyError, IndexError, zipfile.BadZipFile, json.JSONDecodeError)


def _read_npz(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The header and columns of a saved set; every way the file can be damaged ends in ScenarioSetError."""
    if not path.is_file():
        raise ScenarioSetError(f"scenario set {path} does not exist; mine the scenarios first")
    try:
        with _open_npz(path) as z:
            missing = [k for k in ("header", *_COLUMNS) if k not in z.files]
            if missing:
                raise ValueError(f"it lacks {missing}")
            header = json.loads(str(z["header"]))
            cols = {k: z[k] for k in _COLUMNS}  # reading a member checks its CRC
    except _DAMAGE as e:
        raise _unreadable(path, e) from e
    if not isinstance(header, dict):
        raise ScenarioSetError(f"scenario set {path} has a header that is not a JSON object; delete it and mine again")
    return header, cols


def _open_npz(path: Path) -> Any:
    """The open ``.npz`` archive at ``path`` (ValueError for a single ``.npy`` array)."""
    z = np.load(path, allow_pickle=False)
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ValueError("it is a single .npy array, not an .npz archive")
    return z


def _unreadable(path: Path, error: Exception) -> ScenarioSetError:
    reason = "it is not a zip archive of arrays" if "pickled" in str(error) else str(error)[:200]
    return ScenarioSetError(f"cannot read scenario set {path}: truncated, damaged or not a scenario set ({reason}); "
                            "delete it and mine again")


_COLUMNS = ("input_ids", "label_ids", "label_len", "middle_pos", "task", "source_id",
            "span_start", "span_end", "split")


def source_seq_len(source: Any) -> int:
    """S of a scenario source: a saved ScenarioSet ``.npz`` path, or anything with ``seq_len``
    (a ScenarioSet, a scenario DataModule), read without loading the whole set."""
    if not isinstance(source, (str, Path)):
        return int(source.seq_len)
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"scenarios={str(path)!r} is not a file; pass a ScenarioSet .npz or a scenario DataModule")
    try:
        with _open_npz(path) as z:
            return int(z["input_ids"].shape[1])
    except _DAMAGE as e:
        raise _unreadable(path, e) from e


def load_source(source: Any) -> "ScenarioSet":
    """The ScenarioSet of a source: a saved ``.npz`` path, or a scenario DataModule's set."""
    if isinstance(source, (str, Path)):
        return ScenarioSet.load(source)
    return source.scenario_set()


def balance_per_task(rows: np.ndarray, task: np.ndarray, correct: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``rows`` keeping, per task, as many correct as incorrect (a seeded subset of the larger class), sorted.

    ``task`` and ``correct`` are the rows' values (aligned with ``rows``). A task with one
    class only keeps nothing. The probe's DataModules and the cluster probe balance with it.
    """
    kept = []
    for t in np.unique(task):
        pos, neg = rows[(task == t) & correct], rows[(task == t) & ~correct]
        n = min(len(pos), len(neg))
        kept += [rng.choice(pos, n, replace=False), rng.choice(neg, n, replace=False)]
    return np.sort(np.concatenate(kept)) if kept else rows[:0]
