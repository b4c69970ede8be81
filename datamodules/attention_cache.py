"""AttentionCacheDataModule: head images or per-scenario stacks from attention caches.

Glossary: B batch, S tokens, L layers, H query heads.

``prepare_data`` mines the scenarios (when given a scenario DataModule) and
builds, resumes or reuses one cache per target model with
:func:`apmae.cache.extract.ensure_cache` (which needs no Lightning); under DDP every
rank extracts its own shard in ``setup`` and the reader merges the shards. Batches are dicts:

- ``mode="heads"``: ``images`` (B, 1, S, S) scaled, and ``scenario``, ``layer``,
  ``head``, ``task``, ``correct`` (B,);
- ``mode="scenarios"``: ``images`` (B, L*H, 1, S, S) scaled, ``stats`` (B, L, H, F)
  raw-pattern statistics (:func:`apmae.encodings.store.pattern_stats`), and ``scenario``,
  ``row``, ``task``, ``correct``, ``probability`` (B,);
- ``mode="scenarios"`` with an ``encoder`` (:class:`~apmae.encodings.settings.EncoderSettings`):
  no images; ``cls`` and ``mean`` (B, L, H, D) AP-MAE encodings of every head
  (:mod:`apmae.encodings.rows`), computed once per cache and encoder into
  ``<encodings_dir>/<cache name>.<encoder hash>.rank0.h5`` and read back by
  later runs (:mod:`apmae.encodings.store`), with the same ``stats`` and columns.

``extraction.heads="layerwise:<f>"`` caches only the heads that ``head_selection="layerwise:<f>"``
with ``seed`` equal to ``extraction.head_seed`` serves (:mod:`apmae.cache.heads`), in files
``<target>.heads-layerwise-<f>-seed<s>.rank<k>.h5`` beside the full caches; mode ``heads`` only.

``extraction.pattern_kind="contribution"`` (:class:`~apmae.cache.settings.ExtractionSettings`)
serves each head's norm-based contribution weights instead of its attention, from
caches ``<target>.contribution.rank<k>.h5`` beside the attention caches
(:func:`apmae.cache.extract.cache_name`); images, stacks and encodings are built
from them exactly as from attention.

The first validation/test dataloader reads the training target's cache; one
more follows per ``extra_targets`` entry (cross-model generalisation).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from apmae.cache.extract import cache_name, ensure_cache, extraction_device, target_short_name
from apmae.cache.heads import ALL, heads_per_layer, layerwise_fraction, layerwise_heads
from apmae.cache.store import AttentionCache, CacheMismatchError, cache_files
from apmae.encodings.encode import encode_cache
from apmae.encodings.store import encoder_hash, encodings_path, ensure_encodings, pattern_stats
from apmae.mining.prompts import tokenizer_fingerprint
from apmae.mining.scenario_set import SPLITS, ScenarioSet
from apmae.model.loading import load_encoder
from apmae.model.scaling import get_scaler
from apmae.target.access import load_target_tokenizer
from apmae.datamodules.java_scenarios import JavaScenarioDataModule
from apmae.encodings.rows import EncodingRows, row_columns, select_rows
from apmae.datamodules.patterns_base import PatternDataModule
from apmae.cache.settings import ExtractionSettings
from apmae.encodings.settings import EncoderSettings

MODES = ("heads", "scenarios")


# ---------------------------------------------------------------- head selection


@dataclass(frozen=True)
class HeadSelection:
    """Which heads of each scenario become samples; the same heads every epoch.

    ``all``: every head; ``layerwise:<f>``: round(f*H) random heads per layer
    per scenario (:func:`apmae.cache.heads.layerwise_heads`, seeded by ``seed``, scenario
    index and layer: the heads a cache extracted with ``extraction.heads: layerwise:<f>``
    and the same ``head_seed`` stores); an explicit list of ``(layer, head)`` pairs.
    """

    n_layers: int
    n_heads: int
    fraction: float | None = None  # layerwise fraction; None for all / explicit
    pairs: tuple[tuple[int, int], ...] = ()  # explicit (layer, head) pairs
    seed: int = 0

    @classmethod
    def parse(cls, spec: str | Sequence[Sequence[int]], *, n_layers: int, n_heads: int, seed: int = 0) -> "HeadSelection":
        """Raises ``ValueError`` for an unknown spec, a fraction outside (0, 1] or a pair out of range."""
        if isinstance(spec, str):
            try:
                fraction = layerwise_fraction(spec, "head_selection")
            except ValueError:
                raise ValueError(f"head_selection={spec!r}; use 'all', 'layerwise:<fraction in (0, 1]>' "
                                 "or a list of [layer, head] pairs") from None
            return cls(n_layers, n_heads, fraction=fraction, seed=seed)
        pairs = tuple((int(p[0]), int(p[1])) for p in spec)
        bad = [p for p in pairs if not (0 <= p[0] < n_layers and 0 <= p[1] < n_heads)]
        if not pairs or bad:
            raise ValueError(f"head_selection pairs {bad or 'empty'} are invalid: layers 0..{n_layers - 1}, "
                             f"heads 0..{n_heads - 1}")
        return cls(n_layers, n_heads, pairs=pairs, seed=seed)

    @property
    def per_layer(self) -> int:
        return heads_per_layer(self.fraction, self.n_heads)

    @property
    def per_scenario(self) -> int:
        """Samples per scenario."""
        return len(self.pairs) if self.pairs else self.n_layers * self.per_layer

    def head(self, scenario: int, k: int) -> tuple[int, int]:
        """The ``k``-th (layer, head) of scenario ``scenario`` (its index in the scenario set)."""
        if self.pairs:
            return self.pairs[k]
        layer, j = divmod(k, self.per_layer)
        if self.fraction is None:
            return layer, j
        return layer, int(layerwise_heads(self.seed, scenario, layer, self.n_heads, self.per_layer)[j])


def check_sampled_cache(extraction: ExtractionSettings, *, mode: str, head_selection: str | Sequence[Sequence[int]],
                        seed: int, encoder: EncoderSettings | None) -> None:
    """A sampled cache (``extraction.heads`` not ``all``) serves only the head images of its own draw.

    Raises:
        ValueError: ``mode="scenarios"`` or an ``encoder`` (both read every head), or a ``head_selection``
            or ``seed`` other than the draw's; each says what to set.
    """
    heads = extraction.heads
    if heads == ALL:
        return
    if mode == "scenarios":
        reader = ("encoder (it encodes every head of each scenario)" if encoder is not None
                  else "mode='scenarios' (it stacks every head of each scenario)")
        raise ValueError(f"{reader} needs every head, but extraction.heads={heads!r} caches only some heads of "
                         f"each layer: set extraction.heads: all, or use mode: heads with head_selection: {heads}")
    if not isinstance(head_selection, str) or (layerwise_fraction(head_selection, "head_selection")
                                               != layerwise_fraction(heads, "extraction.heads")):
        raise ValueError(f"extraction.heads={heads!r} caches only the heads its layerwise draw keeps, but "
                         f"head_selection={head_selection!r} selects others: set head_selection: {heads} "
                         "(or extraction.heads: all)")
    if seed != extraction.head_seed:
        raise ValueError(f"extraction.heads={heads!r} draws its heads with extraction.head_seed="
                         f"{extraction.head_seed}, but seed={seed} selects others: set seed: {extraction.head_seed} "
                         f"(or extraction.head_seed: {seed})")


# ---------------------------------------------------------------- datasets


class HeadImageDataset(Dataset):
    """One sample per selected head of each row: raw (1, S, S) float32 pattern plus labels."""

    def __init__(self, cache: AttentionCache, rows: np.ndarray, selection: HeadSelection) -> None:
        self.cache, self.rows, self.selection = cache, np.asarray(rows, dtype=np.int64), selection

    def __len__(self) -> int:
        return len(self.rows) * self.selection.per_scenario

    def __getitem__(self, j: int) -> dict[str, Any]:
        i, k = divmod(int(j), self.selection.per_scenario)
        row = int(self.rows[i])
        scenario = int(self.cache.scenario_index[row])
        layer, head = self.selection.head(scenario, k)
        return {"images": self.cache.pattern(row, layer, head)[None], "scenario": scenario, "layer": layer,
                "head": head, "task": int(self.cache.task[row]), "correct": bool(self.cache.correct[row])}


class ScenarioStackDataset(Dataset):
    """One sample per row: every head's raw pattern, (L*H, 1, S, S) float32."""

    def __init__(self, cache: AttentionCache, rows: np.ndarray) -> None:
        self.cache, self.rows = cache, np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, j: int) -> dict[str, Any]:
        row = int(self.rows[j])
        c = self.cache
        patterns = c.scenario(row)  # (L, H, S, S)
        return {"images": patterns.reshape(c.n_layers * c.n_heads, 1, c.seq_len, c.seq_len),
                "stats": pattern_stats(patterns).numpy(), **row_columns(c, row)}


