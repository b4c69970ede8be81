"""What a head does at the scored position: prediction-row scalars and AP-MAE readouts of that row.

Glossary: M head images, S tokens, P patch side, G = S / P grid side, Q = G (G + 1) / 2
triangular patches, D encoder width, R = 5 row scalars.

Next-token correctness is decided at one position, the scored query q (``middle_pos``:
S - 1 for mined scenarios, ``<fim_middle>`` for FIM prompts). Its attention row
``a = pattern[q, :q + 1]`` is one row of S; a summary of the whole S x S image dilutes it.

Row scalars per head (:data:`ROW_FEATURE_NAMES`), read off ``a``:

- ``entropy``: ``-sum_j a_j log a_j`` (nats): focused or spread;
- ``previous_token``: ``a_{q-1}``;
- ``first_token``: ``a_0``, the attention sink;
- ``max_weight``: ``max_j a_j``;
- ``repeat_mass``: ``sum a_j`` over ``j < q`` whose token equals token q (earlier copies of the
  current token: what copying and induction circuits start from).

AP-MAE readouts of the row (:data:`READOUTS`), from the encoder tokens of the patches that
hold row q (grid row ``r = q // P``, patches (r, 0) .. (r, r)):

- ``row_mean``: their mean;
- ``row_attn``: their mean weighted by the row's attention mass inside each patch column
  (the readout conditioned on the row: where the head looks picks which tokens count).
"""

from __future__ import annotations

from typing import Any

import numpy as np

ROW_FEATURE_NAMES = ("entropy", "previous_token", "first_token", "max_weight", "repeat_mass")
READOUTS = ("row_mean", "row_attn")


def scored_rows(patterns: Any, query_pos: Any) -> Any:
    """(B, L, H, S, S) patterns and (B,) query positions -> (B, L, H, S) the scored rows (torch)."""
    import torch  # import cost ~1.4 s: readers of an encodings file need only h5py and numpy

    a = torch.as_tensor(patterns)
    q = torch.as_tensor(query_pos, device=a.device).long()
    index = q.view(-1, 1, 1, 1, 1).expand(*a.shape[:3], 1, a.shape[-1])  # (B, L, H, 1, S)
    return torch.gather(a, 3, index)[:, :, :, 0]


def row_features(patterns: Any, input_ids: Any, query_pos: Any) -> Any:
    """(B, L, H, S, S) raw patterns, (B, S) token ids, (B,) query positions -> (B, L, H, R) float32 torch."""
    import torch  # import cost, as above

    rows = scored_rows(patterns, query_pos).float()  # (B, L, H, S)
    ids = torch.as_tensor(np.asarray(input_ids), device=rows.device).long()
    q = torch.as_tensor(np.asarray(query_pos), device=rows.device).long()
    s = rows.shape[-1]
    pos = torch.arange(s, device=rows.device)
    current = torch.gather(ids, 1, q[:, None])  # (B, 1)
    copies = ((ids == current) & (pos[None] < q[:, None])).float()  # (B, S) earlier copies of token q
    previous = torch.gather(rows, 3, (q - 1).clamp_min(0).view(-1, 1, 1, 1).expand(*rows.shape[:3], 1))[..., 0]
    previous = previous * (q > 0).float().view(-1, 1, 1)  # row 0 has no previous token
    entropy = -(rows * torch.log(rows.clamp_min(1e-30))).sum(-1)
    repeat = (rows * copies[:, None, None, :]).sum(-1)
    return torch.stack([entropy, previous, rows[..., 0], rows.max(-1).values, repeat], dim=-1)


def row_readouts(tokens: Any, rows: Any, query_pos: Any, patch_size: int) -> tuple[Any, Any]:
    """Encoder tokens (M, Q, D), raw scored rows (M, S), query positions (M,) -> row_mean, row_attn (M, D).

    The patch of grid cell (r, c) is token ``r (r + 1) / 2 + c`` (the row-major triangle order
    of :mod:`apmae.common.triangle`).
    """
    import torch  # import cost, as above

    m, _, dim = tokens.shape
    s = rows.shape[-1]
    g = s // patch_size
    q = torch.as_tensor(query_pos, device=tokens.device).long()
    r = q // patch_size  # (M,) grid row holding the scored query
    cols = torch.arange(g, device=tokens.device)
    inside = cols[None] <= r[:, None]  # (M, G) patches (r, c) that exist
    index = (r * (r + 1) // 2)[:, None] + cols[None].clamp_max(r[:, None])  # (M, G)
    picked = torch.gather(tokens, 1, index[..., None].expand(m, g, dim))  # (M, G, D)
    weights = inside.float()
    row_mean = (picked * weights[..., None]).sum(1) / weights.sum(1, keepdim=True)
    mass = rows.float().reshape(m, g, patch_size).sum(-1) * weights  # (M, G) attention in each patch column
    row_attn = (picked * mass[..., None]).sum(1) / mass.sum(1, keepdim=True).clamp_min(1e-12)
    return row_mean, row_attn


__all__ = ["READOUTS", "ROW_FEATURE_NAMES", "row_features", "row_readouts", "scored_rows"]
