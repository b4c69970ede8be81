"""JavaScenarioDataModule: mined completion scenarios (FIM or causal prompts) as batches, reusable without AP-MAE.

Glossary: B batch, N scenarios, S prompt tokens (``seq_len``), K tokens of the longest hole.

Batches are dicts of tensors:

- ``input_ids`` (B, S) long: ``<fim_prefix> prefix <fim_suffix> suffix <fim_middle>`` or ``[BOS] prefix``
- ``label_ids`` (B, K) long, the hole's tokens padded with 0; ``label_mask`` (B, K) bool
- ``task`` (B,) long: index into ``task_names``
- ``index`` (B,) long: row in the :class:`~apmae.mining.scenario_set.ScenarioSet`
- ``source`` (B,) long: index into ``source_ids`` (-1 for noise scenarios)

In a notebook::

    from apmae.datamodules.java_scenarios import JavaScenarioDataModule
    dm = JavaScenarioDataModule(sources="path/to/java", tokenizer="bigcode/starcoder2-3b", mining={"n_per_task": 100})
    batch = next(iter(dm.train_dataloader()))  # mines on first use, then reads the cache
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Optional, Sequence, TYPE_CHECKING

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from apmae.mining.miner import load_tokenizer, mine_scenarios
from apmae.mining.prompts import tokenizer_fingerprint
from apmae.mining.retokenize import retokenize
from apmae.mining.scenario_set import FORMAT_VERSION, SPLITS, ScenarioSet
from apmae.mining.settings import MiningConfig, moved_to_mining
from apmae.mining.sources import JavaSources
from apmae.mining.tasks import get_tasks

if TYPE_CHECKING:  # annotations only: the classes' modules import torch or transformers
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

MINER_VERSION = 1  # bump when mining changes what a cached set would contain
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "added_tokens.json")


class ScenarioDataset(Dataset):
    """Rows ``indices`` of a scenario set, as dicts of tensors (columns shared between splits)."""

    def __init__(self, columns: dict[str, torch.Tensor], indices: np.ndarray) -> None:
        self.columns = columns
        self.indices = np.asarray(indices, dtype=np.int64)

    @staticmethod
    def columns_of(scenarios: ScenarioSet, source_index: np.ndarray) -> dict[str, torch.Tensor]:
        """The set's columns as tensors, converted once for all splits."""
        width = scenarios.label_ids.shape[1]
        return {
            "input_ids": torch.from_numpy(scenarios.input_ids.astype(np.int64)),  # (N, S)
            "label_ids": torch.from_numpy(scenarios.label_ids.astype(np.int64)),  # (N, K)
            "label_mask": torch.from_numpy(np.arange(width)[None, :] < scenarios.label_len[:, None]),  # (N, K)
            "task": torch.from_numpy(scenarios.task.astype(np.int64)),  # (N,)
            "index": torch.arange(len(scenarios)),  # (N,)
            "source": torch.from_numpy(source_index.astype(np.int64)),  # (N,)
        }

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = int(self.indices[i])
        return {name: column[row] for name, column in self.columns.items()}