# ---------------------------------------------------------------- the DataModule


class AttentionCacheDataModule(PatternDataModule):
    """Attention-pattern samples of one target model (plus extra targets for cross-model evaluation)."""

    def __init__(
        self,
        *,
        target: str,
        scenarios: JavaScenarioDataModule | str,
        cache_dir: str = "artifacts/cache",
        scaler: str = "log_normalize",
        mode: str = "heads",
        head_selection: str | list[list[int]] = "all",
        balance: bool = False,
        correct_only: bool = False,
        tasks: list[str] | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        extra_targets: list[str] | None = None,
        seed: int = 0,
        extraction: ExtractionSettings = ExtractionSettings(),
        encoder: EncoderSettings | None = None,
        encodings_dir: str | None = None,
    ) -> None:
        """
        Args:
            target: hub name or directory of the target causal LM whose patterns train/validate.
            scenarios: a scenario DataModule (``JavaScenarioDataModule``) or the path of a saved ScenarioSet ``.npz``.
            cache_dir: directory of the cache files ``<target short name>.rank<k>.h5``
                (``<target short name>.contribution.rank<k>.h5`` for contribution weights,
                ``<target short name>.heads-layerwise-<f>-seed<s>.rank<k>.h5`` for sampled heads).
            scaler: ``none``, ``log``, ``log_standardize`` or ``log_normalize`` (the paper's).
            mode: ``heads`` (one head image per sample) or ``scenarios`` (all heads of a scenario).
            head_selection: ``all``, ``layerwise:<fraction>`` (paper: 0.25) or ``[[layer, head], ...]``; mode ``heads``
                only. With ``extraction.heads: layerwise:<f>`` it must be ``layerwise:<f>``.
            balance: keep as many correct as incorrect scenarios per task (the paper's probe setting).
            correct_only: only scenarios the target completed correctly (the paper trains AP-MAE on these).
            tasks: only these task names (default: all).
            batch_size: samples per batch.
            num_workers: DataLoader worker processes (HDF5 handles open lazily in each).
            extra_targets: more target models; their caches become extra val/test dataloaders. A target with
                the scenario set's tokenizer reads the set itself; one with another tokenizer reads the same
                holes cut with its own tokens (see :meth:`scenario_set_of`).
            seed: seeds the layerwise head choice and class balancing; with sampled heads it must equal
                ``extraction.head_seed``.
            extraction: how the caches are built: the target's device, dtype and batches, the cache's
                compression and value encoding, and the pattern kind (``attention``, or ``contribution``:
                each head's norm-based contribution weights, :mod:`apmae.target.contribution`, in their
                own cache files; AP-MAE trains and probes on either unchanged), and which heads the cache
                stores (``heads: layerwise:<f>`` keeps a fraction of each layer's, for mode ``heads``).
            encoder: a trained AP-MAE; with ``mode="scenarios"`` batches then carry its per-head encodings
                instead of images (``None``: images).
            encodings_dir: where the encodings files live (default: ``cache_dir``).
        """
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}; use one of {MODES}")
        if mode == "scenarios" and head_selection != "all":
            raise ValueError("head_selection applies to mode='heads'; mode='scenarios' always stacks every head")
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"batch_size={batch_size} must be >= 1 and num_workers={num_workers} >= 0")
        get_scaler(scaler)  # fail at construction on a misspelt scaler
        extraction = ExtractionSettings.of(extraction)
        if encoder is not None:
            encoder = EncoderSettings.of(encoder)
        if encoder is not None and mode != "scenarios":
            raise ValueError("encoder applies to mode='scenarios' (per-scenario encodings); set mode: scenarios")
        check_sampled_cache(extraction, mode=mode, head_selection=head_selection, seed=seed, encoder=encoder)
        self.extraction, self.encoder = extraction, encoder
        self.encodings_dir = Path(encodings_dir) if encodings_dir else Path(cache_dir)
        self.encodings: dict[str, Any] = {}
        self.target, self.scenarios, self.cache_dir = str(target), scenarios, Path(cache_dir)
        self.scaler, self.mode, self.head_selection = scaler, mode, head_selection
        self.balance, self.correct_only, self.tasks = balance, correct_only, tasks
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.extra_targets = [str(t) for t in (extra_targets or [])]
        self.train_target_name = target_short_name(self.target)
        self.val_target_names = [self.train_target_name, *map(target_short_name, self.extra_targets)]
        models = [self.target, *self.extra_targets]
        self.cache_names = {target_short_name(m): cache_name(m, extraction.pattern_kind, heads=extraction.heads,
                                                             head_seed=extraction.head_seed)
                            for m in models}  # short name -> file stem; extra targets are sampled alike
        if len(set(self.val_target_names)) != len(self.val_target_names):
            raise ValueError(f"target short names {self.val_target_names} collide; their caches would share "
                             "files: give the models distinct directory names")
        self.test_target_names = list(self.val_target_names)
        self.seq_len = self._scenario_seq_len()
        self.caches: dict[str, AttentionCache] = {}

    # -- scenarios
    def scenario_set_of(self, model: str) -> ScenarioSet:
        """The scenarios a target reads: the set itself, or for an extra target with another tokenizer the
        same holes cut with its own tokens (:meth:`JavaScenarioDataModule.scenario_set_for`).

        Raises:
            ValueError: an extra target tokenizes differently and ``scenarios`` is a saved set (no sources
                to cut from), or its tokenizer cannot serve the prompt format.
        """
        base = self.scenario_set()
        if model == self.target:
            return base
        tokenizer = load_target_tokenizer(model)
        if tokenizer is None:
            return base  # patterns need only ids: a target saved without a tokenizer reads the set as it is
        if isinstance(self.scenarios, JavaScenarioDataModule):
            try:
                return self.scenarios.scenario_set_for(tokenizer)
            except ValueError as e:
                raise ValueError(f"extra target {model!r}: its scenarios cannot be built: {e}") from e
        recorded = base.meta.get("tokenizer_fingerprint")
        if recorded is None:  # a set saved before tokenizers were recorded: read as it is, as before
            warnings.warn(f"the scenario set {self.scenarios} records no tokenizer, so extra target {model!r} reads "
                          "it as it is (right when both share a tokenizer); give scenarios as a "
                          "JavaScenarioDataModule to cut the holes for each target's tokenizer", stacklevel=2)
            return base
        if tokenizer_fingerprint(tokenizer) == recorded:
            return base
        raise ValueError(f"extra target {model!r} has another tokenizer than the saved scenario set {self.scenarios}: "
                         "give scenarios as a JavaScenarioDataModule, whose sources the same holes are cut from "
                         "for each tokenizer")

    # -- building
    def prepare_data(self) -> None:
        """Mine scenarios if needed; build or resume the caches (single process; DDP shards in ``setup``)."""
        self.prepare_scenarios()
        _, world, _ = self._world()
        if world == 1:
            self._build(0, 1, 0)

    def _build(self, rank: int, world: int, local_rank: int) -> None:
        """Reuse, resume or extract (this rank's shard of) every target's cache: :func:`apmae.cache.extract.ensure_cache`."""
        for model in [self.target, *self.extra_targets]:
            ensure_cache(model, self.scenario_set_of(model), self.cache_dir, self.extraction, rank=rank,
                         world_size=world, local_rank=local_rank)

    # -- setup
    def setup(self, stage: str | None = None) -> None:
        """Extract this rank's shards under DDP, then open every cache (metadata only; patterns load lazily)."""
        rank, world, local_rank = self._world()
        if world > 1:
            self._build(rank, world, local_rank)
            self.trainer.strategy.barrier("attention-cache")
        elif not self.caches:
            self._build(0, 1, 0)  # no-op when prepare_data already built them
        for model in [self.target, *self.extra_targets]:
            name = target_short_name(model)
            if name not in self.caches:
                self.caches[name] = AttentionCache(cache_files(self.cache_dir, self.cache_names[name]),
                                                   pattern_kind=self.extraction.pattern_kind)
        cache = self.caches[self.train_target_name]
        if cache.seq_len != self.seq_len:
            raise CacheMismatchError(f"cache {self.train_target_name!r} has S={cache.seq_len}, the scenarios S={self.seq_len}")
        if self.encoder is not None and not self.encodings:
            self._encode_caches()

    def _encode_caches(self) -> None:
        """Read or compute every cache's encodings under ``encoder`` (rank 0 computes under DDP)."""
        net = load_encoder(self.encoder.path)
        device = torch.device(extraction_device(self.extraction.device, self._world()[2]))  # as EncodingsDataModule
        net.to(device)
        self.encoder_hash = encoder_hash(net)
        rank, world, _ = self._world()
        for name, cache in self.caches.items():
            path = encodings_path(self.encodings_dir, self.cache_names[name], self.encoder_hash)
            encoded = encode_cache(net, cache, path, self.encoder, self.extraction, scaler=self.scaler) \
                if rank == 0 else None
            if world > 1:
                self.trainer.strategy.barrier("encodings")
            if encoded is None:  # rank 0 wrote them: this rank reads and checks them
                encoded = ensure_encodings(net, cache, path, scaler=self.scaler, progress=False)
            self.encodings[name] = encoded.load()

    @property
    def serves_encodings(self) -> bool:
        """Whole scenarios under an encoder are served as their encodings; everything else as images."""
        return self.mode == "scenarios" and self.encoder is not None

    def served(self) -> AttentionCache | None:
        """The training target's cache (None before setup)."""
        return self.caches.get(self.train_target_name)

    def dataset(self, name: str, split: str) -> Dataset:
        """The samples of one target's cache and split after the filters."""
        cache = self.caches[name]
        rows = select_rows(cache, split, tasks=self.tasks, correct_only=self.correct_only,
                           balance=self.balance, seed=self.seed)
        if self.balance and len(rows) == 0 and np.any(cache.split == SPLITS.index(split)):
            raise ValueError(f"the {split} split of {name!r} has no task with both correct and incorrect "
                             "scenarios, so class balancing leaves nothing: mine more scenarios per task "
                             "(n_per_task), change the splits, or set balance: false")
        if self.mode == "scenarios":
            if self.encoder is not None:
                return EncodingRows(self.encodings[name], rows)
            return ScenarioStackDataset(cache, rows)
        selection = HeadSelection.parse(self.head_selection, n_layers=cache.n_layers, n_heads=cache.n_heads,
                                        seed=self.seed)
        return HeadImageDataset(cache, rows, selection)

    def teardown(self, stage: str | None = None) -> None:
        for cache in self.caches.values():
            cache.close()
