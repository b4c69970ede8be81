"""EncodingsDataModule: every head's AP-MAE encodings per scenario, streamed from the target or from a cache.

Glossary: B batch, L layers, H query heads, D encoder width, F pattern statistics per head.

``prepare_data`` / ``setup`` compute (or reuse, or resume) the encodings of
every scenario under a trained AP-MAE encoder, once per (target, encoder):

- ``stream=True``: target -> encoder -> encodings file (:mod:`apmae.encodings.stream`);
  no pattern is ever written. Under DDP every rank streams its own shard
  ``<encodings_dir>/<target>.<encoder hash>.rank<k>.h5``.
- ``stream=False``: the attention cache is built (or reused) in ``cache_dir``
  as :class:`~datamodules.attention_cache.AttentionCacheDataModule` does, then
  encoded once (:func:`apmae.encodings.store.ensure_encodings`, rank 0).

Both give the same encodings (to float16 precision) under the same identity,
so the setting switches the cost, not the results. Batches are dicts, one
sample per scenario, with the keys of the attention-cache encoder path:
``cls``, ``mean`` (B, L, H, D) float32, ``stats`` (B, L, H, F) float32,
``scenario``, ``row``, ``task`` (long), ``correct`` (bool), ``probability``
(float32), all (B,). ``row`` is the row in the merged encodings set.

The encodings of the rows a split uses are held in memory as float16 (about
1.5 MB per StarCoder2-3B scenario at D = 512): the file's chunks serve whole
row blocks and whole heads, not random rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from apmae.cache.store import cache_files, shard_path
from apmae.encodings.store import KINDS, EncodingSet, EncodingsError, EncodingsMismatchError
from apmae.mining.scenario_set import ScenarioSet, load_source, source_seq_len
from apmae.model.loading import ENCODER_PRECISIONS, load_encoder
from datamodules.attention_cache import select_rows, target_short_name
from datamodules.java_scenarios import JavaScenarioDataModule

ARRAYS = (*KINDS, "stats")


class EncodingRows(Dataset):
    """One sample per selected row: its encodings (read into memory once) and labels."""

    def __init__(self, encodings: EncodingSet, rows: np.ndarray) -> None:
        self.rows = np.asarray(rows, dtype=np.int64)
        self.arrays = {name: encodings.rows(self.rows, name) for name in ARRAYS}  # (n, L, H, D or F)
        cols = encodings.columns
        self.labels = {"scenario": cols["scenario_index"][self.rows], "row": self.rows, "task": cols["task"][self.rows],
                       "correct": cols["correct"][self.rows], "probability": cols["probability"][self.rows]}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, j: int) -> dict[str, Any]:
        return {**{k: v[j] for k, v in self.arrays.items()}, **{k: v[j] for k, v in self.labels.items()}}


_LABEL_DTYPES = {"scenario": torch.long, "row": torch.long, "task": torch.long, "correct": torch.bool,
                 "probability": torch.float32}


def collate_encodings(samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack samples: encodings as float32 tensors, labels with their dtypes."""
    batch = {name: torch.from_numpy(np.stack([s[name] for s in samples]).astype(np.float32)) for name in ARRAYS}
    for key, dtype in _LABEL_DTYPES.items():
        batch[key] = torch.as_tensor(np.array([s[key] for s in samples]), dtype=dtype)
    return batch


