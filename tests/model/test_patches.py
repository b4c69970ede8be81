"""Triangular patch geometry: index order, validity mask, exact patchify round trips."""

from __future__ import annotations

import pytest
import torch

from apmae.model.patches import patchify, unpatchify, valid_pixels
from apmae.common.triangle import lower_triangle_index


@pytest.mark.parametrize(("seq_len", "patch_size"), [(8, 2), (32, 8), (48, 16), (64, 8), (256, 32)])
def test_patchify_matches_explicit_slicing(seq_len: int, patch_size: int) -> None:
    grid = seq_len // patch_size
    images = torch.randn(2, 1, seq_len, seq_len)
    patches = patchify(images, patch_size)
    assert patches.shape == (2, grid * (grid + 1) // 2, patch_size**2)
    t = 0
    for row in range(grid):
        for col in range(row + 1):  # row-major over the lower triangle
            block = images[:, 0, row * patch_size:(row + 1) * patch_size, col * patch_size:(col + 1) * patch_size]
            assert torch.equal(patches[:, t], block.reshape(2, -1))
            t += 1


@pytest.mark.parametrize(("seq_len", "patch_size"), [(8, 2), (48, 16), (64, 8)])
def test_unpatchify_round_trip_is_exact(seq_len: int, patch_size: int) -> None:
    images = torch.randn(3, 1, seq_len, seq_len)
    rebuilt = unpatchify(patchify(images, patch_size), seq_len, patch_size)
    # every pixel of a lower-triangular patch comes back bit for bit, upper patches are 0
    grid = seq_len // patch_size
    lower_patches = torch.ones(grid, grid).tril().repeat_interleave(patch_size, 0).repeat_interleave(patch_size, 1)
    assert torch.equal(rebuilt, images * lower_patches)
    causal = images.tril()
    assert torch.equal(unpatchify(patchify(causal, patch_size), seq_len, patch_size), causal)


def test_valid_pixels_are_exactly_the_causal_triangle() -> None:
    seq_len, patch_size = 24, 4
    grid = seq_len // patch_size
    valid = valid_pixels(grid, patch_size)
    assert valid.shape == (21, patch_size**2)  # 6 x 6 grid: 6 + 5 + ... + 1 triangular patches
    assert int((~valid).sum()) == grid * patch_size * (patch_size - 1) // 2
    as_image = unpatchify(valid.float().unsqueeze(0), seq_len, patch_size)[0, 0]
    assert torch.equal(as_image, torch.ones(seq_len, seq_len).tril())


def test_triangle_index_and_errors() -> None:
    assert lower_triangle_index(3).tolist() == [0, 3, 4, 6, 7, 8]
    with pytest.raises(ValueError, match="multiple of patch_size"):
        patchify(torch.zeros(1, 1, 10, 10), 4)
    with pytest.raises(ValueError, match=r"\(B, 1, S, S\)"):
        patchify(torch.zeros(1, 2, 8, 8), 4)
    with pytest.raises(ValueError, match="patches must be"):
        unpatchify(torch.zeros(1, 5, 16), 8, 4)
