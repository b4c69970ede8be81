"""LitProbe: predict from a trained AP-MAE's view of every head whether the target's completion is correct.

Glossary: B scenarios, L layers, H query heads, S pattern side, D encoder width.

The encoder is a trained AP-MAE (an export directory or a checkpoint, read by
:func:`apmae.model.loading.load_encoder`), frozen unless ``finetune_encoder``. The
predictors and their baselines are :class:`apmae.probe.stage.ProbeStage`; this
module trains them with the shared optimiser recipe (:mod:`apmae.lit_models.training`),
scores them per task (:mod:`apmae.probe.metrics`) and computes the head importance.

Metrics, per predictor (``probe``, ``stats_probe``, ``probe_confidence``,
``confidence``, ``majority``) and task (and ``all``):
``val/<predictor>/<task>/{accuracy,balanced_accuracy,auroc,f1,n}`` and ``test/...``;
``val/loss``: the probe's cross-entropy on validation, the value checkpoints monitor.
At test, each ``test/<predictor>/<task>/{balanced_accuracy,auroc}`` also gets its bootstrap interval
(``.../ci_low``, ``.../ci_high``) and, for the comparisons of :mod:`apmae.probe.uncertainty`, the
paired p-value against the baseline (``.../p_vs_<other>``), e.g. ``test/probe/all/auroc/p_vs_confidence``.

At the end of fit and of test the head importance (``importance.csv``,
``integrated_gradients.csv``, ``heatmap.png``) and the score table (at test also the
intervals and paired tests: ``test_intervals.csv``, ``test_paired_tests.csv``) go to
``export_dir`` and to the run's MLflow artifacts under ``head_importance/``.
The data: an ``AttentionCacheDataModule`` (or ``EncodingsDataModule``) in ``mode: scenarios``.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Optional

import time

import numpy as np
import torch
from torch import nn

from apmae.encodings.store import encoder_hash
from apmae.model.loading import NET_CONFIG_KEY, load_encoder
from apmae.model.net import APMAE
from apmae.probe.metrics import best_threshold, metric_dict, per_task_scores
from apmae.probe.uncertainty import BootstrapSettings, ProbeScores, score_uncertainty, uncertainty_metric_dict
from apmae.common.tracking import log_to_runs
from apmae.probe.export import write_probe_files
from apmae.probe.stage import FEATURES, MAX_TASKS, Collected, ProbeStage
from apmae.lit_models.training import RecipeModule, TrainingRecipe

# State of the former probe stage of LitAPMAE that the probe never read: dropped when such a checkpoint loads.
RECONSTRUCTION_BUFFERS = ("baseline_mean", "baseline_images")


class LitProbe(RecipeModule):
    """Trains the correctness probe and its baselines on a trained AP-MAE's encodings of every head.

    Args:
        seq_len: pattern side S of the data. The CLI links it from the DataModule's ``seq_len``;
            the encoder must take patterns of this side.
        encoder: the trained AP-MAE: an export directory (``APMAE.save``, e.g. a run's ``apmae_net/``)
            or a LitAPMAE checkpoint (``.ckpt``).
        finetune_encoder: train the encoder with the probe (needs image batches: leave the
            DataModule's ``encoder`` unset); otherwise it is frozen.
        probe_features: per-head encoding the probe reads: ``cls``, ``mean`` or ``both`` (concatenated).
        probe_hidden: width of the probes' shared per-head network.
        probe_dropout: dropout inside the probes.
        probe_layers: L of the target (None: taken from the DataModule's ``n_layers`` at setup).
        probe_heads: H of the target (None: taken from the DataModule's ``n_heads`` at setup).
        importance_scenarios: validation scenarios the head importance is computed on (at most).
        importance_steps: integrated-gradients steps of the second importance estimate.
        recipe: the optimiser, schedule and process settings (:class:`apmae.lit_models.training.TrainingRecipe`:
            base_lr (per ``lr_reference_batch`` scenarios), lr_reference_batch, lr, betas, weight_decay
            (of the probes, and of the encoder's weights when fine-tuned), warmup_fraction, min_lr_ratio,
            export_dir, num_threads), or a dict of its fields; None: its defaults. ``export_dir`` is where
            the head importance (``importance.csv``, ``integrated_gradients.csv``, ``heatmap.png``) and
            the score table go (default: ``probe/`` next to the checkpoint directory).
        bootstrap_resamples: resamples of the test split's stratified bootstrap (intervals and paired
            tests, per task and pooled); 0 turns them off.
        bootstrap_seed: seed of those resamples (the same seed gives the same intervals).
    """

    EXPORT_NAME = "probe"

    def __init__(
        self,
        *,
        seq_len: int,
        encoder: str,
        finetune_encoder: bool = False,
        probe_features: str = "both",
        probe_hidden: int = 64,
        probe_dropout: float = 0.1,
        probe_layers: Optional[int] = None,
        probe_heads: Optional[int] = None,
        importance_scenarios: int = 512,
        importance_steps: int = 32,
        recipe: Optional[TrainingRecipe] = None,
        bootstrap_resamples: int = 1000,
        bootstrap_seed: int = 0,
    ) -> None:
        settings = TrainingRecipe.of(recipe)
        super().__init__(recipe=settings)
        recipe = asdict(settings)  # the checkpoint keeps plain values (a weights_only load refuses dataclasses)
        self.save_hyperparameters()
        if probe_features not in FEATURES:
            raise ValueError(f"probe_features={probe_features!r}; use one of {FEATURES}")
        if bootstrap_resamples != 0 and bootstrap_resamples < 100:
            raise ValueError(f"bootstrap_resamples={bootstrap_resamples}: use 0 (no intervals) or >= 100 "
                             "(1000 or more for intervals you report)")
        if importance_scenarios < 0 or importance_steps < 1:
            raise ValueError(f"importance_scenarios must be >= 0 and importance_steps >= 1; got "
                             f"{importance_scenarios}, {importance_steps}")
        self.net = _load_encoder(encoder, seq_len=seq_len)
        self.net.requires_grad_(finetune_encoder)
        self.probe: Optional[ProbeStage] = None
        if probe_layers is not None and probe_heads is not None:
            self._build_probe(probe_layers, probe_heads)
        self.probe_scores: Optional[ProbeScores] = None  # of the latest evaluation
        self._collected = Collected()
        self._ranked: Optional[tuple[Collected, list[str]]] = None  # what head_importance was computed on
        self._by_task: Optional[dict[str, torch.Tensor]] = None

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.probe is None:
            datamodule = getattr(self.trainer, "datamodule", None)
            shape = [getattr(datamodule, k, None) for k in ("n_layers", "n_heads")]
            if None in shape:
                raise ValueError("the probe needs the target's layers and heads: use an AttentionCacheDataModule "
                                 "(mode: scenarios) or set probe_layers and probe_heads")
            self._build_probe(*shape)

    def _build_probe(self, n_layers: int, n_heads: int) -> None:
        self.hparams.probe_layers, self.hparams.probe_heads = int(n_layers), int(n_heads)
        h = self.hparams
        self.probe = ProbeStage(n_layers=int(n_layers), n_heads=int(n_heads), enc_dim=self.net.config.enc_dim,
                                features=h.probe_features, hidden=h.probe_hidden, dropout=h.probe_dropout)

    # --------------------------------------------------------- head importance
    @property
    def head_importance(self) -> Optional[torch.Tensor]:
        """(L, H) signed head importance of the probe on validation scenarios (None before it is computed)."""
        if self.probe is None or not bool(self.probe.head_importance.abs().sum() > 0):
            return None
        return self.probe.head_importance.detach().cpu()

    @property
    def head_importance_by_task(self) -> Optional[dict[str, torch.Tensor]]:
        """``{task: (L, H)}``: the same importance on each task's share of those validation scenarios.

        Computed on first use from the scenarios of the latest validation (the Interventions
        callback asks for it with ``per_task: true``); None before a validation has computed
        ``head_importance`` and after a checkpoint is loaded, which keeps only the global one.
        """
        if self._ranked is None or self.probe is None:
            return None
        if self._by_task is None:
            collected, names = self._ranked
            self._by_task = {k: v.detach().cpu() for k, v in self.probe.importance_by_task(collected, names).items()}
        return self._by_task

    # ------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[NET_CONFIG_KEY] = asdict(self.net.config)  # load_encoder reads a fine-tuned encoder from it

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        for key in RECONSTRUCTION_BUFFERS:
            checkpoint.get("state_dict", {}).pop(key, None)
        self._ranked, self._by_task = None, None

    # ---------------------------------------------------------------- training
    def parameter_groups(self) -> list[dict[str, Any]]:
        groups = [{"params": list(self.probe.parameters()), "weight_decay": self.recipe.weight_decay}]
        if self.hparams.finetune_encoder:
            groups += self.net.param_groups(self.recipe.weight_decay)
        return groups

    def _features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.probe.encoding_features(batch, self.net)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        losses = self.probe.loss(self.probe.logits(batch, self._features(batch)), batch["correct"])
        size = len(batch["correct"])
        self.log("train/loss", losses["probe"], prog_bar=True, on_step=True, on_epoch=True, batch_size=size)
        for name in ("stats_probe", "probe_confidence"):
            self.log(f"train/{name}_loss", losses[name], on_step=False, on_epoch=True, batch_size=size)
        return sum(losses.values())

    def prepare_reference(self) -> None:
        """Fit the training means and majority shares once, from the DataModule's train split."""
        if bool(self.probe.fitted):
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None:
            raise ValueError("the probe needs a DataModule with a train split for its reference features")
        batches = datamodule.train_dataloader()
        check_served_encoder(datamodule, batches, self.net, finetune=self.hparams.finetune_encoder)
        self.probe.fit_reference(batches, self.net)

    # -------------------------------------------------------------- evaluation
    def on_validation_epoch_start(self) -> None:
        self._collected = Collected()

    def on_test_epoch_start(self) -> None:
        self._collected = Collected()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, dataloader_idx)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, dataloader_idx)

    def _evaluate(self, batch: dict[str, torch.Tensor], dataloader_idx: int) -> None:
        if dataloader_idx > 0:
            return  # the probe is scored on the training target's scenarios only
        features = self._features(batch)
        logits = self.probe.logits(batch, features)
        self.probe.collect(self._collected, batch, features, logits, self.hparams.importance_scenarios)

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")

    def _epoch_end(self, stage: str) -> None:
        gathered = self._collected.all_ranks()  # on every rank, before any rank may return
        if gathered is None:
            return
        probs, correct, task = gathered
        names = self._task_names()
        if stage == "val" and not self.trainer.sanity_checking:
            self.probe.confidence_threshold.fill_(best_threshold(probs["confidence"], correct))
            self.probe.importance(self._collected, steps=self.hparams.importance_steps)
            self._ranked, self._by_task = (self._collected, names), None
        thresholds = {"confidence": float(self.probe.confidence_threshold)}
        values, scores = {}, {}
        for name, p in probs.items():
            scores[name] = per_task_scores(p, correct, task, names, threshold=thresholds.get(name, 0.5))
            values.update(metric_dict(f"{stage}/{name}", scores[name]))
        logit = torch.logit(torch.from_numpy(probs["probe"]).clamp(1e-6, 1 - 1e-6))
        values[f"{stage}/loss"] = float(nn.functional.binary_cross_entropy_with_logits(
            logit, torch.from_numpy(correct).float()))
        self.probe_scores = ProbeScores(stage=stage, scores=scores)
        if stage == "test" and self.hparams.bootstrap_resamples:
            values.update(self._uncertainty(probs, correct, task, names, thresholds))
        self.log_dict({k: v for k, v in values.items() if np.isfinite(v)}, add_dataloader_idx=False)

    def _uncertainty(self, probs: dict[str, np.ndarray], correct: np.ndarray, task: np.ndarray, names: list[str],
                     thresholds: dict[str, float]) -> dict[str, float]:
        """Intervals and paired tests of every predictor, kept in ``probe_scores``; returns their metrics."""
        start = time.perf_counter()
        settings = BootstrapSettings(n_resamples=self.hparams.bootstrap_resamples, seed=self.hparams.bootstrap_seed)
        uncertainty = score_uncertainty(probs, correct, task, names, thresholds=thresholds, settings=settings)
        self.probe_scores.uncertainty = uncertainty
        self.probe_scores.bootstrap_seconds = time.perf_counter() - start
        return {k: v for name, u in uncertainty.items() for k, v in uncertainty_metric_dict(f"test/{name}", u).items()}

    def _task_names(self) -> list[str]:
        datamodule = getattr(self.trainer, "datamodule", None)
        names = getattr(datamodule, "task_names", None)
        return list(names) if names else [f"task{i}" for i in range(MAX_TASKS)]

    # ------------------------------------------------------------------ export
    def on_fit_end(self) -> None:
        self._export()

    def on_test_end(self) -> None:
        self._export()

    def _export(self) -> None:
        """The head importance tables, heatmap and score table, on disk and in MLflow (rank zero)."""
        if self.trainer.is_global_zero:
            files = write_probe_files(self.export_path(), self.probe, self.probe_scores)
            log_to_runs(self.trainer.loggers, files, "head_importance")


def check_served_encoder(datamodule: Any, batches: Any, net: APMAE, *, finetune: bool) -> None:
    """Refuse stored encodings of another AP-MAE than the probe's: they would be read as its own.

    A DataModule that serves encodings (batches with ``cls``) names their encoder as ``encoder_hash``;
    one that serves them without naming it is refused too, since the check could not be made. The
    project's DataModules say whether they serve encodings (``serves_encodings``); of another, the
    first training batch is looked at. A fine-tuned encoder reads the images, never stored encodings.
    """
    if finetune:
        return
    served = getattr(datamodule, "encoder_hash", None)
    if served is None:
        serves = getattr(datamodule, "serves_encodings", None)
        if serves is None:  # a DataModule of another project: its first batch says
            first = next(iter(batches), None)
            serves = first is not None and "cls" in first
        if serves:
            raise ValueError(f"{type(datamodule).__name__} serves stored encodings without saying of which encoder "
                             "(an encoder_hash attribute): the probe cannot check they are its encoder's")
        return
    if served != encoder_hash(net):
        raise ValueError(f"the DataModule serves encodings of encoder {served} but the probe's encoder is "
                         f"{encoder_hash(net)}: point data.encoder.path and model.encoder at the same AP-MAE")


def _load_encoder(encoder: str, *, seq_len: int) -> APMAE:
    """The trained encoder the probe reads, checked against the data's ``seq_len``."""
    loaded = load_encoder(encoder)
    if loaded.config.seq_len != seq_len:
        raise ValueError(f"the encoder {encoder} takes S={loaded.config.seq_len} patterns (patch size "
                         f"{loaded.config.patch_size}) but the data has S={seq_len}: train an AP-MAE for "
                         f"S={seq_len} or probe a cache of S={loaded.config.seq_len}")
    return loaded


__all__ = ["LitProbe"]
