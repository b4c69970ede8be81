"""A training variant of AP-MAE that puts weight on the scored query's patch row.

Glossary: B images, S pattern side, P patch side, G = S / P grid side, Q = G (G + 1) / 2
triangular patches, P2 pixels per patch.

The correctness probe reads the scored query's attention row (:mod:`apmae.encodings.readouts`).
For mined causal scenarios that query is the last token, so its row lies in the bottom patch
row of the grid: patches (G - 1, 0) .. (G - 1, G - 1), the last G of the row-major triangle.
Plain MAE training masks it as often as any other patch and weighs it like any other.
:class:`RowEmphasis` changes the two, for training only (validation keeps the same masks
and the same unweighted error, so runs with and without it compare on the same pixels):

- ``mask_probability``: the share of training images whose bottom row is masked whole (the rest of
  the mask is drawn as usual), so the encoder must carry what predicts that row;
- ``loss_weight``: the weight of the bottom row's masked pixels in the loss (1: plain MAE).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from apmae.common.triangle import triangle_size


@dataclass(frozen=True)
class RowEmphasis:
    """Bottom-row masking and loss weight of AP-MAE training (the defaults are plain MAE)."""

    mask_probability: float = 0.0
    loss_weight: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.mask_probability <= 1.0:
            raise ValueError(f"row_emphasis.mask_probability must be in [0, 1], got {self.mask_probability}")
        if not self.loss_weight > 0.0:
            raise ValueError(f"row_emphasis.loss_weight must be > 0, got {self.loss_weight}")

    @property
    def active(self) -> bool:
        return self.mask_probability > 0.0 or self.loss_weight != 1.0

    def check(self, grid: int, masked: int) -> None:
        """Refuse a grid whose bottom row (G patches) does not fit in the ``masked`` patches of one image."""
        if self.mask_probability > 0.0 and grid > masked:
            raise ValueError(f"row_emphasis.mask_probability > 0 masks the whole bottom row ({grid} patches), "
                             f"but mask_ratio hides only {masked} of {triangle_size(grid)} patches: "
                             "raise mask_ratio or set mask_probability: 0")

    def noise(self, batch: int, grid: int, *, device: Any = None, generator: torch.Generator | None = None
              ) -> torch.Tensor:
        """(B, Q) masking noise (highest values are masked): the bottom row raised above every other
        patch in a ``mask_probability`` share of the images."""
        q = triangle_size(grid)
        noise = torch.rand(batch, q, generator=generator)
        chosen = torch.rand(batch, generator=generator) < self.mask_probability  # (B,)
        noise[:, q - grid:] += 2.0 * chosen[:, None].float()  # rand < 1: +2 puts them above every other patch
        return noise.to(device) if device is not None else noise

    def patch_weights(self, grid: int, *, device: Any = None) -> torch.Tensor:
        """(Q,) loss weight of each triangular patch: ``loss_weight`` on the bottom row, 1 elsewhere."""
        q = triangle_size(grid)
        weights = torch.ones(q, device=device)
        weights[q - grid:] = self.loss_weight
        return weights

    def loss(self, pred: torch.Tensor, patches: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor,
             grid: int) -> torch.Tensor:
        """() weighted mean squared error over the masked patches' valid pixels, in float32.

        ``pred``/``patches`` (B, Q, P2), ``mask`` (B, Q) 1 = masked, ``valid`` (Q, P2). With
        ``loss_weight`` 1 it equals :func:`apmae.model.net.masked_error`'s mean.
        """
        weights = self.patch_weights(grid, device=pred.device)  # (Q,)
        weight = (mask.float() * weights).unsqueeze(-1) * valid.float()  # (B, Q, P2)
        squared = (pred.float() - patches.float()).square() * weight
        return squared.sum() / weight.sum().clamp_min(1.0)


__all__ = ["RowEmphasis"]
