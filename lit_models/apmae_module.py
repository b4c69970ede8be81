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
- ``val/loss``: ``val/<training target>/mse``, the value checkpoints monitor;
- ``val/<target>/mse_over_baseline/{ci_low,ci_high}`` and ``.../mse_over_neighbour/...``: 95 %
  bootstrap intervals of those ratios over validation scenarios (each scenario's images resampled
  together, never single pixels; :func:`apmae.common.stats.ratio_intervals`), when batches name
  their ``scenario``; under DDP over every rank's scenarios, gathered, so they equal one process's.

Validation masks are drawn from a generator seeded by the image itself when the batch
names it (``scenario``, ``layer``, ``head``: the attention-cache DataModule's head images),
else by (dataloader, batch), so epochs and runs are compared on the very same masked
patches; with named images also runs on any number of ranks, whose batches hold other
images than a single process's.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict
from typing import Any, Iterable, Optional

import numpy as np
import torch
from torch import nn
from torchmetrics import MeanMetric

from apmae.common.settings import settings_of
from apmae.common.stats import ratio_intervals
from apmae.model.baselines import band_neighbours, neighbour_patches
from apmae.model.loading import NET_CONFIG_KEY
from apmae.model.net import APMAE, APMAEConfig, masked_error, num_visible
from apmae.model.row_emphasis import RowEmphasis
from apmae.common.tracking import HEADLINE, log_to_runs
from apmae.common.ranks import every_rank
from apmae.lit_models.training import OptimizerFactory, RecipeModule, SchedulerFactory, TrainingRecipe

IMAGE_KEYS = ("scenario", "layer", "head")  # what names a head image in a batch (its masking noise follows it)

PROBE_MODULE = "apmae.lit_models.probe_module.LitProbe"  # where the probe stage of former LitAPMAE runs lives


class LitAPMAE(RecipeModule):
    """Trains AP-MAE on scaled attention images and evaluates it across target models.

    Reconstruction only: the correctness probe over a trained encoder is
    :class:`apmae.lit_models.probe_module.LitProbe`.

    Args:
        seq_len: image side S. The CLI links it from the DataModule's ``seq_len``.
        preset: ``APMAEConfig`` preset the network is built from ("tiny", "paper").
        net_overrides: ``APMAEConfig`` fields replacing the preset's (e.g. ``{enc_depth: 4}``);
            ``seq_len`` is always taken from ``seq_len``.
        net: a ready ``APMAE`` (Python use, or ``class_path: apmae.model.APMAE`` in YAML); replaces
            ``preset``/``net_overrides`` and must have ``config.seq_len == seq_len``.
        recipe: the optimiser, schedule and process settings (:class:`apmae.lit_models.training.TrainingRecipe`:
            base_lr, lr_reference_batch, lr, betas, weight_decay, warmup_fraction, min_lr_ratio,
            export_dir, num_threads), or a dict of its fields; None: its defaults (the paper's AdamW
            recipe, 1.5e-4 per 50 images). ``export_dir`` is where the trained net is saved
            (``APMAE.save``) at the end of fit (default: ``apmae_net/`` next to the checkpoint
            directory); ``num_threads`` the torch CPU threads of the process while it trains (on a
            small CPU, ``cores - num_workers`` avoids oversubscription).
        optimizer: optional factory ``params -> Optimizer`` replacing AdamW; it receives the
            weight-decay parameter groups and keeps its own learning rate (no scaling).
        scheduler: optional factory ``optimizer -> LRScheduler`` stepped every optimiser step,
            replacing warmup + cosine.
        baseline_batches: training batches averaged into the mean-pattern baseline.
        compile: run the net's forward through ``torch.compile`` (``nn.Module.compile``: parameter
            names, checkpoints and the export stay as they are). Off by default: on a 2-core CPU the
            demo net compiles for minutes (train and eval graphs) and then steps ~2 % faster.
        bootstrap_resamples: resamples of the per-scenario bootstrap of the error ratios at each
            validation and test (0: no intervals).
        row_emphasis: a training variant that masks the bottom patch row (the scored query's row of
            causal scenarios) more often and weights its loss (:class:`apmae.model.row_emphasis.RowEmphasis`);
            validation is unchanged. None: plain MAE.
    """

    EXPORT_NAME = "apmae_net"

    def __init__(
        self,
        *,
        seq_len: int,
        preset: str = "tiny",
        net_overrides: Optional[dict[str, Any]] = None,
        net: Optional[APMAE] = None,
        recipe: Optional[TrainingRecipe] = None,
        optimizer: Optional[OptimizerFactory] = None,
        scheduler: Optional[SchedulerFactory] = None,
        baseline_batches: int = 32,
        compile: bool = False,
        bootstrap_resamples: int = 1000,
        row_emphasis: Optional[RowEmphasis] = None,
    ) -> None:
        settings = TrainingRecipe.of(recipe)
        super().__init__(recipe=settings, optimizer=optimizer, scheduler=scheduler)
        emphasis = None if row_emphasis is None else settings_of(RowEmphasis, row_emphasis, "row_emphasis")
        # the checkpoint keeps plain values (a weights_only load refuses dataclasses), each setting once
        recipe = asdict(settings)
        row_emphasis = None if emphasis is None else asdict(emphasis)
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"])
        if baseline_batches < 1:
            raise ValueError(f"baseline_batches must be >= 1, got {baseline_batches}")
        if bootstrap_resamples != 0 and bootstrap_resamples < 100:
            raise ValueError(f"bootstrap_resamples={bootstrap_resamples}: use 0 (no intervals) or >= 100")
        self.net = _build_net(seq_len=seq_len, preset=preset, overrides=net_overrides, net=net)
        if compile:
            self.net.compile()
        self.row_emphasis = emphasis if emphasis is not None and emphasis.active else None
        if self.row_emphasis is not None:
            config = self.net.config
            self.row_emphasis.check(
                config.grid, config.num_patches - num_visible(config.num_patches, config.mask_ratio)
            )
        # Mean scaled training image: the trivial reconstruction every run is compared with.
        self.register_buffer("baseline_mean", torch.zeros(1, 1, seq_len, seq_len))
        self.register_buffer("baseline_images", torch.zeros((), dtype=torch.long))
        # (Q, Q) patches sharing a grid row or column: the neighbour baseline's averaging weights.
        self.register_buffer("band_neighbours", band_neighbours(self.net.config.grid), persistent=False)
        self._metrics = nn.ModuleDict()
        # "<stage>_<dataloader>" -> [(scenario ids (B,), squared errors (3, B) of AP-MAE, mean, neighbours)]
        self._per_scenario: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        self.bootstrap_seconds = 0.0  # spent on the intervals, all evaluations together

    @property
    def config(self) -> APMAEConfig:
        return self.net.config

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[NET_CONFIG_KEY] = asdict(self.net.config)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of the former probe stage of LitAPMAE with the module that reads it."""
        if checkpoint.get("hyper_parameters", {}).get("stage") == "probe":
            raise ValueError(f"this checkpoint holds a probe (stage: probe), which LitAPMAE no longer trains: "
                             f"load it with {PROBE_MODULE}.load_from_checkpoint")

    def parameter_groups(self) -> list[dict[str, Any]]:
        return self.net.param_groups(self.recipe.weight_decay)

    # ----------------------------------------------------------------- training
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images = batch["images"]
        emphasis = self.row_emphasis
        if emphasis is None:
            out = self.net(images)
            loss = out.loss
        else:
            grid = self.net.config.grid
            out = self.net(images, noise=emphasis.noise(images.shape[0], grid, device=images.device))
            loss = emphasis.loss(out.pred, out.patches, out.mask, out.valid, grid)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=images.shape[0])
        return loss

    # --------------------------------------------------------------- evaluation
    def on_validation_epoch_start(self) -> None:
        self._reset_metrics("val", self.trainer.val_dataloaders)

    def on_test_epoch_start(self) -> None:
        self._reset_metrics("test", self.trainer.test_dataloaders)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate("val", batch, batch_idx, dataloader_idx)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate("test", batch, batch_idx, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def fixed_noise(self, batch_size: int, batch_idx: int, dataloader_idx: int) -> torch.Tensor:
        """(B, Q) masking noise that is the same every epoch for this (dataloader, batch)."""
        generator = torch.Generator().manual_seed(1_000_003 * dataloader_idx + batch_idx)
        noise = torch.rand(batch_size, self.net.num_patches, generator=generator)
        return noise.to(self.device)

    def image_noise(self, batch: dict[str, Any], dataloader_idx: int) -> Optional[torch.Tensor]:
        """(B, Q) masking noise of each named image, the same whichever batch or rank it is in;
        None when the batch does not name its images (``scenario``, ``layer``, ``head``)."""
        if not all(key in batch for key in IMAGE_KEYS):
            return None
        keys = torch.stack([torch.as_tensor(batch[key]).long().cpu() for key in IMAGE_KEYS], dim=1)  # (B, 3)
        rows = []
        for scenario, layer, head in keys.tolist():
            # torch's CPU generator keeps only 32 bits of a seed: hash the whole key into them
            digest = hashlib.blake2b(f"{dataloader_idx}:{scenario}:{layer}:{head}".encode(), digest_size=4).digest()
            generator = torch.Generator().manual_seed(int.from_bytes(digest, "little"))
            rows.append(torch.rand(self.net.num_patches, generator=generator))
        return torch.stack(rows).to(self.device)

    def baseline_patches(self) -> torch.Tensor:
        """(1, Q, P2) patches of the mean training pattern."""
        return self.net.patchify(self.baseline_mean)

    def _evaluate(self, stage: str, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int) -> Any:
        images = batch["images"]
        noise = self.image_noise(batch, dataloader_idx)
        if noise is None:
            noise = self.fixed_noise(images.shape[0], batch_idx, dataloader_idx)
        out = self.net(images, noise=noise)
        model_err = masked_error(out.pred, out.patches, out.mask, out.valid)
        base = self.baseline_patches()
        base_err = masked_error(base, out.patches, out.mask, out.valid)
        near = neighbour_patches(out.patches, out.mask, out.valid, base, self.band_neighbours)
        near_err = masked_error(near, out.patches, out.mask, out.valid)
        metrics = self._metrics[f"{stage}_{dataloader_idx}"]
        metrics["mse"].update(model_err.mse, model_err.count)
        metrics["baseline"].update(base_err.mse, base_err.count)
        metrics["neighbour"].update(near_err.mse, near_err.count)
        if "scenario" in batch and self.hparams.bootstrap_resamples:
            sse = torch.stack([masked_error(p, out.patches, out.mask, out.valid, per_image=True).sse
                               for p in (out.pred, base, near)])  # (3, B)
            self._per_scenario.setdefault(f"{stage}_{dataloader_idx}", []).append(
                (batch["scenario"].cpu().numpy(), sse.cpu().numpy()))
        return out

    def _reset_metrics(self, stage: str, dataloaders: Any) -> None:
        count = len(dataloaders) if isinstance(dataloaders, (list, tuple)) else 1
        for key in [k for k in self._metrics if k.startswith(f"{stage}_")]:
            del self._metrics[key]
            self._per_scenario.pop(key, None)
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
        if stage == "val":
            values |= _headline(errors, train_name)
        self.log_dict(values, sync_dist=True, add_dataloader_idx=False)
        if not self.trainer.sanity_checking:
            self.log_dict(self._ratio_intervals(stage, names), add_dataloader_idx=False)

    def _ratio_intervals(self, stage: str, names: list[str]) -> dict[str, float]:
        """``<stage>/<target>/{mse_over_baseline,mse_over_neighbour}/{ci_low,ci_high}`` over scenarios."""
        start, values = time.perf_counter(), {}
        for idx, name in enumerate(names):
            # every rank's scenarios (under DDP each holds a share): all ranks then log the same intervals
            parts = [p for rank in every_rank(self._per_scenario.get(f"{stage}_{idx}") or []) for p in rank]
            if not parts:
                continue
            ids = np.concatenate([p[0] for p in parts])
            sse = np.concatenate([p[1] for p in parts], axis=1)  # (3, images)
            _, unit = np.unique(ids, return_inverse=True)
            per_scenario = np.stack([np.bincount(unit, weights=row) for row in sse])  # (3, scenarios)
            intervals = ratio_intervals(per_scenario[0], per_scenario[1:], n_resamples=self.hparams.bootstrap_resamples)
            for ratio, interval in zip(("mse_over_baseline", "mse_over_neighbour"), intervals):
                values[f"{stage}/{name}/{ratio}/ci_low"] = interval.low
                values[f"{stage}/{name}/{ratio}/ci_high"] = interval.high
        self.bootstrap_seconds += time.perf_counter() - start
        return values

    # ----------------------------------------------------------------- baseline
    def prepare_reference(self) -> None:
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
        if self.trainer.is_global_zero:
            path = self.export_path()
            self.net.save(path)
            log_to_runs(self.trainer.loggers, [path], "apmae_net")


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


def _headline(errors: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]], train_name: str) -> dict[str, Any]:
    """The run's few numbers under ``headline/``: the training target's error over the trivial mean pattern
    and over the visible neighbours, its validation MSE, and (with other targets) the largest of their
    errors over the trivial pattern, the cross-model ratio."""
    mse, baseline, neighbour = errors[train_name]
    out = {f"{HEADLINE}val_mse": mse, f"{HEADLINE}recon_over_trivial": mse / baseline.clamp_min(1e-12),
           f"{HEADLINE}recon_over_neighbours": mse / neighbour.clamp_min(1e-12)}
    others = [m / b.clamp_min(1e-12) for name, (m, b, _) in errors.items() if name != train_name]
    if others:
        out[f"{HEADLINE}cross_model_over_trivial"] = torch.stack(others).max()
    return out
