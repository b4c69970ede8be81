"""Trivial reconstructions AP-MAE's masked-patch error is judged against (plain PyTorch).

Glossary: B batch, G grid side, Q = G (G + 1) / 2 lower-triangular patches,
P2 pixels per patch.

- mean pattern: every masked patch predicted by the same patch of the mean
  training image (``LitAPMAE.baseline_patches``);
- neighbours (:func:`neighbour_patches`): the mean pattern's patch plus how this
  image departs from the mean pattern in the *visible* patches that share the
  masked patch's row band (the same query tokens) or column band (the same key
  tokens), pixel by pixel. Attention patterns are mostly vertical stripes (keys
  every query attends to), horizontal bands (queries that attend alike) and the
  diagonal: the mean keeps each position's typical structure (a diagonal patch
  stays diagonal), the neighbours' departures carry this image's stripes across
  the hidden patch. A pixel with no visible neighbour keeps the mean.

On the demo's validation patterns (target-a, half the patches masked) the mean
pattern scores 0.0185, the neighbours' raw mean (without the reference) 0.0240,
this baseline 0.0152.
"""

from __future__ import annotations

import torch

from apmae.common.triangle import lower_triangle


def band_neighbours(grid: int) -> torch.Tensor:
    """(Q, Q) float: 1 where two distinct triangular patches share a grid row or column."""
    rows, cols = (torch.from_numpy(a.copy()) for a in lower_triangle(grid))
    same = (rows[:, None] == rows[None, :]) | (cols[:, None] == cols[None, :])
    return (same & ~torch.eye(len(rows), dtype=torch.bool)).float()


def neighbour_patches(
    patches: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor, reference: torch.Tensor, neighbours: torch.Tensor
) -> torch.Tensor:
    """(B, Q, P2) prediction of every patch: reference + its visible band neighbours' mean departure.

    ``patches`` (B, Q, P2) the images' patches; ``mask`` (B, Q), 1 = masked (hidden
    from the encoder, so never used as a neighbour); ``valid`` (Q, P2) pixels on or
    below the diagonal (the only ones averaged); ``reference`` (1 or B, Q, P2), the
    mean training pattern's patches, kept where a pixel has no visible valid
    neighbour; ``neighbours`` from :func:`band_neighbours`. Computed in float32.
    """
    reference = reference.float().expand_as(patches)
    seen = (1.0 - mask.float()).unsqueeze(-1) * valid.float()  # (B, Q, P2): visible valid pixels
    n = neighbours.to(patches.device, torch.float32)
    departure = torch.einsum("qk,bkp->bqp", n, seen * (patches.float() - reference))
    count = torch.einsum("qk,bkp->bqp", n, seen)
    return reference + departure / count.clamp_min(1.0)
