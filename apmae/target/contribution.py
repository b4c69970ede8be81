"""Contribution weights: how much each key adds to a head's output, not only how much it is attended.

Glossary: B batch, S tokens (i query, j and k keys), L layers, H query heads,
hd head width, D model width.

For head h, query i and key j, with the key's values v_j (hd,) and the
head's output projection W_O[h] (D, hd), the head writes
``o_i = sum_j a_ij f_j`` with ``f_j = W_O[h] v_j`` into the residual stream.

- signed contribution ``c_ij = a_ij <f_j, o_i> / ||o_i||^2``: the part of
  o_i along itself that key j supplies; each row sums to exactly 1, entries
  may be negative (a key pulling against the output);
- norm-based contribution ``n_ij = a_ij ||f_j|| / sum_k a_ik ||f_k||``
  (Kobayashi et al., 2020): non-negative, each row sums to 1.

Both are computed in the head's own hd-dim space with the Gram matrix
``G = W_O[h]^T W_O[h]`` (hd, hd): ``<f_j, o_i> = v_j^T G z_i`` with
``z_i = sum_j a_ij v_j``, so no (B, H, S, D) tensor is built. A row whose
output is exactly zero (signed) or whose attended values all project to zero
(norm-based) has no contributing key and is all zeros. The output
projection's bias is the same for every key and belongs to no key.

The values come from a forward hook on each layer's ``v_proj`` in the same
batched forward pass that returns the attention patterns; key/value heads are
expanded to query heads as the model itself does (see
:mod:`apmae.target.layout`).
"""

from __future__ import annotations

import contextlib
import inspect
import threading
from dataclasses import dataclass
from typing import Any, Iterator, TYPE_CHECKING

import torch

from apmae.target.access import TargetOutput, run_batch
from apmae.target.layout import AttentionLayer, attention_layers

if TYPE_CHECKING:  # annotations only: the classes' modules import torch or transformers
    from apmae.target.access import Target


@dataclass
class ContributionWeights:
    """Contribution weights of one layer's heads, (B, H, S, S) float32 each."""

    signed: torch.Tensor
    norm: torch.Tensor


def contribution_weights(attention: torch.Tensor, values: torch.Tensor, w_o: torch.Tensor) -> ContributionWeights:
    """Signed and norm-based contributions from attention (B, H, S, S), values (B, H, S, hd), W_O (H, D, hd).

    Raises:
        ValueError: shapes that do not fit together.
    """
    return ContributionWeights(signed=signed_contribution(attention, values, w_o),
                               norm=norm_contribution(attention, values, w_o))


