"""A correctness probe over per-head features, and the head importance of its prediction.

Glossary: B scenarios, L layers, H query heads, F features per head (an AP-MAE
encoding of width D, 2D for CLS + mean, or a few pattern statistics),
E extra per-scenario features (e.g. the target's own confidence), K hidden width.

The probe is additive over heads: every head's features, plus a learned
embedding of its (layer, head) position, go through one shared small network
to a scalar, and the logit of "the target's completion is correct" is the sum
of those scalars (plus a linear term in the extra features)::

    z_lh  = W2 gelu(W1 norm(x_lh) + e_lh)        one scalar per head
    logit = sum_lh z_lh + v . extra + b

The shared network keeps the parameter count small next to a few hundred
training scenarios, the position embedding lets each head read its features
its own way, and additivity makes a head's share of the prediction directly
visible: replacing one head's features by their training mean changes the
logit by exactly that head's term (:func:`mean_replacement_importance`).
:func:`integrated_gradients_importance` is a second opinion that also covers
non-additive probes.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn


class HeadProbe(nn.Module):
    """P(correct) from (B, L, H, F) per-head features and optional (B, E) extra features.

    Args:
        n_layers: L of the target model.
        n_heads: H (query heads) of the target model.
        in_dim: F, features per head.
        hidden: K, width of the shared per-head network.
        extra_dim: E, per-scenario features added linearly to the logit (0 = none).
        dropout: dropout on the per-head hidden features while training.
        norm: LayerNorm each head's features first (right for embeddings, whose dimensions share
            one scale; wrong for a few heterogeneous statistics, which should come standardised
            per feature instead: a LayerNorm across them mixes entropy with distances).
    """

    def __init__(self, *, n_layers: int, n_heads: int, in_dim: int, hidden: int = 64, extra_dim: int = 0,
                 dropout: float = 0.1, norm: bool = True) -> None:
        super().__init__()
        for name, value in (("n_layers", n_layers), ("n_heads", n_heads), ("in_dim", in_dim), ("hidden", hidden)):
            if value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if extra_dim < 0 or not 0.0 <= dropout < 1.0:
            raise ValueError(f"extra_dim must be >= 0 and dropout in [0, 1), got {extra_dim} and {dropout}")
        self.n_layers, self.n_heads, self.in_dim, self.extra_dim = n_layers, n_heads, in_dim, extra_dim
        self.norm = nn.LayerNorm(in_dim) if norm else nn.Identity()
        self.embed = nn.Linear(in_dim, hidden)
        self.position = nn.Parameter(torch.zeros(n_layers * n_heads, hidden))
        nn.init.normal_(self.position, std=0.02)
        self.drop = nn.Dropout(dropout)
        self.score = nn.Linear(hidden, 1)
        # zero read-out: the logit starts at 0 however many heads are summed (720 for StarCoder2-3B)
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)
        self.extra = nn.Linear(extra_dim, 1, bias=False) if extra_dim else None

    def head_terms(self, features: torch.Tensor) -> torch.Tensor:
        """Each head's additive term of the logit, (B, L, H, F) -> (B, L, H)."""
        expected = (self.n_layers, self.n_heads, self.in_dim)
        if features.ndim != 4 or tuple(features.shape[1:]) != expected:
            raise ValueError(f"features must be (B, {expected[0]}, {expected[1]}, {expected[2]}) for this probe, "
                             f"got {tuple(features.shape)}; the probe was built for another target or encoder")
        x = self.norm(features.float()).flatten(1, 2)  # (B, L*H, F)
        hidden = torch.nn.functional.gelu(self.embed(x) + self.position)  # (B, L*H, K)
        return self.score(self.drop(hidden))[..., 0].view(-1, self.n_layers, self.n_heads)

    def forward(self, features: torch.Tensor, extra: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits (B,) of "correct"."""
        logit = self.head_terms(features).sum(dim=(1, 2))  # (B,)
        if self.extra is not None:
            if extra is None or extra.shape[-1] != self.extra_dim:
                raise ValueError(f"this probe takes {self.extra_dim} extra features per scenario; pass extra (B, E)")
            logit = logit + self.extra(extra.float())[:, 0]
        return logit


@torch.no_grad()
def mean_replacement_importance(probe: nn.Module, features: torch.Tensor, reference: torch.Tensor,
                                extra: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Signed importance (L, H): mean over scenarios of logit(x) - logit(x with head lh := reference).

    ``features`` (B, L, H, F) are validation scenarios, ``reference`` (L, H, F)
    the training mean of each head's features. Positive: the head's actual
    pattern pushes the prediction toward "correct" relative to an average pattern.
    """
    was_training = probe.training
    probe.eval()
    try:
        base = probe(features, extra)  # (B,)
        _, n_layers, n_heads, _ = features.shape
        out = torch.zeros(n_layers, n_heads)
        for layer in range(n_layers):
            for head in range(n_heads):
                swapped = features.clone()
                swapped[:, layer, head] = reference[layer, head].to(features.dtype)
                out[layer, head] = (base - probe(swapped, extra)).mean().cpu()
    finally:
        probe.train(was_training)
    return out


def integrated_gradients_importance(probe: nn.Module, features: torch.Tensor, reference: torch.Tensor,
                                    extra: Optional[torch.Tensor] = None, *, steps: int = 32) -> torch.Tensor:
    """Signed importance (L, H): integrated gradients of the logit along reference -> features.

    Attributions of each head's features summed over F and averaged over the
    B scenarios; per scenario they add up to logit(x) - logit(reference) up to
    the Riemann error of ``steps`` midpoints.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    was_training = probe.training
    probe.eval()
    try:
        x = features.float()
        ref = reference.float().to(x.device).expand_as(x)  # (B, L, H, F)
        total = torch.zeros_like(x)
        for k in range(steps):
            alpha = (k + 0.5) / steps
            point = (ref + alpha * (x - ref)).detach().requires_grad_(True)
            with torch.enable_grad():
                (grad,) = torch.autograd.grad(probe(point, extra).sum(), point)
            total += grad
        return ((x - ref) * total / steps).sum(-1).mean(0).detach().cpu()  # (L, H)
    finally:
        probe.train(was_training)


__all__ = ["HeadProbe", "integrated_gradients_importance", "mean_replacement_importance"]
