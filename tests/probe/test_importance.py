"""The values behind head rankings: mean-replacement importance by hand, integrated gradients' completeness."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from apmae.probe.net import HeadProbe, integrated_gradients_importance, mean_replacement_importance


class LinearHeads(nn.Module):
    """logit = sum_lh w_lh . x_lh: every importance of it can be computed by hand."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)  # (L, H, F)

    def forward(self, features: torch.Tensor, extra=None) -> torch.Tensor:
        return (features * self.weight).sum(dim=(1, 2, 3))


class PairProduct(nn.Module):
    """A probe that is not additive over heads: logit = tanh(x_00 . x_01) + (x_10)^2 summed over F."""

    def forward(self, features: torch.Tensor, extra=None) -> torch.Tensor:
        return torch.tanh((features[:, 0, 0] * features[:, 0, 1]).sum(-1)) + (features[:, 1, 0] ** 2).sum(-1)


def test_mean_replacement_importance_by_hand() -> None:
    # B = 2 scenarios, L = 1, H = 2, F = 1; logit = 2 x_00 - x_01
    features = torch.tensor([[[[1.0], [2.0]]], [[[3.0], [4.0]]]])
    reference = torch.tensor([[[0.5], [1.0]]])
    probe = LinearHeads(torch.tensor([[[2.0], [-1.0]]]))
    importance = mean_replacement_importance(probe, features, reference)
    # head (0, 0): mean(2 (1 - 0.5), 2 (3 - 0.5)) = mean(1, 5) = 3; head (0, 1): mean(-(2 - 1), -(4 - 1)) = -2
    torch.testing.assert_close(importance, torch.tensor([[3.0, -2.0]]))


def test_mean_replacement_of_the_additive_probe_is_its_head_term_difference() -> None:
    """HeadProbe is additive: swapping one head changes the logit by exactly that head's term."""
    torch.manual_seed(0)
    probe = HeadProbe(n_layers=2, n_heads=3, in_dim=4, hidden=8, dropout=0.0)
    nn.init.normal_(probe.score.weight)
    features, reference = torch.randn(5, 2, 3, 4), torch.randn(2, 3, 4)
    expected = (probe.head_terms(features) - probe.head_terms(reference[None])).mean(0)
    torch.testing.assert_close(mean_replacement_importance(probe, features, reference), expected.detach())
    assert probe.training  # the function restores the mode it found


def test_integrated_gradients_are_exact_on_a_linear_probe_and_complete_on_others() -> None:
    torch.manual_seed(0)
    weight = torch.randn(2, 2, 3)
    features, reference = torch.randn(6, 2, 2, 3), torch.randn(2, 2, 3)
    linear = integrated_gradients_importance(LinearHeads(weight), features, reference, steps=1)
    torch.testing.assert_close(linear, (weight * (features - reference)).sum(-1).mean(0), rtol=1e-5, atol=1e-6)
    for probe in (PairProduct(), HeadProbe(n_layers=2, n_heads=2, in_dim=3, hidden=8, dropout=0.0)):
        if isinstance(probe, HeadProbe):
            nn.init.normal_(probe.score.weight)
        with torch.no_grad():
            difference = (probe(features) - probe(reference.expand_as(features))).mean()
        attributions = integrated_gradients_importance(probe, features, reference, steps=256)
        # completeness: the attributions add up to logit(x) - logit(reference), up to the midpoint rule's error
        assert float(attributions.sum()) == pytest.approx(float(difference), abs=1e-3)
        coarse = integrated_gradients_importance(probe, features, reference, steps=2)
        assert abs(float(coarse.sum() - difference)) >= abs(float(attributions.sum() - difference))


def test_integrated_gradients_of_a_head_the_probe_ignores_are_zero() -> None:
    features, reference = torch.randn(4, 2, 2, 3), torch.zeros(2, 2, 3)
    attributions = integrated_gradients_importance(PairProduct(), features, reference, steps=8)
    assert float(attributions[1, 1]) == 0.0  # PairProduct never reads head (1, 1)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        integrated_gradients_importance(PairProduct(), features, reference, steps=0)