def _prepared(attention: torch.Tensor, values: torch.Tensor,
              w_o: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float32 attention, values and the Gram matrices G = W_O[h]^T W_O[h] (H, hd, hd), shapes checked."""
    b, h, s, _ = attention.shape
    if values.shape[:3] != (b, h, s) or w_o.shape[0] != h or w_o.shape[2] != values.shape[3]:
        raise ValueError(f"attention {tuple(attention.shape)}, values {tuple(values.shape)} and W_O "
                         f"{tuple(w_o.shape)} do not fit: expected (B, H, S, S), (B, H, S, hd), (H, D, hd)")
    w = w_o.float()
    return attention.float(), values.float(), torch.einsum("hdk,hdl->hkl", w, w)


def signed_contribution(attention: torch.Tensor, values: torch.Tensor, w_o: torch.Tensor) -> torch.Tensor:
    """c_ij = a_ij <f_j, o_i> / ||o_i||^2, (B, H, S, S); arguments as :func:`contribution_weights`."""
    a, v, gram = _prepared(attention, values, w_o)
    z = a @ v  # (B, H, S, hd), the head's output before W_O
    out_sq = (z * torch.einsum("bhik,hkl->bhil", z, gram)).sum(-1)  # (B, H, S) = ||o_i||^2
    along = z @ torch.einsum("bhjk,hkl->bhjl", v, gram).transpose(-1, -2)  # (B, H, S, S) = <f_j, o_i>
    return _divide_rows(a * along, out_sq)


def norm_contribution(attention: torch.Tensor, values: torch.Tensor, w_o: torch.Tensor) -> torch.Tensor:
    """n_ij = a_ij ||f_j|| / sum_k a_ik ||f_k||, (B, H, S, S); arguments as :func:`contribution_weights`."""
    a, v, gram = _prepared(attention, values, w_o)
    f_norm = (v * torch.einsum("bhjk,hkl->bhjl", v, gram)).sum(-1).clamp_min(0).sqrt()  # (B, H, S) = ||f_j||
    weighted = a * f_norm[:, :, None, :]  # (B, H, S, S)
    return _divide_rows(weighted, weighted.sum(-1))


def _divide_rows(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator (..., S, S) / denominator (..., S) per row; rows with a zero denominator become zeros."""
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return torch.where((denominator > 0)[..., None], numerator / safe[..., None], torch.zeros_like(numerator))


@contextlib.contextmanager
def capture_values(layers: list[AttentionLayer]) -> Iterator[dict[int, torch.Tensor]]:
    """Forward hooks on every layer's ``v_proj``; yields ``{layer: output (B, S, Hkv*hd)}`` of the last forward.

    Only forward passes of the calling thread are captured: extraction runs
    batches of one model in several threads at once, each with its own hooks.
    The hooks are removed on exit, also when the block raises.
    """
    captured: dict[int, torch.Tensor] = {}
    handles = []
    owner = threading.get_ident()

    def hook_for(index: int):
        def hook(module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
            if threading.get_ident() == owner:
                captured[index] = output.detach()
        return hook

    try:
        for layer in layers:
            handles.append(layer.v_proj.register_forward_hook(hook_for(layer.index)))
        yield captured
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class ContributionBatch:
    """Attention and contribution weights of every head from one forward pass, (B, L, H, S, S) float32."""

    attention: torch.Tensor
    signed: torch.Tensor
    norm: torch.Tensor


@torch.no_grad()
def run_contributions(target: Target, input_ids: torch.Tensor) -> ContributionBatch:
    """One batched forward pass of ``target`` (:class:`apmae.target.Target`) over ``input_ids`` (B, S).

    Raises:
        ValueError: the model's attention modules are not recognised or it returned no attention patterns.
    """
    model = target.model
    layers = attention_layers(model)
    with capture_values(layers) as values:
        out = model(input_ids=input_ids.to(target.device, torch.long), output_attentions=True, use_cache=False,
                    **_logits_kwargs(model))
    if not out.attentions:
        raise ValueError(f"target {target.name!r} returned no attention patterns; load it with eager attention")
    per_layer = [contribution_weights(a, layer.query_head_values(values[layer.index]), layer.output_weight())
                 for a, layer in zip(out.attentions, layers)]
    return ContributionBatch(attention=torch.stack([a.float() for a in out.attentions], dim=1),
                             signed=torch.stack([w.signed for w in per_layer], dim=1),
                             norm=torch.stack([w.norm for w in per_layer], dim=1))


@torch.inference_mode()
def run_batch_contributions(target: Target, input_ids: torch.Tensor, label_first: torch.Tensor, *,
                            middle_pos: torch.Tensor | None = None) -> TargetOutput:
    """:func:`apmae.target.access.run_batch` with each head's norm-based contribution weights as its patterns.

    Returns a :class:`~apmae.target.TargetOutput` whose ``attentions`` are the
    weights n_ij (B, L, H, S, S) float32; the first-token outcome is that of the
    same forward pass, so a contribution cache is row for row comparable with
    the attention cache of the same scenarios.

    Raises:
        ValueError: the model's attention modules are not recognised or it returned no attention patterns.
    """
    layers = attention_layers(target.model)
    with capture_values(layers) as values:
        out = run_batch(target, input_ids, label_first, middle_pos=middle_pos)
    weights = [norm_contribution(out.attentions[:, layer.index], layer.query_head_values(values[layer.index]),
                                 layer.output_weight()) for layer in layers]  # L x (B, H, S, S)
    out.attentions = torch.stack(weights, dim=1)  # (B, L, H, S, S) float32
    return out


def _logits_kwargs(model: Any) -> dict[str, Any]:
    # only the patterns are needed: the lm_head over all S positions would cost more than the layers
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


def sink_share(weights: torch.Tensor) -> torch.Tensor:
    """(..., S, S) -> (...): mean over queries i >= 1 of the weight on key 0 (query 0 sees only key 0)."""
    return weights[..., 1:, 0].mean(-1)


def row_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(..., S, S) twice -> (...): mean over queries i >= 1 of sum_j |a_ij - b_ij| (0 = same, 2 = disjoint)."""
    return (a[..., 1:, :] - b[..., 1:, :]).abs().sum(-1).mean(-1)


@dataclass
class ContributionSummary:
    """Per-scenario, per-head figures of one batch, (B, L, H) float32 numpy."""

    sink_attention: Any
    sink_norm: Any
    sink_signed: Any
    attention_vs_norm_l1: Any


def summarize_contributions(batch: ContributionBatch) -> ContributionSummary:
    """Sink shares under the three weightings and the attention-vs-norm row distance of each head."""
    return ContributionSummary(
        sink_attention=sink_share(batch.attention).cpu().numpy(),
        sink_norm=sink_share(batch.norm).cpu().numpy(),
        sink_signed=sink_share(batch.signed).cpu().numpy(),
        attention_vs_norm_l1=row_l1(batch.attention, batch.norm).cpu().numpy(),
    )
