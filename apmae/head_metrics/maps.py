"""MAPS: what each attention head maps tokens to, from its parameters alone (Elhelo & Geva, 2024).

Glossary: L layers, H query heads, Hkv key/value heads, hd head width,
D model width, V vocabulary, n distinct source tokens, c source rows per
chunk, P pairs of a relation, R relations, T top pairs kept per head.

Head h of a layer has the OV circuit ``W_VO = W_V[kv(h)]^T W_O[h]^T`` (D, D)
in the row-vector convention (grouped-query attention: ``kv(h) = h // (H / Hkv)``).
A source token's embedding e (optionally passed through layer 0's MLP block)
is mapped onto the vocabulary as ``m = e W_VO (U * g)^T`` with U the
unembedding (V, D) and g the final norm's scale (D,); the value and output
biases are the same for every token and are left out. For a relation's
(source, target) pairs the head's *score* is the fraction of pairs whose
target is among the top-k entries of the source's row m (ties count as in),
its *suppression score* the same on -m.

No forward pass over data: only the parameters. W_VO has rank hd, so each
row is computed as ``(e W_V^T) (W_O^T (U * g)^T)``: (n, hd) times (hd, V),
in chunks of source rows sized so that a chunk's (c, V) block stays under
``chunk_elements``; no V x V (or D x D) matrix is ever built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from apmae.head_metrics.relations import Relation
from apmae.target.layout import attention_layers, vocabulary_ends

DEFAULT_CHUNK_ELEMENTS = 1 << 24  # 64 MiB of float32 per (c, V) block


@dataclass
class MapsResult:
    """Relation scores of every head and each head's strongest mappings."""

    relations: list[str]
    k: list[int]
    pairs: list[int]  # pairs per relation
    scores: np.ndarray  # (R, L, H) fraction of pairs in the top-k
    suppression: np.ndarray  # (R, L, H) fraction of pairs in the bottom-k
    top_pairs: np.ndarray  # (L, H, T, 2) int64 (source, target) of the largest entries of m over the sources
    top_values: np.ndarray  # (L, H, T) those entries


@dataclass
class _Plan:
    """The relations' pairs as (row of the distinct sources, target id)."""

    sources: torch.Tensor  # (n,) distinct source token ids
    rows: list[torch.Tensor]  # R x (P,) row into sources
    targets: list[torch.Tensor]  # R x (P,) target ids
    k: list[int]


def _plan(relations: Sequence[Relation], vocab_size: int, device: torch.device) -> _Plan:
    if not relations:
        raise ValueError("no relation to score; pass at least one relation with pairs")
    for r in relations:
        if len(r.pairs) == 0:
            raise ValueError(f"relation {r.name!r} has no (source, target) pair; drop it or give it pairs")
        if r.pairs.min() < 0 or r.pairs.max() >= vocab_size:
            raise ValueError(f"relation {r.name!r} has token ids outside the model's vocabulary 0..{vocab_size - 1}")
        if not 1 <= r.k <= vocab_size:
            raise ValueError(f"relation {r.name!r} has k={r.k}; use 1 <= k <= {vocab_size}")
    sources = np.unique(np.concatenate([r.pairs[:, 0] for r in relations]))
    as_tensor = lambda a: torch.as_tensor(a, dtype=torch.long, device=device)
    return _Plan(sources=as_tensor(sources), rows=[as_tensor(np.searchsorted(sources, r.pairs[:, 0])) for r in relations],
                 targets=[as_tensor(r.pairs[:, 1]) for r in relations], k=[int(r.k) for r in relations])


