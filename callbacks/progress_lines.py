"""Plain-text progress lines for runs whose output goes to a log or shares a terminal.

Lightning's progress bars redraw one terminal line; in a log file (``make
demo > demo.log``, a batch job) or a terminal shared by two trainings they turn
into noise. ``ProgressLines`` prints one line every ``every_n_steps`` optimizer
steps instead::

    [target-a] step 300/1100 (27%)  train/loss 2.314  3.1 steps/s  eta 4m18s

and one line after each validation with the ``val/`` metrics. Use it with
``trainer.enable_progress_bar: false``.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only


class ProgressLines(Callback):
    """Print ``[name] step k/N  <metric> ...  steps/s  eta`` every ``every_n_steps`` steps (rank 0 only)."""

    def __init__(self, every_n_steps: int = 100, name: str | None = None, metric: str = "train/loss") -> None:
        """
        Args:
            every_n_steps: optimizer steps between two lines.
            name: prefix of every line (default: the logger's run name, else the module's class name).
            metric: logged training metric shown on each line (omitted while it is not logged yet).
        """
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps={every_n_steps} must be >= 1")
        self.every_n_steps, self.name, self.metric = every_n_steps, name, metric
        self._start: float | None = None
        self._start_step = 0

    def _prefix(self, trainer: Trainer, module: LightningModule) -> str:
        if self.name:
            return self.name
        logger = trainer.logger
        run_name = getattr(logger, "_run_name", None) or getattr(logger, "name", None)
        return str(run_name or type(module).__name__)

    @rank_zero_only
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start, self._start_step = time.perf_counter(), trainer.global_step
        self._emit(f"[{self._prefix(trainer, pl_module)}] training for {_total_steps(trainer)} steps")

    @rank_zero_only
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step == 0 or step % self.every_n_steps or self._start is None:
            return
        total = _total_steps(trainer)
        elapsed = time.perf_counter() - self._start
        rate = (step - self._start_step) / elapsed if elapsed > 0 else 0.0
        parts = [f"[{self._prefix(trainer, pl_module)}] step {step}/{total} ({100 * step / max(total, 1):.0f}%)"]
        value = trainer.callback_metrics.get(self.metric)
        if value is not None:
            parts.append(f"{self.metric} {float(value):.3f}")
        if rate > 0:
            parts.append(f"{rate:.2f} steps/s  eta {_duration((total - step) / rate)}")
        self._emit("  ".join(parts))

    @rank_zero_only
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        values = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/") and v.numel() == 1}
        if values:
            shown = "  ".join(f"{k} {v:.4g}" for k, v in sorted(values.items()))
            self._emit(f"[{self._prefix(trainer, pl_module)}] step {trainer.global_step} validation: {shown}")

    @staticmethod
    def _emit(line: str) -> None:
        print(line, file=sys.stdout, flush=True)


def _total_steps(trainer: Trainer) -> int:
    """Optimizer steps of the whole fit: ``max_steps`` when set, else Lightning's estimate from the epochs."""
    return trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else trainer.estimated_stepping_batches


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
