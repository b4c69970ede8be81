"""EncodingsDataModule: every head's AP-MAE encodings per scenario, streamed from the target or from a cache.

Glossary: B batch, L layers, H query heads, D encoder width, F pattern statistics per head.

``prepare_data`` / ``setup`` compute (or reuse, or resume) the encodings of
every scenario under a trained AP-MAE encoder, once per (target, encoder):

- ``stream=True``: target -> encoder -> encodings file (:mod:`apmae.encodings.stream`);
  no pattern is ever written. Under DDP every rank streams its own shard
  ``<encodings_dir>/<target>.<encoder hash>.rank<k>.h5``.
- ``stream=False``: the attention cache is built (or reused) in ``cache_dir``
  as :class:`~apmae.datamodules.attention_cache.AttentionCacheDataModule` does, then
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
from typing import TYPE_CHECKING

import torch
from torch.utils.data import Dataset

from apmae.cache.extract import ensure_cache, extraction_device, target_short_name
from apmae.cache.heads import ALL
from apmae.cache.store import DEFAULT_PATTERN_KIND, AttentionCache, cache_files
from apmae.encodings.encode import encode_cache
from apmae.encodings.store import (EncodingSet, EncodingsError, EncodingsMismatchError, encoder_hash, encodings_files,
                                   encodings_name, encodings_path)
from apmae.encodings.stream import stream_encodings
from apmae.mining.scenario_set import ScenarioSet
from apmae.model.loading import load_encoder
from apmae.model.scaling import get_scaler
from apmae.target.access import load_target
from apmae.datamodules.java_scenarios import JavaScenarioDataModule
from apmae.encodings.rows import EncodingRows, select_rows
from apmae.datamodules.patterns_base import PatternDataModule
from apmae.cache.settings import ExtractionSettings
from apmae.encodings.settings import EncoderSettings

if TYPE_CHECKING:  # annotations only: the classes' modules import torch or transformers
    from apmae.model.net import APMAE


class EncodingsDataModule(PatternDataModule):
    """Per-scenario AP-MAE encodings of one target's heads, for probes, clustering and interventions."""

    def __init__(
        self,
        *,
        target: str,
        scenarios: JavaScenarioDataModule | str,
        encoder: EncoderSettings | None,
        encodings_dir: str = "artifacts/encodings",
        stream: bool = True,
        cache_dir: str = "artifacts/cache",
        scaler: str = "log_normalize",
        balance: bool = False,
        correct_only: bool = False,
        tasks: list[str] | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        extraction: ExtractionSettings = ExtractionSettings(),
    ) -> None:
        """
        Args:
            target: hub name or directory of the target causal LM.
            scenarios: a scenario DataModule (``JavaScenarioDataModule``) or the path of a saved ScenarioSet ``.npz``.
            encoder: the trained AP-MAE that encodes every head, and its precision; required (typed
                optional as in ``AttentionCacheDataModule`` so that config overlays switching between the
                two DataModules carry it over).
            encodings_dir: directory of the encodings files ``<target>.<encoder hash>.rank<k>.h5``
                (:func:`apmae.encodings.store.encodings_path`: the name ``AttentionCacheDataModule`` gives a
                cache's encodings too, so either DataModule reuses the other's).
            stream: True: run target -> encoder directly, no patterns on disk; False: build the
                attention cache in ``cache_dir`` first and encode it.
            cache_dir: directory of the attention cache (``stream=False`` only).
            scaler: the scaler the encoder was trained with (``log_normalize``, the paper's).
            balance: keep as many correct as incorrect scenarios per task (the paper's probe setting).
            correct_only: only scenarios the target completed correctly.
            tasks: only these task names (default: all).
            batch_size: scenarios per batch.
            num_workers: DataLoader worker processes.
            seed: seeds class balancing.
            extraction: how the target runs (device, also the encoder's; dtype; scenarios per forward pass;
                batches in flight; progress bar); compression and value encoding apply to the cache of
                ``stream=False``; the pattern kind must be ``attention`` and heads ``all``.
        """
        super().__init__()
        get_scaler(scaler)
        if encoder is None:
            raise ValueError("EncodingsDataModule needs an encoder: set encoder: {path: <exported AP-MAE or "
                             "LitAPMAE checkpoint>}")
        encoder = EncoderSettings.of(encoder)
        extraction = ExtractionSettings.of(extraction)
        if extraction.pattern_kind != DEFAULT_PATTERN_KIND:
            raise ValueError(f"extraction.pattern_kind={extraction.pattern_kind!r}: EncodingsDataModule encodes "
                             f"attention patterns only; set it to {DEFAULT_PATTERN_KIND!r}, or encode "
                             "contribution caches with AttentionCacheDataModule (mode: scenarios, encoder)")
        if extraction.heads != ALL:
            raise ValueError(f"extraction.heads={extraction.heads!r}: EncodingsDataModule encodes every head of each "
                             "scenario; set extraction.heads: all")
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"batch_size={batch_size} must be >= 1 and num_workers={num_workers} >= 0")
        self.target, self.scenarios, self.encoder, self.extraction = str(target), scenarios, encoder, extraction
        self.encodings_dir, self.stream, self.cache_dir = Path(encodings_dir), bool(stream), Path(cache_dir)
        self.scaler, self.balance, self.correct_only, self.tasks = scaler, balance, correct_only, tasks
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.train_target_name = target_short_name(self.target)
        self.val_target_names = [self.train_target_name]
        self.test_target_names = [self.train_target_name]
        self.seq_len = self._scenario_seq_len()
        self.encodings: EncodingSet | None = None
        self._encoder_id: str | None = None  # the loaded encoder's hash: names the files (see `name`)
        self._built = False

    serves_encodings = True  # its batches always carry the stored encodings

    def served(self) -> EncodingSet | None:
        """The encodings (None before setup)."""
        return self.encodings

    # -- building
    def _device(self, local_rank: int) -> torch.device:
        return torch.device(extraction_device(self.extraction.device, local_rank))

    def prepare_data(self) -> None:
        """Mine scenarios if needed; compute or resume the encodings (single process; DDP ranks in ``setup``)."""
        self.prepare_scenarios()
        if self._world()[1] == 1:
            self._build(0, 1, 0)

    def _build(self, rank: int, world: int, local_rank: int) -> None:
        device = self._device(local_rank)
        net = load_encoder(self.encoder.path).to(device)
        self._encoder_id = encoder_hash(net)  # names the files; encoder_hash is what the opened set says
        scenarios = self.scenario_set()
        if not self._complete(scenarios):
            (self._stream if self.stream else self._encode_cache)(net, scenarios, rank, world, device)
        self._built = True
        del net
        if device.type == "cuda":
            torch.cuda.empty_cache()

    @property
    def name(self) -> str | None:
        """``<target>.<encoder hash>``, the encodings files' name (None until the encoder is loaded)."""
        return None if self._encoder_id is None else encodings_name(self.train_target_name, self._encoder_id)

    def _stem(self) -> tuple[str, str]:
        """(target short name, encoder hash): the name of the encodings files (known once ``_build`` ran)."""
        return self.train_target_name, str(self._encoder_id)

    def _complete(self, scenarios: ScenarioSet) -> bool:
        """True when the complete encodings of this target, scenario set and encoder exist (any world size)."""
        files = encodings_files(self.encodings_dir, *self._stem())
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

    def _stream(self, net: APMAE, scenarios: ScenarioSet, rank: int, world: int, device: torch.device) -> None:
        target = load_target(self.target, dtype=self.extraction.dtype, device=str(device))
        path = encodings_path(self.encodings_dir, *self._stem(), rank)
        stream_encodings(target, scenarios, net, path, self.extraction,
                         scaler=self.scaler, precision=self.encoder.precision, rank=rank, world_size=world)

    def _encode_cache(self, net: APMAE, scenarios: ScenarioSet, rank: int, world: int, device: torch.device) -> None:
        """Build (or reuse) the attention cache (every rank its shard, as extraction does), then encode it on rank 0."""
        build = ensure_cache(self.target, scenarios, self.cache_dir, self.extraction, rank=rank, world_size=world,
                             local_rank=self._world()[2])
        if world > 1:
            self.trainer.strategy.barrier("attention-cache")
        if rank == 0:
            cache = AttentionCache(cache_files(self.cache_dir, build.name), pattern_kind=self.extraction.pattern_kind)
            try:  # by default in the stream's steps, so both settings give the same encodings
                path = encodings_path(self.encodings_dir, *self._stem())
                encode_cache(net, cache, path, self.encoder, self.extraction, scaler=self.scaler)
            finally:
                cache.close()

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
            self.encodings = EncodingSet(encodings_files(self.encodings_dir, *self._stem()))
            self.encoder_hash = str(self.encodings.identity["encoder_hash"])
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