class JavaScenarioDataModule(pl.LightningDataModule):
    """Mines completion scenarios once (cached by a hash of the inputs) and serves them per split.

    Args:
        sources: Java sources: directories, ``.zip``/``.tar(.gz)`` archives, JSONL/Parquet files with a
            ``content`` column, or ``hf:NAME?split=train`` Hugging Face datasets.
        tokenizer: hub name or local directory of a fast tokenizer (with FIM tokens for ``fim`` prompts).
        mining: what to mine (:class:`apmae.mining.settings.MiningConfig`: tasks, seq_len, n_per_task,
            proportions, max_per_file, max_label_tokens, splits, seed, pad, max_bytes, max_files,
            exhaustive, prompt_format), or a dict of its fields; None: its defaults. The scenario
            cache is keyed by it; its ``seed`` also shuffles the training loader.
        batch_size: scenarios per batch.
        num_workers: DataLoader worker processes.
        mining_workers: processes for mining (None: same as ``num_workers``).
        cache_dir: where mined sets are stored (default ``artifacts/scenarios`` under the working directory).
        shuffle: shuffle the training split each epoch.
        progress: show a progress bar and the mining summary.
    """

    def __init__(
        self,
        *,
        sources: str | list[str],
        tokenizer: str,
        mining: Optional[MiningConfig] = None,
        batch_size: int = 32,
        num_workers: int = 0,
        mining_workers: Optional[int] = None,
        cache_dir: Optional[str] = None,
        shuffle: bool = True,
        progress: bool = True,
        **moved: Any,
    ) -> None:
        super().__init__()
        moved_to_mining("JavaScenarioDataModule", moved)
        self.mining = MiningConfig.of(mining)
        mining = dataclasses.asdict(self.mining)  # the checkpoint keeps plain values, not the dataclass
        self.save_hyperparameters()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0 or (mining_workers is not None and mining_workers < 0):
            raise ValueError("num_workers and mining_workers must be >= 0")
        self.sources = [sources] if isinstance(sources, str) else list(sources)
        self.tokenizer = str(tokenizer)
        get_tasks(self.mining.tasks)  # unknown task names fail now, not after loading a tokenizer
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.mining_workers = num_workers if mining_workers is None else mining_workers
        self.cache_dir = Path(cache_dir) if cache_dir is not None else Path("artifacts") / "scenarios"
        self.shuffle = shuffle
        self.progress = progress
        self._scenarios: ScenarioSet | None = None
        self._tokenizer_fingerprint: str | None = None
        self.datasets: dict[str, ScenarioDataset] = {}
        self.source_ids: list[str] = []

    @property
    def seq_len(self) -> int:
        """S, the prompt tokens of every scenario (``mining.seq_len``)."""
        return self.mining.seq_len

    @property
    def prompt_format(self) -> str:
        """``mining.prompt_format``, as configured (``auto`` is resolved per tokenizer)."""
        return self.mining.prompt_format

    # --- mining and cache ------------------------------------------------------------------

    def cache_key(self) -> str:
        """A hash of everything that decides the mined set.

        Single files and tokenizer directories are keyed by content/size; a source
        directory only by its path, so delete the cache file after editing one.
        """
        task_defs = [(t.name, t.query, _qualname(t.fn), _qualname(t.refine), t.code_only, t.label_tokens)
                     for t in get_tasks(self.mining.tasks)]
        inputs = {
            "sources": [_source_key(s) for s in self.sources],
            "tokenizer": _tokenizer_key(self.tokenizer),
            "tasks": task_defs,
            **self.mining.key_inputs(),
            "format": FORMAT_VERSION, "miner": MINER_VERSION,
        }
        return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @property
    def scenario_path(self) -> Path:
        """The cache file of this configuration's scenario set."""
        return self.cache_dir / f"scenarios-{self.cache_key()}.npz"

    def prepare_data(self) -> None:
        """Mine the scenarios unless this configuration's cache file exists (written atomically)."""
        path = self.scenario_path
        if path.exists():
            return
        result = mine_scenarios(JavaSources(self.sources, max_bytes=self.mining.max_bytes), self.tokenizer,
                                self.mining, num_workers=self.mining_workers, progress=self.progress)
        result.scenarios.meta["mining_report"] = result.report.summary()
        result.scenarios.save(path)

    def scenario_set(self) -> ScenarioSet:
        """The mined scenarios (mining first when no cache file exists)."""
        if self._scenarios is None:
            self.prepare_data()
            self._scenarios = ScenarioSet.load(self.scenario_path)
        return self._scenarios

    def tokenizer_fingerprint(self) -> str:
        """The fingerprint (:func:`apmae.mining.prompts.tokenizer_fingerprint`) of the mining tokenizer."""
        if self._tokenizer_fingerprint is None:
            self._tokenizer_fingerprint = tokenizer_fingerprint(load_tokenizer(self.tokenizer, "auto")[0])
        return self._tokenizer_fingerprint

    def scenario_set_for(self, tokenizer: PreTrainedTokenizerBase) -> ScenarioSet:
        """The same holes cut for another target's ``tokenizer`` (:func:`apmae.mining.retokenize.retokenize`).

        The mining tokenizer gets :meth:`scenario_set` itself; another one a set cut from the same
        source files at the same holes, stored beside it (``scenarios-<key>.<tokenizer>.npz``) and
        reused. How many holes did not survive is printed and kept in the set's metadata.
        """
        fingerprint = tokenizer_fingerprint(tokenizer)
        if fingerprint == self.tokenizer_fingerprint():
            return self.scenario_set()
        path = self.scenario_path.with_name(f"{self.scenario_path.stem}.{fingerprint}.npz")
        if not path.exists():
            recut, report = retokenize(self.scenario_set(), JavaSources(self.sources), tokenizer,
                                       prompt_format=self.prompt_format)
            name = getattr(tokenizer, "name_or_path", "") or fingerprint
            line = f"scenarios for tokenizer {name} (cut at the holes of the mining tokenizer's set): {report.summary()}"
            if self.progress:
                print(line)
            else:
                log.warning(line)
            recut.save(path)
        return ScenarioSet.load(path)

    @property
    def task_names(self) -> list[str]:
        return self.scenario_set().task_names

    # --- datasets and loaders --------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        scenarios = self.scenario_set()
        self.source_ids = sorted(set(scenarios.source_id.tolist()) - {""})
        lookup = {s: i for i, s in enumerate(self.source_ids)}
        source_index = np.array([lookup.get(s, -1) for s in scenarios.source_id.tolist()], dtype=np.int64)
        columns = ScenarioDataset.columns_of(scenarios, source_index)
        self.datasets = {name: ScenarioDataset(columns, scenarios.split_indices(name)) for name in SPLITS}

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if not self.datasets:
            self.setup()
        generator = torch.Generator().manual_seed(self.mining.seed)
        return DataLoader(self.datasets[split], batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers, generator=generator,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.shuffle)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)


def _qualname(fn: Any) -> str | None:
    return None if fn is None else f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', repr(fn))}"


def _source_key(source: str) -> Any:
    """A source's identity: its path, plus size and mtime for a single file (an edited file re-mines)."""
    path = Path(source).expanduser()
    if source.startswith("hf:") or not path.exists():
        return source
    stat = path.stat()
    return [str(path.resolve())] + ([stat.st_size, stat.st_mtime_ns] if path.is_file() else [])


def _tokenizer_key(tokenizer: str) -> Any:
    """A tokenizer's identity: the hash of its files for a local directory, else its hub name."""
    path = Path(tokenizer).expanduser()
    if not path.is_dir():
        return tokenizer
    digest = hashlib.sha256()
    for name in TOKENIZER_FILES:
        if (path / name).exists():
            digest.update(name.encode() + (path / name).read_bytes())
    return [str(path.resolve()), digest.hexdigest()]


__all__: Sequence[str] = ("JavaScenarioDataModule", "ScenarioDataset")
