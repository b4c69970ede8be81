"""What the two attention-pattern DataModules share: their scenarios, the facts the probe reads, the loaders.

:class:`PatternDataModule` is the base of :class:`apmae.datamodules.attention_cache.AttentionCacheDataModule`
(patterns from an attention cache, encoded on demand) and :class:`apmae.datamodules.encodings.EncodingsDataModule`
(encodings streamed from a target or encoded from its cache). A subclass sets ``scenarios``,
``batch_size``, ``num_workers``, ``scaler``, ``train_target_name`` and the ``val_target_names`` /
``test_target_names`` it serves, and says which object holds the training target's rows
(:meth:`PatternDataModule.served`) and what one target's split is (``dataset``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from apmae.mining.scenario_set import ScenarioSet, load_source, source_seq_len
from apmae.model.scaling import scale
from apmae.encodings.rows import EncodingRows, collate_encodings
from apmae.datamodules.sampling import evaluation_sampler


class ScaledCollate:
    """Stacks samples and scales the whole batch at once (runs inside the workers)."""

    def __init__(self, scaler: str) -> None:
        self.scaler = scaler

    _DTYPES = {"correct": torch.bool, "probability": torch.float32}

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = {}
        for key, value in samples[0].items():
            if isinstance(value, np.ndarray):
                batch[key] = torch.from_numpy(np.stack([s[key] for s in samples]))
            else:
                batch[key] = torch.tensor([s[key] for s in samples], dtype=self._DTYPES.get(key, torch.long))
        if "images" in batch:
            batch["images"] = scale(batch["images"], self.scaler).contiguous()
        return batch


class PatternDataModule(L.LightningDataModule):
    """The shared members of the attention-pattern DataModules (see the module docstring)."""

    scenarios: Any  # a saved ScenarioSet path or a scenario DataModule
    batch_size: int
    num_workers: int
    scaler: str
    train_target_name: str
    val_target_names: list[str]
    test_target_names: list[str]
    encoder_hash: str | None = None  # the encoder of the encodings served, when any (LitProbe checks it)

    @property
    def serves_encodings(self) -> bool:
        """Whether batches carry stored AP-MAE encodings (``cls``, ``mean``) rather than images."""
        raise NotImplementedError

    # -- scenarios
    def _scenario_seq_len(self) -> int:
        return source_seq_len(self.scenarios)

    def scenario_set(self) -> ScenarioSet:
        return load_source(self.scenarios)

    def prepare_scenarios(self) -> None:
        """Mine the scenarios when they come from a scenario DataModule (a saved set needs nothing)."""
        if not isinstance(self.scenarios, (str, Path)):
            self.scenarios.prepare_data()

    def _world(self) -> tuple[int, int, int]:
        """(global rank, world size, local rank) from the trainer, or a single process."""
        trainer = self.trainer
        if trainer is None:
            return 0, 1, 0
        return int(trainer.global_rank), int(trainer.world_size), int(trainer.local_rank)

    # -- facts the probe reads (None before setup)
    def served(self) -> Any:
        """The object holding the training target's rows (an attention cache or encodings), None before setup."""
        raise NotImplementedError

    @property
    def n_layers(self) -> int | None:
        """L of the training target (None before setup)."""
        source = self.served()
        return None if source is None else source.n_layers

    @property
    def n_heads(self) -> int | None:
        """H of the training target (None before setup)."""
        source = self.served()
        return None if source is None else source.n_heads

    @property
    def task_names(self) -> list[str] | None:
        """Task names of the training target's rows (None before setup)."""
        source = self.served()
        return None if source is None else source.task_names

    # -- loaders
    def dataset(self, name: str, split: str) -> Dataset:
        raise NotImplementedError

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        collate = collate_encodings if isinstance(dataset, EncodingRows) else ScaledCollate(self.scaler)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=collate, persistent_workers=self.num_workers > 0,
                          pin_memory=torch.cuda.is_available(),
                          sampler=None if shuffle else evaluation_sampler(dataset))

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.dataset(self.train_target_name, "train"), shuffle=True)

    def val_dataloader(self) -> list[DataLoader]:
        return [self._loader(self.dataset(n, "val"), shuffle=False) for n in self.val_target_names]

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(self.dataset(n, "test"), shuffle=False) for n in self.test_target_names]


__all__ = ["PatternDataModule", "ScaledCollate"]
