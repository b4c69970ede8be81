"""Trivial reconstructions AP-MAE's masked-patch error is judged against (plain PyTorch).

Glossary: B batch, G grid side, Q = G (G + 1) / 2 lower-triangular patches,
P2 pixels per patch.

- mean pattern: every masked patch predicted by the same patch of the mean
  training image (``LitAPMAE.baseline_patches``);
- neighbours (:func:`neighbour_patches`): every masked patch predicted from the
  *visible* patches of the same image that share its row band (the same query
  tokens) or its column band (the same key tokens), pixel by pixel. Attention
  patterns are mostly vertical stripes (keys every query attends to), horizontal
  bands (queries that attend alike) and the diagonal, so this baseline copies the
  stripes that cross the hidden patch from what the encoder is shown. A pixel
  with no visible neighbour in either band takes the fallback (the mean pattern).
"""

from __future__ import annotations

import torch

from apmae.triangle import lower_triangle


def band_neighbours(grid: int) -> torch.Tensor:
    """(Q, Q) float: 1 where two distinct triangular patches share a grid row or column."""
    rows, cols = (torch.from_numpy(a.copy()) for a in lower_triangle(grid))
    same = (rows[:, None] == rows[None, :]) | (cols[:, None] == cols[None, :])
    return (same & ~torch.eye(len(rows), dtype=torch.bool)).float()


def neighbour_patches(
    patches: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor, fallback: torch.Tensor, neighbours: torch.Tensor
) -> torch.Tensor:
    """(B, Q, P2) prediction of every patch from the visible patches of its row and column bands.

    ``patches`` (B, Q, P2) the images' patches; ``mask`` (B, Q), 1 = masked (hidden
    from the encoder, so never used as a neighbour); ``valid`` (Q, P2) pixels on or
    below the diagonal (the only ones averaged); ``fallback`` (1 or B, Q, P2) for
    pixels with no visible valid neighbour; ``neighbours`` from :func:`band_neighbours`.
    Computed in float32.
    """
    seen = (1.0 - mask.float()).unsqueeze(-1) * valid.float()  # (B, Q, P2): visible valid pixels
    n = neighbours.to(patches.device, torch.float32)
    total = torch.einsum("qk,bkp->bqp", n, seen * patches.float())
    count = torch.einsum("qk,bkp->bqp", n, seen)
    mean = total / count.clamp_min(1.0)
    return torch.where(count > 0, mean, fallback.float().expand_as(mean))
