"""Reconstruction figures of selected heads, logged to MLflow during validation.

Glossary: B images, S image side, P patch side, G = S / P grid side, Q triangular patches.

Every ``every_n_epochs`` validation epochs the callback re-runs the module's AP-MAE
(:class:`apmae.lit_models.interfaces.ReconstructsPatterns`, e.g. ``LitAPMAE``) on a
fixed set of images from the first validation dataloader (the training
target) with a fixed mask, and logs

- one figure per selected head: original | visible input | predicted | combined,
  masked patches outlined, the masked-pixel MSE in the title
  (``figures/epoch_XXXX/head_L<layer>_H<head>.png``);
- a grid of a few heads across layers, one reconstruction per cell
  (``figures/epoch_XXXX/grid.png``).

The same images and masks are used at every epoch, so the figures of one run
show its progress, and two runs with the same data show the same heads.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TYPE_CHECKING

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only

from apmae.common.plotting import pyplot
from apmae.common.tracking import mlflow_runs
from apmae.model.net import masked_error
from apmae.lit_models.interfaces import ReconstructsPatterns, require

if TYPE_CHECKING:  # annotations only: the classes' modules import torch or transformers
    from apmae.model.net import APMAE


@dataclass
class HeadSample:
    """One attention image kept for figures."""

    image: torch.Tensor  # (1, S, S) scaled pattern
    layer: int
    head: int
    scenario: int


@dataclass
class Reconstruction:
    """Everything one figure shows, (B, 1, S, S) images and (B, G, G) masked-patch flags."""

    original: torch.Tensor
    visible: torch.Tensor
    predicted: torch.Tensor
    combined: torch.Tensor
    masked_patches: torch.Tensor
    mse: torch.Tensor  # (B,) masked valid-pixel MSE per image


def reconstruct_for_figures(net: APMAE, images: torch.Tensor, noise: torch.Tensor) -> Reconstruction:
    """Run ``net`` on (B, 1, S, S) ``images`` with a fixed mask and split what a figure shows."""
    out = net(images, noise=noise)
    zeros = torch.zeros_like(images)
    # Pixels covered by masked patches: reconstruct an all-zero image whose predictions are ones.
    covered = net.reconstruct(zeros, replace(out, pred=torch.ones_like(out.pred)))  # (B, 1, S, S)
    patch = net.config.patch_size
    masked_patches = torch.nn.functional.max_pool2d(covered, patch)[:, 0] > 0  # (B, G, G)
    error = masked_error(out.pred, out.patches, out.mask, out.valid, per_image=True)
    return Reconstruction(
        original=images,
        visible=images * (covered == 0),
        predicted=net.reconstruct(zeros, out),
        combined=net.reconstruct(images, out),
        masked_patches=masked_patches,
        mse=error.mse,
    )


def for_matplotlib(rec: Reconstruction) -> Reconstruction:
    """The same reconstruction on the CPU, images as float32 (numpy and matplotlib have no bfloat16)."""
    return Reconstruction(**{k: (v.float() if v.is_floating_point() else v).cpu() for k, v in rec.__dict__.items()})


class PatternFigures(Callback):
    """Logs reconstruction figures of fixed validation images every N validation epochs.

    Args:
        every_n_epochs: log at validation epochs 0, N, 2N, ... (sanity checks never log).
        num_heads: how many single-head figures (distinct layer/head pairs) to log.
        grid_layers: layers shown in the grid figure (spread over the layers seen).
        grid_heads: heads per layer in the grid figure.
        max_batches: validation batches searched for distinct heads on the first epoch.
        seed: seed of the fixed masks.
    """

    def __init__(
        self,
        *,
        every_n_epochs: int = 1,
        num_heads: int = 4,
        grid_layers: int = 4,
        grid_heads: int = 4,
        max_batches: int = 8,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if every_n_epochs < 1 or num_heads < 0 or grid_layers < 0 or grid_heads < 0 or max_batches < 1:
            raise ValueError(
                "every_n_epochs and max_batches must be >= 1, num_heads/grid_layers/grid_heads >= 0; "
                f"got {every_n_epochs}, {max_batches}, {num_heads}/{grid_layers}/{grid_heads}"
            )
        self.every_n_epochs = every_n_epochs
        self.num_heads = num_heads
        self.grid_layers = grid_layers
        self.grid_heads = grid_heads
        self.max_batches = max_batches
        self.seed = seed
        self._pool: dict[tuple[int, int], HeadSample] = {}
        self._epochs_seen = 0
        self.logged: list[str] = []  # artifact paths logged so far (also handy in tests)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Refuse a module without an AP-MAE to reconstruct with.

        Raises:
            TypeError: the module lacks :class:`apmae.lit_models.interfaces.ReconstructsPatterns`.
        """
        require(pl_module, ReconstructsPatterns, reader="PatternFigures",
                use="attach the callback to an apmae.lit_models.apmae_module.LitAPMAE run")

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking or dataloader_idx != 0 or batch_idx >= self.max_batches:
            return
        images = batch["images"].detach()
        for i in range(images.shape[0]):
            layer = int(batch["layer"][i]) if "layer" in batch else 0
            head = int(batch["head"][i]) if "head" in batch else len(self._pool)
            scenario = int(batch["scenario"][i]) if "scenario" in batch else -1
            self._pool.setdefault((layer, head), HeadSample(images[i].cpu().clone(), layer, head, scenario))

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        count = self._epochs_seen
        self._epochs_seen += 1
        if count % self.every_n_epochs == 0 and self._pool:
            self._log_figures(trainer, pl_module, trainer.current_epoch)

    def selected_heads(self) -> list[HeadSample]:
        """Single-head figures: the first ``num_heads`` distinct heads, spread over layers."""
        by_layer: dict[int, list[HeadSample]] = {}
        for key in sorted(self._pool):
            by_layer.setdefault(key[0], []).append(self._pool[key])
        chosen: list[HeadSample] = []
        rank = 0
        while len(chosen) < self.num_heads and any(rank < len(v) for v in by_layer.values()):
            chosen += [v[rank] for v in by_layer.values() if rank < len(v)]
            rank += 1
        return chosen[: self.num_heads]

    def grid_samples(self) -> list[list[HeadSample]]:
        """Rows of the grid figure: ``grid_layers`` layers spread evenly, ``grid_heads`` heads each."""
        layers = sorted({layer for layer, _ in self._pool})
        if not layers or not self.grid_layers or not self.grid_heads:
            return []
        step = max(1, len(layers) // self.grid_layers)
        rows = []
        for layer in layers[::step][: self.grid_layers]:
            heads = sorted(h for l, h in self._pool if l == layer)[: self.grid_heads]
            rows.append([self._pool[(layer, h)] for h in heads])
        return rows

    @rank_zero_only
    def _log_figures(self, trainer: Trainer, pl_module: LightningModule, epoch: int) -> None:
        net = pl_module.net
        folder = f"figures/epoch_{epoch:04d}"
        heads = self.selected_heads()
        rows = self.grid_samples()
        samples = heads + [s for row in rows for s in row]
        images = torch.stack([s.image for s in samples]).to(pl_module.device, torch.float32)
        noise = torch.rand(len(samples), net.num_patches, generator=torch.Generator().manual_seed(self.seed))
        was_training = net.training
        net.eval()
        try:
            # under the run's precision (e.g. bf16-mixed autocast), so figures show what validation scores
            with torch.no_grad(), trainer.precision_plugin.forward_context():
                rec = reconstruct_for_figures(net, images, noise.to(pl_module.device))
        finally:
            net.train(was_training)
        rec = for_matplotlib(rec)
        for i, sample in enumerate(heads):
            fig = head_figure(rec, i, title=f"layer {sample.layer} head {sample.head} | epoch {epoch}")
            self._save(trainer, fig, f"{folder}/head_L{sample.layer}_H{sample.head}.png")
        if rows:
            fig = grid_figure(rec, rows, offset=len(heads), epoch=epoch)
            self._save(trainer, fig, f"{folder}/grid.png")

    def _save(self, trainer: Trainer, fig: Any, artifact: str) -> None:
        plt = pyplot()
        runs = mlflow_runs(trainer.loggers)
        for client, run_id in runs:
            client.log_figure(run_id, fig, artifact)
        if not runs:  # no MLflow logger: keep the figures next to the run's other outputs
            path = Path(trainer.default_root_dir) / artifact
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path)
        plt.close(fig)
        self.logged.append(artifact)


