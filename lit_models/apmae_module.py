"""LitAPMAE: AP-MAE reconstruction training, trivial baseline and cross-model evaluation.

Glossary: B batch, S image side (tokens), P patch side, G = S / P grid side,
Q = G (G + 1) / 2 lower-triangular patches, P2 = P * P pixels per patch.

The network is the plain ``apmae.model.APMAE``; this module only adds the
optimiser recipe of the paper, metrics and export. Metrics, per validation
(or test) dataloader, i.e. per target model whose attention cache it reads:

- ``val/<target>/mse``: MSE over the valid pixels of masked patches
  (:func:`apmae.model.net.masked_error`, the pixels AP-MAE's loss uses);
- ``val/<target>/baseline_mse``: the same pixels predicted by the per-pixel
  mean pattern of the training set (a trivial reconstruction), same masks;
- ``val/<target>/mse_over_baseline``: AP-MAE error / trivial error (< 1 is better);
- ``val/<target>/neighbour_mse``: the same pixels predicted by the mean pattern plus
  the image's departure from it in the visible patches of the same row and column
  bands (:func:`apmae.model.baselines.neighbour_patches`), a stronger trivial
  reconstruction; ``mse_over_neighbour`` is AP-MAE's error over it;
- ``val/<target>/mse_over_train``: error on this target / error on the training
  target (the paper's "minimal degradation on unseen models", measured);
- ``val/loss``: ``val/<training target>/mse``, the value checkpoints monitor.

Validation masks are drawn from a generator seeded by (dataloader, batch), so
epochs and runs are compared on the very same masked patches.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch
from lightning.pytorch import LightningModule
from torch import nn

from apmae.model.baselines import band_neighbours, neighbour_patches
from apmae.model.loading import NET_CONFIG_KEY, load_encoder
from apmae.model.net import APMAE, APMAEConfig, masked_error
from apmae.model.schedules import warmup_cosine
from apmae.common.tracking import log_to_runs
from lit_models.probe_stage import Collected, ProbeStage, ProbeTraining

STAGES = ("reconstruct", "probe")

FUSED_ADAMW_DEVICES = ("cpu", "cuda")  # devices with torch's fused AdamW kernel
OptimizerFactory = Callable[[Iterable[Any]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


class LitAPMAE(ProbeTraining, LightningModule):
    """Trains AP-MAE on scaled attention images and evaluates it across target models.

    Args:
        seq_len: image side S. The CLI links it from the DataModule's ``seq_len``.
        preset: ``APMAEConfig`` preset the network is built from ("tiny", "paper").
        net_overrides: ``APMAEConfig`` fields replacing the preset's (e.g. ``{enc_depth: 4}``);
            ``seq_len`` is always taken from ``seq_len``.
        net: a ready ``APMAE`` (Python use, or ``class_path: apmae.model.APMAE`` in YAML); replaces
            ``preset``/``net_overrides`` and must have ``config.seq_len == seq_len``.
        base_lr: learning rate per ``lr_reference_batch`` images (paper: 1.5e-4 per 50).
        lr_reference_batch: batch size ``base_lr`` refers to; the run's LR is
            ``base_lr * effective_batch / lr_reference_batch`` (batch x devices x accumulation).
        lr: absolute learning rate; when set, no batch-size scaling happens.
        betas: AdamW betas.
        weight_decay: AdamW weight decay, not applied to norms, biases, embeddings and tokens.
        warmup_fraction: share of all optimiser steps spent in linear warmup.
        min_lr_ratio: the cosine schedule ends at ``min_lr_ratio * lr``.
        optimizer: optional factory ``params -> Optimizer`` replacing AdamW; it receives the
            weight-decay parameter groups and keeps its own learning rate (no scaling).
        scheduler: optional factory ``optimizer -> LRScheduler`` stepped every optimiser step,
            replacing warmup + cosine.
        baseline_batches: training batches averaged into the mean-pattern baseline.
        export_dir: where the trained net is saved (``APMAE.save``) at the end of fit;
            default: ``apmae_net/`` next to the checkpoint directory. In the probe stage: where
            the head importance (``importance.csv``, ``heatmap.png``) and score tables go
            (default: ``probe/`` next to the checkpoint directory).
        num_threads: torch CPU threads of this process, set when the trainer sets up (None: leave
            torch's default). On a small CPU, ``cores - num_workers`` avoids oversubscription,
            which slows small-matrix training several-fold.
        stage: ``reconstruct`` (masked-autoencoder training) or ``probe`` (predict from a trained
            encoder's view of every head whether the target's completion is correct; see
            :mod:`lit_models.probe_stage`). The probe stage needs ``mode: scenarios`` data.
        encoder: probe stage: the trained AP-MAE, an export directory (``APMAE.save``) or a LitAPMAE
            checkpoint; it replaces ``preset``/``net``. Frozen unless ``finetune_encoder``.
        finetune_encoder: probe stage: train the encoder with the probe (needs image batches: leave
            the DataModule's ``encoder`` unset).
        probe_features: per-head encoding the probe reads: ``cls``, ``mean`` or ``both``.
        probe_hidden: width of the probe's shared per-head network.
        probe_dropout: dropout inside the probe.
        probe_layers: L of the target (None: taken from the DataModule's ``n_layers`` at setup).
        probe_heads: H of the target (None: taken from the DataModule's ``n_heads`` at setup).
        importance_scenarios: validation scenarios the head importance is computed on (at most).
        importance_steps: integrated-gradients steps of the second importance estimate.
        compile: run the net's forward through ``torch.compile`` (``nn.Module.compile``: parameter
            names, checkpoints and the export stay as they are). Off by default: on a 2-core CPU the
            demo net compiles for minutes (train and eval graphs) and then steps ~2 % faster.
    """

    def __init__(
        self,
        *,
        seq_len: int,
        preset: str = "tiny",
        net_overrides: Optional[dict[str, Any]] = None,
        net: Optional[APMAE] = None,
        base_lr: float = 1.5e-4,
        lr_reference_batch: int = 50,
        lr: Optional[float] = None,
        betas: tuple[float, float] = (0.9, 0.95),
        weight_decay: float = 0.05,
        warmup_fraction: float = 0.05,
        min_lr_ratio: float = 0.0,
        optimizer: Optional[OptimizerFactory] = None,
        scheduler: Optional[SchedulerFactory] = None,
        baseline_batches: int = 32,
        export_dir: Optional[str] = None,
        num_threads: Optional[int] = None,
        stage: str = "reconstruct",
        encoder: Optional[str] = None,
        finetune_encoder: bool = False,
        probe_features: str = "both",
        probe_hidden: int = 64,
        probe_dropout: float = 0.1,
        probe_layers: Optional[int] = None,
        probe_heads: Optional[int] = None,
        importance_scenarios: int = 512,
        importance_steps: int = 32,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"])
        if stage not in STAGES:
            raise ValueError(f"stage={stage!r}; use one of {STAGES}")
        if not 0.0 <= warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")
        if baseline_batches < 1:
            raise ValueError(f"baseline_batches must be >= 1, got {baseline_batches}")
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"num_threads must be >= 1 or None, got {num_threads}")
        if stage == "probe":
            net = _probe_encoder(encoder, seq_len=seq_len, overrides=net_overrides, net=net)
            net.requires_grad_(finetune_encoder)
        elif encoder is not None or finetune_encoder:
            raise ValueError("encoder / finetune_encoder belong to the probe stage; set stage: probe")
        self.net = _build_net(seq_len=seq_len, preset=preset, overrides=net_overrides, net=net)
        self.probe: Optional[ProbeStage] = None
        if stage == "probe" and probe_layers is not None and probe_heads is not None:
            self._build_probe(probe_layers, probe_heads)
        if compile:
            self.net.compile()
        self._optimizer_factory = optimizer
        self._scheduler_factory = scheduler
        # Mean scaled training image: the trivial reconstruction every run is compared with.
        self.register_buffer("baseline_mean", torch.zeros(1, 1, seq_len, seq_len))
        self.register_buffer("baseline_images", torch.zeros((), dtype=torch.long))
        # (Q, Q) patches sharing a grid row or column: the neighbour baseline's averaging weights.
        self.register_buffer("band_neighbours", band_neighbours(self.net.config.grid), persistent=False)
        self._metrics = nn.ModuleDict()

    @property
    def config(self) -> APMAEConfig:
        return self.net.config

    def setup(self, stage: str) -> None:
        if self.hparams.num_threads is not None:
            torch.set_num_threads(self.hparams.num_threads)
        if self.hparams.stage == "probe" and self.probe is None:
            datamodule = getattr(self.trainer, "datamodule", None)
            shape = [getattr(datamodule, k, None) for k in ("n_layers", "n_heads")]
            if None in shape:
                raise ValueError("the probe stage needs the target's layers and heads: use an "
                                 "AttentionCacheDataModule (mode: scenarios) or set probe_layers and probe_heads")
            self._build_probe(*shape)

    def _build_probe(self, n_layers: int, n_heads: int) -> None:
        self.hparams.probe_layers, self.hparams.probe_heads = int(n_layers), int(n_heads)
        h = self.hparams
        self.probe = ProbeStage(n_layers=int(n_layers), n_heads=int(n_heads), enc_dim=self.net.config.enc_dim,
                                features=h.probe_features, hidden=h.probe_hidden, dropout=h.probe_dropout)

    @property
    def head_importance(self) -> Optional[torch.Tensor]:
        """(L, H) signed head importance of the probe on validation scenarios (None before it is computed)."""
        if self.probe is None or not bool(self.probe.head_importance.abs().sum() > 0):
            return None
        return self.probe.head_importance.detach().cpu()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[NET_CONFIG_KEY] = asdict(self.net.config)

    # ----------------------------------------------------------------- training
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.probe is not None:
            return self._probe_step(batch)
        images = batch["images"]
        out = self.net(images)
        self.log("train/loss", out.loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=images.shape[0])
        return out.loss

    def configure_optimizers(self) -> Any:
        groups = self.net.param_groups(self.hparams.weight_decay)
        if self.probe is not None:
            groups = [{"params": list(self.probe.parameters()), "weight_decay": self.hparams.weight_decay},
                      *(groups if self.hparams.finetune_encoder else [])]
        if self._optimizer_factory is not None:
            optimizer = self._optimizer_factory(groups)
        else:
            # One fused kernel over all parameters instead of a loop over tensors: for the paper
            # preset's 127 M parameters 0.14 s instead of 0.79 s per step on one CPU core.
            fused = all(p.device.type in FUSED_ADAMW_DEVICES for group in groups for p in group["params"])
            # With a loss scaler (16-mixed) the fused kernel unscales the gradients inside its step, so
            # they are still scaled when clipped: such runs use the foreach kernel instead.
            fused = fused and not (self._clip_value() and self._loss_scaler() is not None)
            optimizer = torch.optim.AdamW(groups, lr=self.learning_rate(), betas=tuple(self.hparams.betas), fused=fused)
        if self._scheduler_factory is not None:
            scheduler = self._scheduler_factory(optimizer)
        else:
            total = self._total_steps()
            warmup = max(1, int(self.hparams.warmup_fraction * total)) if self.hparams.warmup_fraction > 0 else 0
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer,
                lambda step: warmup_cosine(
                    step, warmup_steps=warmup, total_steps=total, min_ratio=self.hparams.min_lr_ratio
                ),
            )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _clip_value(self) -> float:
        trainer = self._trainer
        return float(trainer.gradient_clip_val or 0.0) if trainer is not None else 0.0

    def _loss_scaler(self) -> Any:
        trainer = self._trainer
        return getattr(trainer.precision_plugin, "scaler", None) if trainer is not None else None

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: Any = None,
                                    gradient_clip_algorithm: Optional[str] = None) -> None:
        """Clip as Lightning does; a fused optimizer under bf16-mixed is clipped here directly.

        Lightning's mixed-precision plugin refuses to clip for any optimizer that unscales its own
        gradients (the fused kernels), even without a loss scaler. Under bf16-mixed there is none,
        so the gradients are already the true ones and clipping them directly is exact.
        """
        fused = bool(getattr(optimizer, "defaults", {}).get("fused"))
        if not (gradient_clip_val and fused and self._loss_scaler() is None):
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if gradient_clip_algorithm in (None, "norm"):
            torch.nn.utils.clip_grad_norm_(params, float(gradient_clip_val))
        else:
            torch.nn.utils.clip_grad_value_(params, float(gradient_clip_val))

    def learning_rate(self) -> float:
        """The run's peak LR: ``lr`` if given, else ``base_lr`` scaled by the effective batch size."""
        if self.hparams.lr is not None:
            return float(self.hparams.lr)
        return self.hparams.base_lr * self.effective_batch_size() / self.hparams.lr_reference_batch

    def effective_batch_size(self) -> int:
        """Images per optimiser step over all devices (batch x world size x accumulation)."""
        trainer = self._trainer
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        batch = getattr(datamodule, "batch_size", None)
        if batch is None:
            warnings.warn("the DataModule has no `batch_size`: LR is not scaled; set `lr` to choose it", stacklevel=2)
            return self.hparams.lr_reference_batch
        return int(batch) * trainer.world_size * trainer.accumulate_grad_batches

    def _total_steps(self) -> int:
        steps = self.trainer.estimated_stepping_batches
        return int(steps) if math.isfinite(steps) and steps > 0 else 1

    # --------------------------------------------------------------- evaluation
    def on_fit_start(self) -> None:
        self._ensure_baseline()

    def on_validation_start(self) -> None:
        self._ensure_baseline()

    def on_test_start(self) -> None:
        self._ensure_baseline()

    def on_validation_epoch_start(self) -> None:
        self._reset_metrics("val", self.trainer.val_dataloaders)

    def on_test_epoch_start(self) -> None:
        self._reset_metrics("test", self.trainer.test_dataloaders)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate("val", batch, batch_idx, dataloader_idx)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate("test", batch, batch_idx, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        if self.probe is not None:
            return self._probe_epoch_end("val")
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        if self.probe is not None:
            return self._probe_epoch_end("test")
        self._log_epoch("test")

    def fixed_noise(self, batch_size: int, batch_idx: int, dataloader_idx: int) -> torch.Tensor:
        """(B, Q) masking noise that is the same every epoch for this (dataloader, batch)."""
        generator = torch.Generator().manual_seed(1_000_003 * dataloader_idx + batch_idx)
        noise = torch.rand(batch_size, self.net.num_patches, generator=generator)
        return noise.to(self.device)

    def baseline_patches(self) -> torch.Tensor:
        """(1, Q, P2) patches of the mean training pattern."""
        return self.net.patchify(self.baseline_mean)

    def _evaluate(self, stage: str, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int) -> Any:
        if self.probe is not None:
            return self._probe_evaluate(batch, dataloader_idx)
        images = batch["images"]
        out = self.net(images, noise=self.fixed_noise(images.shape[0], batch_idx, dataloader_idx))
        model_err = masked_error(out.pred, out.patches, out.mask, out.valid)
        base = self.baseline_patches()
        base_err = masked_error(base, out.patches, out.mask, out.valid)
        near = neighbour_patches(out.patches, out.mask, out.valid, base, self.band_neighbours)
        near_err = masked_error(near, out.patches, out.mask, out.valid)
        metrics = self._metrics[f"{stage}_{dataloader_idx}"]
        metrics["mse"].update(model_err.mse, model_err.count)
        metrics["baseline"].update(base_err.mse, base_err.count)
        metrics["neighbour"].update(near_err.mse, near_err.count)
        return out

    def _reset_metrics(self, stage: str, dataloaders: Any) -> None:
        from torchmetrics import MeanMetric

        if self.probe is not None:
            self._collected = Collected()
            return
        count = len(dataloaders) if isinstance(dataloaders, (list, tuple)) else 1
        for key in [k for k in self._metrics if k.startswith(f"{stage}_")]:
            del self._metrics[key]
        for idx in range(count):
            pair = nn.ModuleDict({"mse": MeanMetric(), "baseline": MeanMetric(), "neighbour": MeanMetric()})
            self._metrics[f"{stage}_{idx}"] = pair.to(self.device)

    def target_names(self, stage: str) -> tuple[list[str], str]:
        """Names of the evaluated targets (dataloader order) and of the training target."""
        count = sum(1 for k in self._metrics if k.startswith(f"{stage}_"))
        datamodule = getattr(self.trainer, "datamodule", None)
        names = list(getattr(datamodule, f"{stage}_target_names", None) or getattr(datamodule, "val_target_names", []))
        if len(names) != count:
            names = ["target"] if count == 1 else [f"target{i}" for i in range(count)]
        train_name = getattr(datamodule, "train_target_name", None)
        return names, train_name if train_name in names else names[0]

    def _log_epoch(self, stage: str) -> None:
        names, train_name = self.target_names(stage)
        errors = {}
        for idx, name in enumerate(names):
            metrics = self._metrics[f"{stage}_{idx}"]
            errors[name] = (metrics["mse"].compute(), metrics["baseline"].compute(), metrics["neighbour"].compute())
        train_mse = errors[train_name][0]
        values = {f"{stage}/loss": train_mse}
        for name, (mse, baseline, neighbour) in errors.items():
            values[f"{stage}/{name}/mse"] = mse
            values[f"{stage}/{name}/baseline_mse"] = baseline
            values[f"{stage}/{name}/mse_over_baseline"] = mse / baseline.clamp_min(1e-12)
            values[f"{stage}/{name}/neighbour_mse"] = neighbour
            values[f"{stage}/{name}/mse_over_neighbour"] = mse / neighbour.clamp_min(1e-12)
            values[f"{stage}/{name}/mse_over_train"] = mse / train_mse.clamp_min(1e-12)
        self.log_dict(values, sync_dist=True, add_dataloader_idx=False)

    # ----------------------------------------------------------------- baseline
    def _ensure_baseline(self) -> None:
        if self.probe is not None:
            return self._ensure_probe_reference()
        if int(self.baseline_images) > 0:
            return
        loader = _train_loader(self.trainer)
        if loader is None:
            raise ValueError(
                "LitAPMAE needs training images for its mean-pattern baseline: use a DataModule with a "
                "train split, or load a checkpoint of a fitted run"
            )
        total = torch.zeros_like(self.baseline_mean)
        count = torch.zeros((), dtype=torch.long, device=self.device)
        for i, batch in enumerate(loader):
            if i >= self.hparams.baseline_batches:
                break
            images = batch["images"].to(self.device, torch.float32)
            total += images.sum(dim=0, keepdim=True)
            count += images.shape[0]
        total = self.trainer.strategy.reduce(total, reduce_op="sum")
        count = self.trainer.strategy.reduce(count, reduce_op="sum")
        if int(count) == 0:
            raise ValueError("the training dataloader is empty: the DataModule selected no training images")
        self.baseline_mean.copy_(total / count)
        self.baseline_images.fill_(int(count))

    # ------------------------------------------------------------------- export
    def on_fit_end(self) -> None:
        path = self.export_path()
        if self.probe is not None:
            return self._export_probe(path, "fit")
        if self.trainer.is_global_zero:
            self.net.save(path)
            log_to_runs(self.trainer.loggers, [path], "apmae_net")

    def on_test_end(self) -> None:
        if self.probe is not None:
            self._export_probe(self.export_path(), "test")

    def export_path(self) -> Path:
        """Directory the trained net is saved to at the end of fit."""
        if self.hparams.export_dir:
            return Path(self.hparams.export_dir)
        name = "probe" if self.probe is not None else "apmae_net"
        callback = self.trainer.checkpoint_callback
        if callback is not None and getattr(callback, "dirpath", None):
            return Path(callback.dirpath).parent / name
        return Path(self.trainer.default_root_dir) / name


def _probe_encoder(encoder: Optional[str], *, seq_len: int, overrides: Optional[dict[str, Any]],
                   net: Optional[APMAE]) -> APMAE:
    """The trained encoder the probe stage reads, checked against the data's ``seq_len``."""
    if net is not None:
        return net
    if encoder is None:
        raise ValueError("stage: probe needs `encoder`: the trained AP-MAE (export directory, e.g. "
                         "artifacts/demo/apmae, or a LitAPMAE checkpoint)")
    if overrides:
        raise ValueError("net_overrides do not apply to a loaded encoder: its architecture is fixed by its config")
    loaded = load_encoder(encoder)
    if loaded.config.seq_len != seq_len:
        raise ValueError(f"the encoder {encoder} takes S={loaded.config.seq_len} patterns (patch size "
                         f"{loaded.config.patch_size}) but the data has S={seq_len}: train an AP-MAE for "
                         f"S={seq_len} or probe a cache of S={loaded.config.seq_len}")
    return loaded


def _build_net(*, seq_len: int, preset: str, overrides: Optional[dict[str, Any]], net: Optional[APMAE]) -> APMAE:
    """The network from a ready instance or from preset + overrides, checked against ``seq_len``."""
    if net is not None:
        if overrides:
            raise ValueError("give either `net` or `net_overrides`, not both: overrides apply to presets only")
        if net.config.seq_len != seq_len:
            raise ValueError(
                f"the net is configured for seq_len {net.config.seq_len} but the data has seq_len {seq_len}: "
                f"set the net's seq_len to {seq_len} (or leave `net` out and use `preset`)"
            )
        return net
    overrides = dict(overrides or {})
    if overrides.pop("seq_len", seq_len) != seq_len:
        raise ValueError(
            f"net_overrides.seq_len contradicts seq_len {seq_len} (linked from the data): "
            "remove seq_len from net_overrides"
        )
    return APMAE(APMAEConfig.preset(preset, seq_len=seq_len, **overrides))


def _train_loader(trainer: Any) -> Optional[Iterable[dict[str, torch.Tensor]]]:
    """The DataModule's training dataloader, or None when the trainer has no DataModule."""
    datamodule = getattr(trainer, "datamodule", None)
    return None if datamodule is None else datamodule.train_dataloader()


__all__ = ["LitAPMAE"]
