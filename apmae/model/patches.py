"""Patch geometry of causal attention images: only the lower triangle carries data.

Glossary: B batch, S tokens (image side), P patch side, G = S / P grid side,
Q = G (G + 1) / 2 lower-triangular patches (diagonal included), P2 = P * P.

Triangular patches are numbered row-major over the grid's lower triangle,
(0, 0), (1, 0), (1, 1), (2, 0), ...: the order of :mod:`apmae.common.triangle`, the
same order the attention cache stores a pattern's values in.
"""

from __future__ import annotations

import torch
from einops import rearrange

from apmae.common.triangle import lower_triangle, lower_triangle_index, triangle_size


def grid_side(seq_len: int, patch_size: int) -> int:
    """G, the number of patches along one side; raises if P does not divide S."""
    if patch_size <= 0 or seq_len <= 0:
        raise ValueError(f"seq_len ({seq_len}) and patch_size ({patch_size}) must be positive")
    if seq_len % patch_size:
        raise ValueError(
            f"seq_len {seq_len} is not a multiple of patch_size {patch_size}; "
            f"choose a patch_size that divides {seq_len}"
        )
    return seq_len // patch_size


def _tri_index(grid: int, device: torch.device) -> torch.Tensor:
    """Flat grid index ``row * G + col`` (Q,) of every triangular patch, on ``device``."""
    return torch.tensor(lower_triangle_index(grid), device=device)


def valid_pixels(grid: int, patch_size: int) -> torch.Tensor:
    """(Q, P2) bool: False only for strictly-upper pixels of diagonal patches.

    Those pixels sit above the causal diagonal of the full image, so they are
    structurally zero and carry no information.
    """
    rows, cols = lower_triangle(grid)
    in_patch_lower = torch.tril(torch.ones(patch_size, patch_size, dtype=torch.bool)).flatten()  # (P2,)
    on_diagonal = torch.from_numpy(rows == cols).unsqueeze(1)  # (Q, 1)
    return ~on_diagonal | in_patch_lower.unsqueeze(0)  # (Q, P2)


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, 1, S, S) images -> (B, Q, P2) triangular patches, pixels row-major inside a patch."""
    if images.ndim != 4 or images.shape[1] != 1 or images.shape[2] != images.shape[3]:
        raise ValueError(f"images must be (B, 1, S, S), got shape {tuple(images.shape)}")
    grid = grid_side(images.shape[-1], patch_size)
    flat = rearrange(images, "b 1 (gr p) (gc q) -> b (gr gc) (p q)", p=patch_size, q=patch_size)
    return flat.index_select(1, _tri_index(grid, images.device))  # (B, Q, P2)


def unpatchify(patches: torch.Tensor, seq_len: int, patch_size: int) -> torch.Tensor:
    """(B, Q, P2) triangular patches -> (B, 1, S, S); upper-triangle patches are exact zeros.

    Pixels are copied as given: callers that want zeros above the diagonal
    inside diagonal patches multiply by :func:`valid_pixels` first.
    """
    grid = grid_side(seq_len, patch_size)
    expected = (triangle_size(grid), patch_size * patch_size)
    if patches.ndim != 3 or tuple(patches.shape[1:]) != expected:
        raise ValueError(f"patches must be (B, {expected[0]}, {expected[1]}), got shape {tuple(patches.shape)}")
    full = patches.new_zeros(patches.shape[0], grid * grid, expected[1])  # (B, G*G, P2)
    full.index_copy_(1, _tri_index(grid, patches.device), patches)
    return rearrange(full, "b (gr gc) (p q) -> b 1 (gr p) (gc q)", gr=grid, p=patch_size)