class EncodingsDataModule(L.LightningDataModule):
    """Per-scenario AP-MAE encodings of one target's heads, for probes, clustering and interventions."""

    def __init__(
        self,
        *,
        target: str,
        scenarios: JavaScenarioDataModule | str,
        encoder: str,
        encodings_dir: str = "artifacts/encodings",
        stream: bool = True,
        cache_dir: str = "artifacts/cache",
        scaler: str = "log_normalize",
        balance: bool = False,
        correct_only: bool = False,
        tasks: list[str] | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        extraction_batch_size: int = 8,
        extraction_workers: int = 2,
        dtype: str = "float32",
        device: str = "auto",
        encoder_precision: str = "32",
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        """
        Args:
            target: hub name or directory of the target causal LM.
            scenarios: a scenario DataModule (``JavaScenarioDataModule``) or the path of a saved ScenarioSet ``.npz``.
            encoder: an exported AP-MAE (``APMAE.save`` directory, e.g. a run's ``apmae_net/``) or a LitAPMAE checkpoint.
            encodings_dir: directory of the encodings files ``<target>.<encoder hash>.rank<k>.h5``.
            stream: True: run target -> encoder directly, no patterns on disk; False: build the
                attention cache in ``cache_dir`` first and encode it.
            cache_dir: directory of the attention cache (``stream=False`` only).
            scaler: the scaler the encoder was trained with (``log_normalize``, the paper's).
            balance: keep as many correct as incorrect scenarios per task (the paper's probe setting).
            correct_only: only scenarios the target completed correctly.
            tasks: only these task names (default: all).
            batch_size: scenarios per batch.
            num_workers: DataLoader worker processes.
            extraction_batch_size: scenarios per forward pass of the target while encoding.
            extraction_workers: batches in flight while encoding (threads; on CPU they share torch's threads).
            dtype: target model dtype (``float32``, ``bfloat16``, ``float16``).
            device: device of the target and the encoder, ``auto`` = this rank's GPU if any, else CPU.
            encoder_precision: ``32``, or ``bf16-mixed`` / ``16-mixed`` to run the encoder under autocast.
            seed: seeds class balancing.
            progress: show a progress bar (scenarios/s) while encoding.
        """
        super().__init__()
        from apmae.model.scaling import get_scaler

        get_scaler(scaler)
        if encoder_precision not in ENCODER_PRECISIONS:
            raise ValueError(f"encoder_precision={encoder_precision!r}; use one of {sorted(ENCODER_PRECISIONS)}")
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"batch_size={batch_size} must be >= 1 and num_workers={num_workers} >= 0")
        self.target, self.scenarios, self.encoder = str(target), scenarios, str(encoder)
        self.encodings_dir, self.stream, self.cache_dir = Path(encodings_dir), bool(stream), Path(cache_dir)
        self.scaler, self.balance, self.correct_only, self.tasks = scaler, balance, correct_only, tasks
        self.batch_size, self.num_workers, self.seed, self.progress = batch_size, num_workers, seed, progress
        self.extraction = {"batch_size": extraction_batch_size, "workers": extraction_workers, "dtype": dtype,
                           "device": device, "autocast_dtype": ENCODER_PRECISIONS[encoder_precision]}
        self.train_target_name = target_short_name(self.target)
        self.val_target_names = [self.train_target_name]
        self.test_target_names = [self.train_target_name]
        self.seq_len = self._scenario_seq_len()
        self.encodings: EncodingSet | None = None
        self.name: str | None = None  # <target>.<encoder hash>, known once the encoder is loaded
        self._built = False

    def _scenario_seq_len(self) -> int:
        return source_seq_len(self.scenarios)

    def scenario_set(self) -> ScenarioSet:
        return load_source(self.scenarios)

    # -- facts the probe reads (None before setup)
    @property
    def n_layers(self) -> int | None:
        return None if self.encodings is None else self.encodings.n_layers

    @property
    def n_heads(self) -> int | None:
        return None if self.encodings is None else self.encodings.n_heads

    @property
    def task_names(self) -> list[str] | None:
        return None if self.encodings is None else self.encodings.task_names

    # -- building
    def _world(self) -> tuple[int, int, int]:
        """(global rank, world size, local rank) from the trainer, or a single process."""
        trainer = self.trainer
        if trainer is None:
            return 0, 1, 0
        return int(trainer.global_rank), int(trainer.world_size), int(trainer.local_rank)

    def _device(self, local_rank: int) -> torch.device:
        from apmae.cache.extract import extraction_device

        return torch.device(extraction_device(self.extraction["device"], local_rank))

    def prepare_data(self) -> None:
        """Mine scenarios if needed; compute or resume the encodings (single process; DDP ranks in ``setup``)."""
        if not isinstance(self.scenarios, (str, Path)):
            self.scenarios.prepare_data()
        if self._world()[1] == 1:
            self._build(0, 1, 0)

    def _build(self, rank: int, world: int, local_rank: int) -> None:
        from apmae.encodings.store import encoder_hash

        device = self._device(local_rank)
        net = load_encoder(self.encoder).to(device)
        self.name = f"{self.train_target_name}.{encoder_hash(net)}"
        scenarios = self.scenario_set()
        if not self._complete(scenarios):
            (self._stream if self.stream else self._encode_cache)(net, scenarios, rank, world, device)
        self._built = True
        del net
        if device.type == "cuda":
            torch.cuda.empty_cache()

    def _complete(self, scenarios: ScenarioSet) -> bool:
        """True when the complete encodings of this target, scenario set and encoder exist (any world size)."""
        files = cache_files(self.encodings_dir, self.name)
        if not files:
            return False
        try:
            found = EncodingSet(files)
        except EncodingsMismatchError:
            raise
        except EncodingsError:
            return False  # incomplete: resume it
        facts = {"model": (found.target.get("model"), self.target), "scaler": (found.identity["scaler"], self.scaler),
                 "scenario_fingerprint": (found.scenario_fingerprint, scenarios.fingerprint())}
        diffs = [f"{k}: file has {a!r}, this run {b!r}" for k, (a, b) in facts.items() if a != b]
        if diffs:
            raise EncodingsMismatchError(f"encodings {self.name!r} in {self.encodings_dir} were computed for a "
                                         f"different run ({'; '.join(diffs)}); delete them or choose another "
                                         "encodings_dir")
        return True

    def _stream(self, net: Any, scenarios: ScenarioSet, rank: int, world: int, device: torch.device) -> None:
        from apmae.encodings.stream import stream_encodings
        from apmae.target.access import load_target

        target = load_target(self.target, dtype=self.extraction["dtype"], device=str(device))
        stream_encodings(target, scenarios, net, shard_path(self.encodings_dir, self.name, rank), rank=rank,
                         world_size=world, batch_size=self.extraction["batch_size"], scaler=self.scaler,
                         autocast_dtype=self.extraction["autocast_dtype"], workers=self.extraction["workers"],
                         progress=self.progress)

    def _encode_cache(self, net: Any, scenarios: ScenarioSet, rank: int, world: int, device: torch.device) -> None:
        """Build (or reuse) the attention cache on every rank, then encode it on rank 0."""
        from apmae.encodings.store import ensure_encodings
        from datamodules.attention_cache import AttentionCacheDataModule

        patterns = AttentionCacheDataModule(
            target=self.target, scenarios=self.scenarios, cache_dir=str(self.cache_dir), scaler=self.scaler,
            mode="scenarios", extraction_batch_size=self.extraction["batch_size"], dtype=self.extraction["dtype"],
            device=self.extraction["device"], extraction_workers=self.extraction["workers"], progress=self.progress)
        patterns.trainer = self.trainer
        patterns.setup("encode")
        if rank == 0:
            ensure_encodings(net, patterns.caches[self.train_target_name], shard_path(self.encodings_dir, self.name, 0),
                             scaler=self.scaler, batch_size=self.extraction["batch_size"],
                             autocast_dtype=self.extraction["autocast_dtype"], progress=self.progress)
        patterns.teardown()

    # -- setup
    def setup(self, stage: str | None = None) -> None:
        """Compute this rank's encodings under DDP (a barrier after), then open the merged set."""
        rank, world, local_rank = self._world()
        if world > 1:
            self._build(rank, world, local_rank)
            self.trainer.strategy.barrier("encodings")
        elif not self._built:
            self._build(0, 1, 0)
        if self.encodings is None:
            self.encodings = EncodingSet(cache_files(self.encodings_dir, self.name))
        if self.encodings.identity["seq_len"] != self.seq_len:
            raise EncodingsMismatchError(f"encodings {self.name!r} have S={self.encodings.identity['seq_len']}, "
                                         f"the scenarios S={self.seq_len}")

    def dataset(self, name: str, split: str) -> Dataset:
        """The scenarios of one split after the filters (``name``: the target's short name)."""
        if name != self.train_target_name:
            raise ValueError(f"no encodings of target {name!r}; this DataModule serves {self.train_target_name!r}")
        rows = select_rows(self.encodings, split, tasks=self.tasks, correct_only=self.correct_only,
                           balance=self.balance, seed=self.seed)
        return EncodingRows(self.encodings, rows)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(self.dataset(self.train_target_name, split), batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers, collate_fn=collate_encodings,
                          persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> list[DataLoader]:
        return [self._loader("val", shuffle=False)]

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader("test", shuffle=False)]
