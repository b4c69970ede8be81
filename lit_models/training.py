"""The optimiser recipe every trained LightningModule of the project shares (AP-MAE, the probe, the demo's target).

- AdamW with the paper's betas and weight decay, one fused kernel where torch has one (unless ``fused: false``);
- the learning rate scaled by the effective batch (batch x devices x accumulation), unless fixed;
- linear warmup then cosine decay, stepped every optimiser step;
- gradient clipping that also works for a fused optimizer under bf16-mixed;
- the torch CPU thread count of the process and the folder a run exports to.

A module subclasses :class:`RecipeModule`, takes one ``recipe`` argument (a :class:`TrainingRecipe`,
a dict of its fields, or a ``recipe:`` block in a config) and says which parameters train in
:meth:`RecipeModule.parameter_groups`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Mapping, Optional

import torch
from lightning.pytorch import LightningModule

from apmae.common.cores import torch_threads
from apmae.common.precision import warn_emulated_bf16
from apmae.common.settings import field_names, settings_of
from apmae.model.schedules import warmup_cosine

FUSED_ADAMW_DEVICES = ("cpu", "cuda")  # devices with torch's fused AdamW kernel
OptimizerFactory = Callable[[Iterable[Any]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


@dataclass(frozen=True)
class TrainingRecipe:
    """Optimiser, schedule and process settings of one run (the modules document each field)."""

    base_lr: float = 1.5e-4  # per lr_reference_batch images (paper: 1.5e-4 per 50)
    lr_reference_batch: int = 50
    lr: Optional[float] = None  # absolute LR: no batch-size scaling
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05  # share of all optimiser steps in linear warmup
    min_lr_ratio: float = 0.0  # the cosine ends at min_lr_ratio * lr
    export_dir: Optional[str] = None  # None: <EXPORT_NAME>/ next to the checkpoint directory
    num_threads: Optional[int] = None  # torch CPU threads, set at setup (None: torch's default)
    # AdamW's kernel: None (or True) takes torch's fused one where the device has it; False the per-tensor
    # loop, whose steps differ from the fused kernel's in the last bits (the demo's targets train with it)
    fused: Optional[bool] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(self.betas))
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1 or None, got {self.num_threads}")
        if self.lr_reference_batch < 1:
            raise ValueError(f"lr_reference_batch must be >= 1, got {self.lr_reference_batch}")

    @classmethod
    def of(cls, value: "TrainingRecipe | Mapping[str, Any] | None") -> "TrainingRecipe":
        """``value`` as a TrainingRecipe: itself, one built from a mapping of its fields, or the defaults."""
        return settings_of(cls, value, "recipe")


RECIPE_FIELDS = field_names(TrainingRecipe)


class RecipeModule(LightningModule):
    """A LightningModule trained with :class:`TrainingRecipe`; subclasses give ``parameter_groups``.

    Args:
        recipe: the run's optimiser, schedule and process settings.
        optimizer: optional factory ``params -> Optimizer`` replacing AdamW; it receives the
            parameter groups and keeps its own learning rate (no scaling).
        scheduler: optional factory ``optimizer -> LRScheduler`` stepped every optimiser step,
            replacing warmup + cosine.
    """

    EXPORT_NAME: ClassVar[str] = "export"  # default export folder, next to the checkpoint directory

    def __init__(self, *, recipe: TrainingRecipe, optimizer: Optional[OptimizerFactory] = None,
                 scheduler: Optional[SchedulerFactory] = None) -> None:
        super().__init__()
        self.recipe = recipe
        self._optimizer_factory = optimizer
        self._scheduler_factory = scheduler

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The optimizer's parameter groups (``params`` and ``weight_decay`` each)."""
        raise NotImplementedError(f"{type(self).__name__} must say which parameters train (parameter_groups)")

    def setup(self, stage: str) -> None:
        hold_threads(self, self.recipe.num_threads)
        trainer = getattr(self, "_trainer", None)
        precision = str(getattr(trainer, "precision", "")) if trainer is not None else ""
        # the trainer's device: at setup the module is not on it yet
        if "bf16" in precision and trainer.strategy.root_device.type == "cpu":
            warn_emulated_bf16(f"{type(self).__name__} (trainer.precision={precision})", "--trainer.precision 32")

    def teardown(self, stage: str) -> None:
        """Give the process back the thread count it had before ``setup``: a later fit in the same
        process (the demo's probe after AP-MAE) sets up its data on the process's own threads."""
        release_threads(self)

    def prepare_reference(self) -> None:
        """What evaluation compares with (a baseline, reference features), computed once from the training
        split before fit, validation or test; subclasses that need one override it."""

    def on_fit_start(self) -> None:
        self.prepare_reference()

    def on_validation_start(self) -> None:
        self.prepare_reference()

    def on_test_start(self) -> None:
        self.prepare_reference()

    def configure_optimizers(self) -> Any:
        groups = self.parameter_groups()
        if self._optimizer_factory is not None:
            optimizer = self._optimizer_factory(groups)
        else:
            # One fused kernel over all parameters instead of a loop over tensors: for the paper
            # preset's 127 M parameters 0.14 s instead of 0.79 s per step on one CPU core.
            fused = self.recipe.fused is not False and all(
                p.device.type in FUSED_ADAMW_DEVICES for group in groups for p in group["params"])
            # With a loss scaler (16-mixed) the fused kernel unscales the gradients inside its step, so
            # they are still scaled when clipped: such runs use the foreach kernel instead.
            fused = fused and not (self._clip_value() and self._loss_scaler() is not None)
            optimizer = torch.optim.AdamW(groups, lr=self.learning_rate(), betas=tuple(self.recipe.betas), fused=fused)
        if self._scheduler_factory is not None:
            scheduler = self._scheduler_factory(optimizer)
        else:
            total = self._total_steps()
            fraction = self.recipe.warmup_fraction
            warmup = max(1, int(fraction * total)) if fraction > 0 else 0
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer,
                lambda step: warmup_cosine(step, warmup_steps=warmup, total_steps=total,
                                           min_ratio=self.recipe.min_lr_ratio),
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
        if self.recipe.lr is not None:
            return float(self.recipe.lr)
        return self.recipe.base_lr * self.effective_batch_size() / self.recipe.lr_reference_batch

    def effective_batch_size(self) -> int:
        """Samples per optimiser step over all devices (batch x world size x accumulation)."""
        trainer = self._trainer
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        batch = getattr(datamodule, "batch_size", None)
        if batch is None:
            warnings.warn("the DataModule has no `batch_size`: LR is not scaled; set `lr` to choose it", stacklevel=2)
            return self.recipe.lr_reference_batch
        return int(batch) * trainer.world_size * trainer.accumulate_grad_batches

    def _total_steps(self) -> int:
        steps = self.trainer.estimated_stepping_batches
        return int(steps) if math.isfinite(steps) and steps > 0 else 1

    def export_path(self) -> Path:
        """Directory the run exports to: ``export_dir``, else ``EXPORT_NAME`` next to the checkpoint directory."""
        if self.recipe.export_dir:
            return Path(self.recipe.export_dir)
        callback = self.trainer.checkpoint_callback
        if callback is not None and getattr(callback, "dirpath", None):
            return Path(callback.dirpath).parent / self.EXPORT_NAME
        return Path(self.trainer.default_root_dir) / self.EXPORT_NAME


def hold_threads(module: Any, threads: int | None) -> None:
    """Set torch's thread count to ``threads`` from a module's ``setup`` until :func:`release_threads`
    (its ``teardown``) restores it (:func:`apmae.common.cores.torch_threads`); None leaves it."""
    if threads is not None and getattr(module, "_held_threads", None) is None:
        held = torch_threads(threads)
        held.__enter__()
        module._held_threads = held


def release_threads(module: Any) -> None:
    """Restore the thread count :func:`hold_threads` changed (nothing when it did not)."""
    held = getattr(module, "_held_threads", None)
    if held is not None:
        module._held_threads = None
        held.__exit__(None, None, None)


__all__ = ["FUSED_ADAMW_DEVICES", "OptimizerFactory", "RECIPE_FIELDS", "RecipeModule", "SchedulerFactory",
           "TrainingRecipe", "hold_threads", "release_threads"]
