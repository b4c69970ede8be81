"""LitProbe inside the protocol's folds: the LightningModule fitted by a Trainer on each outer fold.

Glossary: N scenarios of the protocol, n training rows of a fold, L layers, H query heads.

:func:`litprobe_crossfit` gives the cross-fitted protocol (:mod:`apmae.probe.report`) LitProbe's
out-of-fold scores on the very folds its other predictors use: per outer fold a fresh
:class:`apmae.lit_models.probe_module.LitProbe` over the frozen AP-MAE is trained by a
``lightning.Trainer`` on the fold's training scenarios only (:class:`FoldRowsDataModule`,
drawn class-balanced with replacement, so no row is dropped) for a fixed number of epochs, with
no validation, checkpoint choice or early stop (nothing sees the fold's test scenarios), and then
scores the test scenarios. ``repeats`` can limit it to the first repeats of the folds (every
scenario is still scored out of fold; its score then averages fewer repeats than the linear
models'). Two of its predictors become protocol rows:

- ``apmae [litprobe]``: ``probe``, the per-head network over the pooled encodings (cls, mean);
- ``confidence+apmae [litprobe]``: ``probe_confidence``, the same with the target's probability.

The protocol passes these in as ``external`` fits, so the core protocol stays free of Lightning.
"""

from __future__ import annotations

import inspect
import tempfile
import warnings
from dataclasses import dataclass
from typing import Callable

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, WeightedRandomSampler

from apmae.encodings.store import EncodingSet
from apmae.model.loading import load_encoder
from apmae.probe.crossfit import CrossFit, Protocol
from apmae.probe.linear import balanced_weights
from apmae.probe.models import FoldScore
from apmae.encodings.rows import EncodingRows, collate_encodings
from apmae.lit_models.probe_module import LitProbe
from apmae.lit_models.training import TrainingRecipe

PREDICTORS = {"probe": "apmae [litprobe]", "probe_confidence": "confidence+apmae [litprobe]"}


class FoldRowsDataModule(L.LightningDataModule):
    """Encodings rows of one fold: ``train`` drawn class-balanced with replacement, ``test`` in order."""

    def __init__(self, encodings: EncodingSet, train: np.ndarray, test: np.ndarray, *, batch_size: int = 32,
                 seed: int = 0) -> None:
        super().__init__()
        self.encodings, self.batch_size, self.seed = encodings, batch_size, seed
        self.train_rows, self.test_rows = np.sort(np.asarray(train)), np.asarray(test)
        self.n_layers, self.n_heads = encodings.n_layers, encodings.n_heads
        self.task_names = list(encodings.task_names)
        self.encoder_hash = encodings.identity["encoder_hash"]  # LitProbe refuses encodings of another encoder

    def train_dataloader(self) -> DataLoader:
        data = EncodingRows(self.encodings, self.train_rows)
        weights = torch.from_numpy(balanced_weights(data.labels["correct"].astype(bool)))
        sampler = WeightedRandomSampler(weights, num_samples=len(data), replacement=True,
                                        generator=torch.Generator().manual_seed(self.seed))
        return DataLoader(data, batch_size=self.batch_size, sampler=sampler, collate_fn=collate_encodings)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(EncodingRows(self.encodings, self.test_rows), batch_size=self.batch_size,
                          shuffle=False, collate_fn=collate_encodings)


_LITPROBE = inspect.signature(LitProbe.__init__).parameters


@dataclass(frozen=True)
class LitProbeFolds:
    """How LitProbe is trained in each fold (the demo's probe settings by default)."""

    encoder: str  # the AP-MAE whose encodings the data holds: an export directory or a checkpoint
    epochs: int = 5
    batch_size: int = 32
    lr: float = 3e-3
    probe_features: str = _LITPROBE["probe_features"].default  # LitProbe's own defaults, written once there
    probe_hidden: int = _LITPROBE["probe_hidden"].default
    probe_dropout: float = _LITPROBE["probe_dropout"].default
    num_threads: int | None = None
    repeats: int | None = None  # fit the folds of the first this many repeats only (None: every repeat)


def litprobe_crossfit(protocol: Protocol, settings: LitProbeFolds) -> dict[str, CrossFit]:
    """LitProbe's out-of-fold scores on every fold of ``protocol``: ``{row name: CrossFit}`` (:data:`PREDICTORS`)."""
    data = protocol.data
    if data.source is None or data.rows is None:
        raise ValueError("LitProbe reads an encodings file: build the protocol's data with ProbeData.from_encodings")
    seq_len = load_encoder(settings.encoder).config.seq_len
    folds = [f for f in protocol.folds if settings.repeats is None or f.repeat < settings.repeats]
    if not folds:
        raise ValueError(f"repeats={settings.repeats} fits no fold: use None or >= 1")
    scores: dict[str, list[FoldScore]] = {k: [] for k in PREDICTORS}
    with tempfile.TemporaryDirectory(prefix="litprobe-folds-") as scratch:
        for i, fold in enumerate(folds):
            seed = protocol.settings.seed + i
            L.seed_everything(seed, verbose=False)
            module = LitProbe(
                seq_len=seq_len,
                encoder=settings.encoder,
                probe_features=settings.probe_features,
                probe_hidden=settings.probe_hidden,
                probe_dropout=settings.probe_dropout,
                probe_layers=data.n_layers,
                probe_heads=data.n_heads,
                importance_scenarios=0,
                bootstrap_resamples=0,
                recipe=TrainingRecipe(
                    lr=settings.lr,
                    warmup_fraction=0.05,
                    export_dir=f"{scratch}/fold{i}",
                    num_threads=settings.num_threads,
                ),
            )
            datamodule = FoldRowsDataModule(data.source, data.rows[fold.train], data.rows[fold.test],
                                            batch_size=settings.batch_size, seed=seed)
            trainer = L.Trainer(max_epochs=settings.epochs, accelerator="cpu", devices=1, logger=False,
                                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                                limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=scratch)
            with warnings.catch_warnings():  # no validation by design: nothing may see the fold's test files
                warnings.filterwarnings("ignore", message=".*validation_step.* no `val_dataloader`")
                trainer.fit(module, datamodule=datamodule)
            for name, p in _predict(module, datamodule.test_dataloader()).items():
                scores[name].append(FoldScore(p=p, inner_auroc=float("nan")))
    return {row: CrossFit(name=row, feature_set="apmae", model="litprobe", folds=folds,
                          fold_scores=scores[name]) for name, row in PREDICTORS.items()}


def _predict(module: LitProbe, loader: DataLoader) -> dict[str, np.ndarray]:
    """P(correct) of every test row under each of :data:`PREDICTORS`."""
    module.eval()
    out: dict[str, list[np.ndarray]] = {k: [] for k in PREDICTORS}
    with torch.no_grad():
        for batch in loader:
            logits = module.probe.logits(batch, module.probe.encoding_features(batch, module.net))
            for name in PREDICTORS:
                out[name].append(torch.sigmoid(logits[name].float()).numpy().astype(np.float64))
    return {k: np.concatenate(v) for k, v in out.items()}


def litprobe_fits(settings: LitProbeFolds) -> Callable[[Protocol], dict[str, CrossFit]]:
    """The ``external`` entry :func:`apmae.probe.report.run_protocol` takes for LitProbe."""
    return lambda protocol: litprobe_crossfit(protocol, settings)


__all__ = ["FoldRowsDataModule", "LitProbeFolds", "PREDICTORS", "litprobe_crossfit", "litprobe_fits"]