@torch.no_grad()
def maps_scores(*, embed: torch.Tensor, unembed: torch.Tensor, final_scale: torch.Tensor,
                value_weights: Sequence[torch.Tensor], output_weights: Sequence[torch.Tensor],
                relations: Sequence[Relation], first_mlp: Callable[[torch.Tensor], torch.Tensor] | None = None,
                chunk_elements: int = DEFAULT_CHUNK_ELEMENTS, top_n: int = 5) -> MapsResult:
    """MAPS scores of every head from its parameters.

    Args:
        embed: (V, D) input embeddings.
        unembed: (V, D) output embeddings.
        final_scale: (D,) the final norm's elementwise scale.
        value_weights: per layer (Hkv, hd, D), the key/value heads' rows of ``v_proj``.
        output_weights: per layer (H, D, hd), the query heads' columns of ``o_proj``.
        relations: the relations to score (each with at least one pair).
        first_mlp: maps source embeddings (n, D) through layer 0's MLP block first, when given.
        chunk_elements: largest (c, V) block computed at once.
        top_n: strongest (source, target) entries kept per head.

    Raises:
        ValueError: a relation without pairs or with ids outside the vocabulary, a bad k,
            mismatched layer lists, or chunk_elements < V.
    """
    vocab, _ = unembed.shape
    if len(value_weights) != len(output_weights) or not value_weights:
        raise ValueError(f"{len(value_weights)} value and {len(output_weights)} output weights; give one per layer")
    if chunk_elements < vocab or top_n < 1:
        raise ValueError(f"chunk_elements={chunk_elements} must be >= the vocabulary ({vocab}), top_n={top_n} >= 1")
    device = unembed.device
    plan = _plan(relations, vocab, device)
    sources = embed[plan.sources]  # (n, D)
    if first_mlp is not None:
        sources = first_mlp(sources)
    sources = sources.float()
    readout = unembed.float() * final_scale.float()  # (V, D)
    n_layers, n_heads = len(output_weights), output_weights[0].shape[0]
    hits = np.zeros((len(relations), 2, n_layers, n_heads))
    top_pairs = np.zeros((n_layers, n_heads, top_n, 2), dtype=np.int64)
    top_values = np.zeros((n_layers, n_heads, top_n))
    chunk = max(1, chunk_elements // vocab)
    for layer, (w_v, w_o) in enumerate(zip(value_weights, output_weights)):
        group = w_o.shape[0] // w_v.shape[0]
        for head in range(n_heads):
            left = sources @ w_v[head // group].float().T  # (n, hd)
            right = readout @ w_o[head].float()  # (V, hd)
            counts, pairs, values = _head_scores(left, right, plan, chunk, top_n)
            hits[:, :, layer, head] = counts
            top_pairs[layer, head], top_values[layer, head] = pairs, values
    n_pairs = np.array([len(r.pairs) for r in relations], dtype=np.float64)
    return MapsResult(relations=[r.name for r in relations], k=plan.k, pairs=[len(r.pairs) for r in relations],
                      scores=hits[:, 0] / n_pairs[:, None, None], suppression=hits[:, 1] / n_pairs[:, None, None],
                      top_pairs=top_pairs, top_values=top_values)


def _head_scores(left: torch.Tensor, right: torch.Tensor, plan: _Plan, chunk: int,
                 top_n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One head: (R, 2) hit / suppression counts, and its top_n (source, target) entries with their values."""
    k_max = max(plan.k)
    counts = np.zeros((len(plan.k), 2))
    best_values = torch.full((top_n,), -torch.inf, device=left.device)
    best_flat = torch.zeros(top_n, dtype=torch.long, device=left.device)  # row * V + target
    vocab = right.shape[0]
    for lo in range(0, left.shape[0], chunk):
        m = left[lo:lo + chunk] @ right.T  # (c, V)
        # each row's largest entries: the k-th for the hit test, and the candidates of the head's top_n
        high, high_at = m.topk(min(max(k_max, top_n), vocab), dim=-1)  # (c, max(k_max, top_n)) descending
        low = m.topk(min(k_max, vocab), dim=-1, largest=False).values  # (c, k_max) ascending
        for r, (rows, targets, k) in enumerate(zip(plan.rows, plan.targets, plan.k)):
            inside = (rows >= lo) & (rows < lo + m.shape[0])
            local, tgt = rows[inside] - lo, targets[inside]
            value = m[local, tgt]  # (P_chunk,)
            counts[r, 0] += int((value >= high[local, k - 1]).sum())
            counts[r, 1] += int((value <= low[local, k - 1]).sum())
        # the chunk's top_n entries are among its rows' top_n entries
        head = high[:, :top_n]
        values, at = head.flatten().topk(min(top_n, head.numel()))
        flat = (at // head.shape[1]) * vocab + high_at[:, :top_n].flatten()[at]
        merged_v = torch.cat([best_values, values])
        merged_i = torch.cat([best_flat, flat + lo * vocab])
        keep = merged_v.topk(top_n).indices
        best_values, best_flat = merged_v[keep], merged_i[keep]
    rows, targets = (best_flat // vocab), (best_flat % vocab)
    pairs = torch.stack([plan.sources[rows], targets], dim=-1)  # (T, 2)
    return counts, pairs.cpu().numpy(), best_values.cpu().numpy()


def model_maps(model: torch.nn.Module, relations: Sequence[Relation], *, first_mlp: bool = False,
               chunk_elements: int = DEFAULT_CHUNK_ELEMENTS, top_n: int = 5) -> MapsResult:
    """:func:`maps_scores` on a Hugging Face causal LM's own parameters.

    Raises:
        ValueError: unrecognised attention modules or embeddings (see
            :mod:`apmae.target.layout`), ``first_mlp`` without a layer-0
            MLP block, or bad relations.
    """
    layers = attention_layers(model)
    ends = vocabulary_ends(model)
    if first_mlp and ends.first_mlp is None:
        raise ValueError(f"{type(model).__name__} has no layers.0.mlp with a post_attention_layernorm; "
                         "set first_mlp=False")
    return maps_scores(embed=ends.embed, unembed=ends.unembed, final_scale=ends.final_scale,
                       value_weights=[layer.value_weight() for layer in layers],
                       output_weights=[layer.output_weight() for layer in layers], relations=relations,
                       first_mlp=ends.first_mlp if first_mlp else None, chunk_elements=chunk_elements, top_n=top_n)
