"""The neighbour baseline on hand-made patch grids with hand-computed answers."""

from __future__ import annotations

import torch

from apmae.model.baselines import band_neighbours, neighbour_patches
from apmae.model.patches import valid_pixels


def test_band_neighbours_of_a_two_by_two_grid():
    # triangular patches row-major: 0 = (0, 0), 1 = (1, 0), 2 = (1, 1)
    expected = torch.tensor([[0, 1, 0],   # (0, 0) shares column 0 with (1, 0)
                             [1, 0, 1],   # (1, 0) shares column 0 with (0, 0) and row 1 with (1, 1)
                             [0, 1, 0]], dtype=torch.float32)
    assert torch.equal(band_neighbours(2), expected)
    three = band_neighbours(3)  # (2, 1) shares row 2 with (2, 0), (2, 2) and column 1 with (1, 1)
    rows_cols = [(0, 0), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2)]
    assert {rows_cols[k] for k in torch.nonzero(three[4]).flatten().tolist()} == {(2, 0), (2, 2), (1, 1)}
    assert torch.equal(three, three.T) and three.diagonal().sum() == 0


def test_masked_patches_are_predicted_from_visible_band_neighbours_only():
    patches = torch.tensor([1.0, 2.0, 4.0]).view(1, 3, 1)  # one-pixel patches a, b, c
    valid = torch.ones(3, 1)
    fallback = torch.full((1, 3, 1), -1.0)  # a constant reference: departures from it average like values
    near = band_neighbours(2)
    # c hidden: its only band neighbour is b -> 2
    pred = neighbour_patches(patches, torch.tensor([[0.0, 0.0, 1.0]]), valid, fallback, near)
    assert pred[0, 2, 0] == 2.0
    # a and b hidden: b sees only c -> 4; a's only neighbour b is hidden -> fallback
    pred = neighbour_patches(patches, torch.tensor([[1.0, 1.0, 0.0]]), valid, fallback, near)
    assert pred[0, 1, 0] == 4.0 and pred[0, 0, 0] == -1.0
    # b alone hidden: mean of a and c -> 2.5
    pred = neighbour_patches(patches, torch.tensor([[0.0, 1.0, 0.0]]), valid, fallback, near)
    assert pred[0, 1, 0] == 2.5


def test_pixels_above_the_diagonal_of_a_neighbour_are_never_averaged():
    # grid 2, patch side 2: patch 2 = (1, 1) is a diagonal patch whose top-right pixel is invalid
    valid = valid_pixels(2, 2).float()
    assert valid[2].tolist() == [1.0, 0.0, 1.0, 1.0]
    patches = torch.zeros(1, 3, 4)
    patches[0, 0] = torch.tensor([3.0, 0.0, 5.0, 7.0])  # (0, 0), also diagonal
    patches[0, 2] = torch.tensor([1.0, 100.0, 1.0, 1.0])  # 100 sits above the diagonal
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # (1, 0) hidden, (1, 1) visible, (0, 0) hidden
    pred = neighbour_patches(patches, mask, valid, torch.zeros(1, 3, 4), band_neighbours(2))
    # (1, 0): only (1, 1) is visible; its invalid pixel falls back to the fallback (0), not 100
    assert pred[0, 1].tolist() == [1.0, 0.0, 1.0, 1.0]
    # two visible neighbours average pixel by pixel over the ones valid in each
    mask = torch.tensor([[0.0, 1.0, 0.0]])
    pred = neighbour_patches(patches, mask, valid, torch.zeros(1, 3, 4), band_neighbours(2))
    assert pred[0, 1].tolist() == [2.0, 0.0, 3.0, 4.0]


def test_the_reference_keeps_each_position_structure_and_neighbours_add_their_departure():
    reference = torch.tensor([10.0, 20.0, 30.0]).view(1, 3, 1)  # the mean pattern differs per position
    patches = torch.tensor([11.0, 22.0, 33.0]).view(1, 3, 1)  # this image: +1, +2, +3 above it
    valid, near = torch.ones(3, 1), band_neighbours(2)
    pred = neighbour_patches(patches, torch.tensor([[0.0, 0.0, 1.0]]), valid, reference, near)
    assert pred[0, 2, 0] == 32.0  # (1, 1): its reference 30 plus the departure +2 of (1, 0)
    pred = neighbour_patches(patches, torch.tensor([[0.0, 1.0, 0.0]]), valid, reference, near)
    assert pred[0, 1, 0] == 22.0  # (1, 0): 20 plus the mean departure of (0, 0) and (1, 1), +2