def _outline(ax: Any, masked: torch.Tensor, patch: int) -> None:
    """Draw a rectangle around every masked patch of a (G, G) flag grid."""
    from matplotlib.patches import Rectangle  # after pyplot(): the backend is chosen first

    for row, col in masked.nonzero().tolist():
        ax.add_patch(Rectangle((col * patch - 0.5, row * patch - 0.5), patch, patch,
                               fill=False, edgecolor="red", linewidth=0.8))


def head_figure(rec: Reconstruction, i: int, *, title: str) -> Any:
    """Figure of image ``i``: original | visible input | predicted | combined."""
    plt = pyplot()

    patch = rec.original.shape[-1] // rec.masked_patches.shape[-1]
    panels = [("original", rec.original), ("visible input", rec.visible),
              ("predicted", rec.predicted), ("combined", rec.combined)]
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.6))
    for ax, (name, images) in zip(axes, panels):
        ax.imshow(images[i, 0].numpy(), cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
        _outline(ax, rec.masked_patches[i], patch)
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{title} | masked MSE {float(rec.mse[i]):.4f}")
    fig.tight_layout()
    return fig


def grid_figure(rec: Reconstruction, rows: list[list[HeadSample]], *, offset: int, epoch: int) -> Any:
    """Grid of combined reconstructions: one row per layer, one column per head."""
    plt = pyplot()

    patch = rec.original.shape[-1] // rec.masked_patches.shape[-1]
    cols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.6 * cols, 2.6 * len(rows)), squeeze=False)
    index = offset
    for r, row in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(row):
                ax.axis("off")
                continue
            ax.imshow(rec.combined[index, 0].numpy(), cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
            _outline(ax, rec.masked_patches[index], patch)
            ax.set_title(f"L{row[c].layer} H{row[c].head} mse {float(rec.mse[index]):.3f}", fontsize=8)
            index += 1
    fig.suptitle(f"AP-MAE reconstructions across layers | epoch {epoch}")
    fig.tight_layout()
    return fig


__all__ = ["PatternFigures", "Reconstruction", "HeadSample", "reconstruct_for_figures", "for_matplotlib", "head_figure",
           "grid_figure"]
