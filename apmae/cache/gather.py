"""One batch of scenarios through a target, its patterns in an attention cache's stored form.

Glossary: B scenarios in a batch, L layers, H query heads, W stored elements per head
(:func:`apmae.cache.codec.packed_width`).

The target stage runs the model (:func:`apmae.target.access.forward_attentions`); how the patterns
are stored is the cache's (:mod:`apmae.cache.codec`), so the encoding happens here, on the model's
device, and only the stored bytes reach the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from apmae.cache.codec import DEFAULT_ENCODING, stored_attentions
from apmae.target.access import FirstToken, Target, forward_attentions


@dataclass
class StoredOutput(FirstToken):
    """:func:`run_batch_stored`: the outcome and the patterns as an attention cache stores them."""

    stored: np.ndarray  # (B, L, H, W) on the host, the stored form of ``encoding`` (apmae.cache.codec)
    encoding: str


@torch.inference_mode()
def run_batch_stored(
    target: Target, input_ids: torch.Tensor, label_first: torch.Tensor, *, middle_pos: torch.Tensor | None = None,
    encoding: str = DEFAULT_ENCODING,
) -> StoredOutput:
    """:func:`apmae.target.access.run_batch` with the patterns in an attention cache's stored form (B, L, H, W).

    What extraction writes: :func:`apmae.cache.codec.stored_attentions` of the layers' attentions
    (``encoding="bfloat16-bits"`` gives the bfloat16 bit patterns of the triangles, uint16).
    """
    attentions, outcome = forward_attentions(target, input_ids, label_first, middle_pos)
    return StoredOutput(**vars(outcome), stored=stored_attentions(attentions, encoding), encoding=encoding)


__all__ = ["StoredOutput", "run_batch_stored"]
